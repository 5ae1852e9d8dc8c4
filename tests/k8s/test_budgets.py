"""Budgets in Kubernetes: components/budgets hands both services the Redis URL from a Secret (never a literal),
components/redis adds an in-cluster Redis that only ext_authz and the translator may reach, and the layouts that
use them render and validate (kubectl kustomize + kubernetes-validate, strict)."""

from __future__ import annotations

import os

import kubernetes_validate
import pytest
import yaml

from keyrelay_budgets import REDIS_URL_ENV
from tests.k8s.conftest import K8S, kustomize, parse
from tests.k8s.manifests import container, containers, find, image_ref, one, pod_labels, pod_spec, workloads
from tests.k8s.test_validate import K8S_VERSIONS, is_istio, validate_core

OVERLAY = K8S / "overlays" / "istio-budgets"
SECRET_REF = {"name": "keyrelay-redis", "key": "url", "optional": False}


def with_components(kubectl, tmp_path, layout: str, components: list[str]) -> list[dict]:
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / layout if layout != "base" else K8S / "base", tmp_path)],
        "components": [os.path.relpath(K8S / "components" / c, tmp_path) for c in components],
    }), encoding="utf-8")
    return parse(kustomize(kubectl, tmp_path))


@pytest.fixture(scope="module")
def overlay(kubectl) -> list[dict]:
    return parse(kustomize(kubectl, OVERLAY))


def redis_env(c: dict) -> list[dict]:
    return [e for e in c.get("env", []) if e["name"] == REDIS_URL_ENV]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_validates(overlay, version) -> None:
    failures = []
    for obj in (o for o in overlay if not is_istio(o)):
        try:
            validate_core(obj, version)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(exc, 'message', exc)}")
    assert not failures, "\n".join(failures)
    assert all(o["metadata"].get("namespace") == "keyrelay" for o in overlay if o["kind"] != "Namespace")


@pytest.mark.parametrize("layout, expected", [
    ("base", {"keyrelay-ext-authz": ["ext-authz"], "keyrelay-translator": ["translator"]}),
    ("istio", {"keyrelay-ext-authz": ["ext-authz"], "keyrelay-translator": ["translator"]}),
    ("standalone", {"keyrelay": ["ext-authz", "translator"]}),
])
def test_both_services_get_the_url_from_the_secret_in_every_layout(kubectl, tmp_path, layout, expected) -> None:
    objs = with_components(kubectl, tmp_path, layout, ["budgets"])
    got = {}
    for w in workloads(objs):
        names = [c["name"] for c in containers(w) if redis_env(c)]
        if names:
            got[w["metadata"]["name"]] = sorted(names)
        for c in containers(w):
            for env in redis_env(c):
                assert "value" not in env and env["valueFrom"] == {"secretKeyRef": SECRET_REF}
            assert [e["name"] for e in c.get("env", [])].count(REDIS_URL_ENV) <= 1
    assert got == expected
    assert not find(objs, "Secret"), "the repository ships no Secret object"
    for version in K8S_VERSIONS:
        for w in workloads(objs):
            validate_core(w, version)


def test_only_ext_authz_and_the_translator_may_reach_redis(overlay, kubectl, tmp_path) -> None:
    np = one(overlay, "NetworkPolicy", "keyrelay-redis")
    redis = one(overlay, "Deployment", "keyrelay-redis")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(redis).items()
    assert np["spec"]["policyTypes"] == ["Ingress"]
    [rule] = np["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    [source] = rule["from"]
    assert set(source) == {"podSelector"}  # no namespaceSelector: this namespace only
    [expr] = source["podSelector"]["matchExpressions"]
    allowed = set(expr["values"])
    assert expr["key"] == "app.kubernetes.io/name" and expr["operator"] == "In"
    # Exactly the workloads that run ext_authz or the translator, in any layout; nothing else matches.
    standalone = with_components(kubectl, tmp_path, "standalone", ["budgets"])
    counting = {pod_labels(w)["app.kubernetes.io/name"] for objs in (overlay, standalone) for w in workloads(objs)
                if any(redis_env(c) for c in containers(w))}
    assert allowed == counting == {"keyrelay-ext-authz", "keyrelay-translator", "keyrelay"}
    assert pod_labels(redis)["app.kubernetes.io/name"] not in allowed


def test_redis_runs_locked_down_in_memory_with_a_password_from_the_secret(overlay) -> None:
    redis = one(overlay, "Deployment", "keyrelay-redis")
    spec = pod_spec(redis)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
    assert redis["spec"]["replicas"] == 1
    c = container(redis, "redis")
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    args = c["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    [pw] = c["env"]
    assert pw["valueFrom"]["secretKeyRef"] == {"name": "keyrelay-redis", "key": "password", "optional": False}
    name, tag, digest = image_ref(c["image"])
    assert (tag or digest) and "latest" not in (tag or "")
    service = one(overlay, "Service", "keyrelay-redis")
    assert service["spec"]["selector"].items() <= pod_labels(redis).items()
