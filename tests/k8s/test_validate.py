"""Every rendered object is valid: core kinds against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields are errors), Istio kinds against the Istio CRDs' openAPIV3Schema. Negative controls prove
both validators reject what the API server would."""

from __future__ import annotations

import copy
from typing import Any, Callable

import jsonschema
import kubernetes_validate
import pytest

from tests.k8s.conftest import LAYOUTS, kustomize

# Oldest and newest Kubernetes minor we support (docs/k8s.md): native gRPC probes, ContainerResource HPA
# metrics and topology spread matchLabelKeys are all on by default from 1.29.
K8S_VERSIONS = ("1.29.0", "1.33.0")
ISTIO_GROUP_SUFFIX = ".istio.io"

EXPECTED_KINDS = {
    "base": {"Namespace", "ConfigMap", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget",
             "HorizontalPodAutoscaler"},
    "istio": {"Namespace", "ConfigMap", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget",
              "HorizontalPodAutoscaler", "AuthorizationPolicy", "PeerAuthentication", "NetworkPolicy", "EnvoyFilter"},
    "standalone": {"Namespace", "ConfigMap", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget",
                   "HorizontalPodAutoscaler"},
}


def is_istio(obj: dict) -> bool:
    return obj["apiVersion"].split("/")[0].endswith(ISTIO_GROUP_SUFFIX)


# ------------------------------------------------------------------------------------------ Istio schemas


def _strict(schema: Any) -> Any:
    """Close every object schema that lists its properties, as the API server's strict field validation does
    (kubectl's default): an unknown field is an error, not silently pruned."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def istio_validator(crds: list[dict], api_version: str, kind: str) -> jsonschema.protocols.Validator:
    group, version = api_version.split("/")
    matches = [c for c in crds if c["spec"]["group"] == group and c["spec"]["names"]["kind"] == kind]
    assert len(matches) == 1, f"no CRD for {kind} in group {group}"
    served = [v for v in matches[0]["spec"]["versions"] if v["name"] == version and v.get("served")]
    assert served, f"{kind} {api_version} is not a served version of its CRD"
    spec_schema = served[0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    # OpenAPI v3 schemas are a JSON Schema draft-4/7 subset; x-kubernetes-* keys are ignored as annotations.
    return jsonschema.Draft7Validator(_strict(spec_schema))


def validate_istio(crds: list[dict], obj: dict) -> list[str]:
    errors = [f"top-level field {k!r} is not allowed" for k in obj if k not in
              ("apiVersion", "kind", "metadata", "spec")]
    validator = istio_validator(crds, obj["apiVersion"], obj["kind"])
    errors += [f"spec.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj["spec"])]
    return errors


def validate_core(obj: dict, version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_renders_expected_kinds(rendered, layout):
    kinds = {o["kind"] for o in rendered[layout]}
    assert kinds == EXPECTED_KINDS[layout]
    assert all(o["metadata"].get("namespace") == "keyrelay" for o in rendered[layout] if o["kind"] != "Namespace")


@pytest.mark.parametrize("layout", ["base", "istio", "standalone"])
def test_layouts_render_with_plain_apply_k(kubectl, layout):
    # `kubectl apply -k` has no --load-restrictor: every layout must render with kustomize's default restriction.
    assert kustomize(kubectl, LAYOUTS[layout].path)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_core_objects_validate(rendered, layout, version):
    core = [o for o in rendered[layout] if not is_istio(o)]
    assert core
    failures = []
    for obj in core:
        try:
            validate_core(obj, version)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(exc, 'message', exc)}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_istio_objects_validate(rendered, istio_crds, layout):
    istio = [o for o in rendered[layout] if is_istio(o)]
    if layout == "istio":
        assert {o["kind"] for o in istio} == {"AuthorizationPolicy", "PeerAuthentication", "EnvoyFilter"}
    else:
        assert not istio, f"{layout} must not depend on Istio CRDs"
    failures = [f"{o['kind']}/{o['metadata']['name']}: {err}" for o in istio for err in validate_istio(istio_crds, o)]
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------ negative controls


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def mutate(obj: dict) -> None:
        node = obj
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


CONTAINER = ("spec", "template", "spec", "containers", 0)
CORE_BREAKAGES = [
    ("unknown container field", "Deployment", _set(CONTAINER + ("imagePullPolcy",), "Always")),
    ("port as text", "Service", _set(("spec", "ports", 0, "port"), "eighty")),
    ("replicas as text", "HorizontalPodAutoscaler", _set(("spec", "minReplicas"), "two")),
    ("probe port missing", "Deployment", _set(CONTAINER + ("livenessProbe",), {"grpc": {"service": "x"}})),
]


@pytest.mark.parametrize("what,kind,mutate", CORE_BREAKAGES, ids=[b[0] for b in CORE_BREAKAGES])
def test_core_validator_rejects_broken_objects(rendered, what, kind, mutate):
    obj = copy.deepcopy(next(o for o in rendered["istio"] if o["kind"] == kind))
    mutate(obj)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(obj, K8S_VERSIONS[0])


ISTIO_BREAKAGES = [
    ("unknown action", "AuthorizationPolicy", _set(("spec", "action"), "CUSTOMISE")),
    ("misspelt field", "AuthorizationPolicy", _set(("spec", "provder"), {"name": "x"})),
    ("notPaths not a list", "AuthorizationPolicy", _set(("spec", "rules", 0, "to", 0, "operation", "notPaths"), "/")),
    ("unknown mTLS mode", "PeerAuthentication", _set(("spec", "mtls", "mode"), "STRICTEST")),
]


@pytest.mark.parametrize("what,kind,mutate", ISTIO_BREAKAGES, ids=[b[0] for b in ISTIO_BREAKAGES])
def test_istio_validator_rejects_broken_objects(rendered, istio_crds, what, kind, mutate):
    obj = copy.deepcopy(next(o for o in rendered["istio"] if o["kind"] == kind))
    mutate(obj)
    assert validate_istio(istio_crds, obj)
