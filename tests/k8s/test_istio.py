"""The Istio overlay agrees with the base, the mesh config fragment and the standalone envoy.yaml."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from tests.k8s.conftest import K8S, REPO
from tests.k8s.manifests import container, find, flags, one, pod_labels, pod_spec, selector_matches, split_addr

ISTIO_DIR = K8S / "overlays" / "istio"
MESH_CONFIG = ISTIO_DIR / "mesh-config.yaml"
EXT_AUTHZ = "keyrelay-ext-authz"
TRANSLATOR = "keyrelay-translator"
# Fields of istio.mesh.v1alpha1 MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider
# (istio/api mesh/v1alpha1/config.proto). includeRequestHeadersInCheck & co. exist only for the HTTP provider.
GRPC_PROVIDER_FIELDS = {"service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck"}
ISTIO_DEFAULT_TIMEOUT_S = 600


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert m, f"not a duration: {duration}"
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


@pytest.fixture(scope="module")
def mesh_provider() -> dict:
    doc = yaml.safe_load(MESH_CONFIG.read_text(encoding="utf-8"))
    providers = doc["spec"]["meshConfig"]["extensionProviders"]
    assert len(providers) == 1
    return providers[0]


@pytest.fixture(scope="module")
def envoy_ext_authz() -> dict:
    config = yaml.safe_load((REPO / "envoy.yaml").read_text(encoding="utf-8"))
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"].get("http_filters", []):
                    if hf["name"] == "envoy.filters.http.ext_authz":
                        return hf["typed_config"]
    pytest.fail("envoy.yaml has no ext_authz filter")


@pytest.fixture(scope="module")
def objs(rendered) -> list[dict]:
    return rendered["istio"]


def custom_policy(objs) -> dict:
    found = [p for p in find(objs, "AuthorizationPolicy") if p["spec"].get("action") == "CUSTOM"]
    assert len(found) == 1
    return found[0]


def test_mesh_config_is_documented_not_applied(objs):
    kustomization = yaml.safe_load((ISTIO_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    assert MESH_CONFIG.name not in kustomization["resources"]
    assert not find(objs, "IstioOperator")


def test_mesh_provider_points_at_the_ext_authz_service(objs, mesh_provider):
    grpc = mesh_provider["envoyExtAuthzGrpc"]
    assert set(grpc) <= GRPC_PROVIDER_FIELDS, f"unknown fields for envoyExtAuthzGrpc: {set(grpc) - GRPC_PROVIDER_FIELDS}"
    svc = one(objs, "Service", EXT_AUTHZ)
    assert grpc["service"] == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    port = [p for p in svc["spec"]["ports"] if p["port"] == grpc["port"]]
    assert len(port) == 1 and port[0]["appProtocol"] == "grpc" and port[0]["name"].startswith("grpc")
    c = container(one(objs, "Deployment", EXT_AUTHZ), "ext-authz")
    target = port[0]["targetPort"]
    container_port = next(p["containerPort"] for p in c["ports"] if target in (p["name"], p["containerPort"]))
    assert split_addr(flags(c["args"])["grpc-addr"]) == ("0.0.0.0", container_port)


def test_mesh_provider_fails_closed_like_envoy_yaml(mesh_provider, envoy_ext_authz):
    grpc = mesh_provider["envoyExtAuthzGrpc"]
    assert grpc["failOpen"] is False and envoy_ext_authz["failure_mode_allow"] is False
    timeout = seconds(grpc["timeout"])
    assert 0 < timeout < ISTIO_DEFAULT_TIMEOUT_S
    assert timeout == seconds(envoy_ext_authz["grpc_service"]["timeout"])
    envoy_status = {"ServiceUnavailable": 503, "Forbidden": 403}[envoy_ext_authz["status_on_error"]["code"]]
    assert int(grpc["statusOnError"]) == envoy_status == 503


def test_custom_policy_names_the_provider_and_selects_the_translator(objs, mesh_provider):
    policy = custom_policy(objs)
    assert policy["spec"]["provider"]["name"] == mesh_provider["name"]
    selected = [w for w in find(objs, "Deployment")
                if selector_matches(policy["spec"]["selector"]["matchLabels"], pod_labels(w))]
    assert [w["metadata"]["name"] for w in selected] == [TRANSLATOR]


def test_custom_policy_exempts_exactly_the_open_routes_of_envoy_yaml(objs, rendered, tmp_path):
    """The paths the standalone envoy.yaml sends to routes the policy opens (require_key false) are the ones kept
    out of the mesh's check, nothing more (checked paths get their route from ext_authz/routes.py)."""
    from ext_authz.policy import load_policy

    cm = one(objs, "ConfigMap", "keyrelay-policy")
    (tmp_path / "policy.yaml").write_text(cm["data"]["policy.yaml"], encoding="utf-8")
    policy = load_policy(tmp_path / "policy.yaml")
    assert policy.default.require_key is True
    config = yaml.safe_load((REPO / "envoy.yaml").read_text(encoding="utf-8"))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    open_paths = set()
    for vh in hcm["route_config"]["virtual_hosts"]:
        for route in vh["routes"]:
            per = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz", {})
            name = per.get("check_settings", {}).get("context_extensions", {}).get("keyrelay_route")
            if name and "path" in route["match"] and not policy.for_route(name).require_key:
                open_paths.add(route["match"]["path"])
    assert open_paths == {"/", "/healthz", "/readyz"}
    rules = custom_policy(objs)["spec"]["rules"]
    assert len(rules) == 1 and len(rules[0]["to"]) == 1 and "from" not in rules[0] and "when" not in rules[0]
    operation = rules[0]["to"][0]["operation"]
    assert set(operation) == {"notPaths"}, "anything but the open paths stays behind the check"
    assert set(operation["notPaths"]) == open_paths


@pytest.mark.parametrize("workload", [EXT_AUTHZ, TRANSLATOR])
def test_strict_mtls_and_sidecar_for_each_workload(objs, workload):
    w = one(objs, "Deployment", workload)
    assert pod_labels(w)["sidecar.istio.io/inject"] == "true"
    strict = [p for p in find(objs, "PeerAuthentication")
              if selector_matches(p["spec"]["selector"]["matchLabels"], pod_labels(w))]
    assert len(strict) == 1 and strict[0]["spec"]["mtls"]["mode"] == "STRICT"
    assert "portLevelMtls" not in strict[0]["spec"]


def test_only_the_translator_identity_may_call_ext_authz(objs):
    ext_authz = one(objs, "Deployment", EXT_AUTHZ)
    translator = one(objs, "Deployment", TRANSLATOR)
    allow = [p for p in find(objs, "AuthorizationPolicy") if p["spec"].get("action") == "ALLOW"
             and selector_matches(p["spec"]["selector"]["matchLabels"], pod_labels(ext_authz))]
    assert len(allow) == 1
    grpc_port = split_addr(flags(container(ext_authz, "ext-authz")["args"])["grpc-addr"])[1]
    principal = f"cluster.local/ns/{translator['metadata']['namespace']}/sa/{pod_spec(translator)['serviceAccountName']}"
    grpc_rules = [r for r in allow[0]["spec"]["rules"] if str(grpc_port) in r["to"][0]["operation"].get("ports", [])]
    assert len(grpc_rules) == 1
    assert grpc_rules[0]["from"] == [{"source": {"principals": [principal]}}]


def test_network_policy_limits_ext_authz_to_the_translator(objs):
    ext_authz = one(objs, "Deployment", EXT_AUTHZ)
    translator = one(objs, "Deployment", TRANSLATOR)
    [np] = find(objs, "NetworkPolicy")
    assert selector_matches(np["spec"]["podSelector"]["matchLabels"], pod_labels(ext_authz))
    assert np["spec"]["policyTypes"] == ["Ingress"]
    grpc_port = split_addr(flags(container(ext_authz, "ext-authz")["args"])["grpc-addr"])[1]
    grpc_rules = [r for r in np["spec"]["ingress"] if any(p["port"] == grpc_port for p in r["ports"])]
    assert len(grpc_rules) == 1
    sources = grpc_rules[0]["from"]
    assert len(sources) == 1 and set(sources[0]) == {"podSelector"}
    assert selector_matches(sources[0]["podSelector"]["matchLabels"], pod_labels(translator))
    assert not selector_matches(sources[0]["podSelector"]["matchLabels"], pod_labels(ext_authz))
    for rule in np["spec"]["ingress"]:
        assert rule.get("from"), "every ingress rule names its sources"


def test_policy_can_be_replaced_by_a_platform_overlay(kubectl, tmp_path):
    """docs/k8s.md: platforms keep their policy in their own overlay; the ConfigMap keeps its stable name."""
    from tests.k8s.conftest import kustomize, parse

    (tmp_path / "policy.yaml").write_text("version: 1\npassthrough: true\nrequire_key: true\n", encoding="utf-8")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(ISTIO_DIR, tmp_path)],  # kustomize refuses absolute paths
        "configMapGenerator": [{"name": "keyrelay-policy", "behavior": "replace", "files": ["policy.yaml"]}],
    }), encoding="utf-8")
    objs = parse(kustomize(kubectl, tmp_path))
    cm = one(objs, "ConfigMap", "keyrelay-policy")
    assert cm["data"] == {"policy.yaml": "version: 1\npassthrough: true\nrequire_key: true\n"}
    volumes = pod_spec(one(objs, "Deployment", EXT_AUTHZ))["volumes"]
    assert {"name": "policy", "configMap": {"name": "keyrelay-policy"}} in volumes
