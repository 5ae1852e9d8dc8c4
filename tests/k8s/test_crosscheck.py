"""Cross-checks between the rendered objects of each layout: names, labels, selectors, ports, probes, security
settings, the policy mount, secrets and image pins agree with each other and with the process contract."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.k8s.conftest import LAYOUTS, REPO
from tests.k8s.manifests import (HASH_SUFFIX, container, container_port, containers, find, flags, image_ref,
                                 listen_addrs, one, pod_annotations, pod_labels, pod_spec, probes,
                                 selector_matches, split_addr, workloads)

LAYOUT_NAMES = sorted(LAYOUTS)
POLICY_CONFIGMAP = "keyrelay-policy"
PROVIDER_SECRET = "keyrelay-provider"
RUN_AS_USER = 10001
SENSITIVE_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.I)
ANY_ADDR = ("0.0.0.0", "::", "")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def owners(objs, match_labels):
    return [w for w in workloads(objs) if selector_matches(match_labels, pod_labels(w))]


# ----------------------------------------------------------------------------------------- services


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_every_service_selects_one_workload_and_reaches_a_listening_port(rendered, layout):
    objs = rendered[layout]
    services = find(objs, "Service")
    assert services
    for svc in services:
        selected = owners(objs, svc["spec"]["selector"])
        assert len(selected) == 1, f"Service {svc['metadata']['name']} selects {len(selected)} workloads"
        for port in svc["spec"]["ports"]:
            hits = [(c, container_port(c, port["targetPort"])) for c in containers(selected[0])]
            hits = [(c, p) for c, p in hits if p is not None]
            assert len(hits) == 1, f"{svc['metadata']['name']}:{port['name']} -> {port['targetPort']} resolves to {len(hits)} ports"
            c, number = hits[0]
            binds = listen_addrs(c)
            if binds:  # a keyrelay process: its flags must listen on that port, reachable from the Service
                assert binds.get(number) in ANY_ADDR, f"{c['name']} does not listen on *:{number} ({binds})"
            assert port["name"].split("-")[0] in ("http", "grpc", "tcp"), "Istio protocol selection by port name"


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_declared_container_ports_are_the_ports_processes_bind(rendered, layout):
    for w in workloads(rendered[layout]):
        for c in containers(w):
            binds = listen_addrs(c)
            for p in c.get("ports", []):
                if binds:
                    assert p["containerPort"] in binds, f"{c['name']} declares {p['containerPort']} but binds {binds}"
            for port, host in binds.items():
                declared = container_port(c, port) is not None
                # Declared ports are reachable from the Pod network; undeclared ones must be loopback-only.
                assert (host in ANY_ADDR) == declared, f"{c['name']} {host}:{port} declared={declared}"


# --------------------------------------------------------------------------------------------- probes


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_every_container_has_probes_that_reach_its_process(rendered, layout):
    for w in workloads(rendered[layout]):
        for c in containers(w):
            kinds = {k for k, _ in probes(c)}
            assert {"readinessProbe", "livenessProbe"} <= kinds, f"{c['name']} lacks probes: {kinds}"
            binds = listen_addrs(c)
            for kind, probe in probes(c):
                if "grpc" in probe:
                    port = probe["grpc"]["port"]
                    assert c["command"] == ["keyrelay-ext-authz"], "only ext_authz speaks gRPC health"
                    assert port == split_addr(flags(c["args"])["grpc-addr"])[1]
                    assert binds[port] in ANY_ADDR, "the kubelet probes the Pod IP"
                elif "httpGet" in probe:
                    port = container_port(c, probe["httpGet"]["port"])
                    assert port is not None, f"{c['name']} {kind} port {probe['httpGet']['port']} is not declared"
                    if binds:
                        assert binds[port] in ANY_ADDR
                    assert probe["httpGet"]["path"] in ("/healthz", "/readyz", "/envoy-healthz")
                elif "exec" in probe:
                    # In-container probe of a loopback-only process: the URL's port is the one it binds.
                    url = re.search(r"http://([\d.]+):(\d+)(/\w+)", " ".join(probe["exec"]["command"]))
                    assert url, f"{c['name']} {kind}: no URL in exec probe"
                    assert binds[int(url.group(2))] == url.group(1) and url.group(1) in LOOPBACK
                    assert url.group(3) in ("/healthz", "/readyz")
                else:
                    pytest.fail(f"{c['name']} {kind}: unexpected probe type {probe}")
            if c.get("command") == ["keyrelay-ext-authz"] and layout != "standalone":
                assert all("grpc" in p for _, p in probes(c)), "ext_authz uses the native gRPC probe"


def test_translator_probes_readyz_and_healthz(rendered):
    c = container(one(rendered["base"], "Deployment", "keyrelay-translator"), "translator")
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


# ------------------------------------------------------------------------------------ scaling, spread


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_hpa_and_pdb_target_existing_workloads(rendered, layout):
    objs = rendered[layout]
    deployments = {w["metadata"]["name"]: w for w in find(objs, "Deployment")}
    hpas = find(objs, "HorizontalPodAutoscaler")
    pdbs = find(objs, "PodDisruptionBudget")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(deployments)
    for hpa in hpas:
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpa["spec"]["minReplicas"] >= 2, "one pod cannot survive a drain with the PDB"
        assert "replicas" not in target["spec"], "the HPA owns replicas; apply must not reset them"
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "ContainerResource":
                container(target, metric["containerResource"]["container"])
    assert len(pdbs) == len(deployments)
    for pdb in pdbs:
        assert len(owners(objs, pdb["spec"]["selector"]["matchLabels"])) == 1
        assert pdb["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_pods_spread_and_are_scraped(rendered, layout):
    for w in workloads(rendered[layout]):
        spread = pod_spec(w)["topologySpreadConstraints"]
        assert {s["topologyKey"] for s in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        assert all(selector_matches(s["labelSelector"]["matchLabels"], pod_labels(w)) for s in spread)
        ann = pod_annotations(w)
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
        port = int(ann["prometheus.io/port"])
        serving = [c for c in containers(w) if listen_addrs(c).get(port) in ANY_ADDR]
        assert len(serving) == 1, f"{w['metadata']['name']}: nothing serves metrics on *:{port}"


# ------------------------------------------------------------------------------------------- security


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_pods_run_locked_down(rendered, layout):
    for w in workloads(rendered[layout]):
        spec = pod_spec(w)
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == RUN_AS_USER
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        sa = one(rendered[layout], "ServiceAccount", spec["serviceAccountName"])
        assert sa["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert sc.get("runAsUser", RUN_AS_USER) != 0 and not sc.get("privileged")
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{c['name']} needs a writable /tmp"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{c['name']} {kind}"


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_no_secret_material_in_manifests(rendered, layout):
    objs = rendered[layout]
    for secret in find(objs, "Secret"):
        assert not secret.get("data") and not secret.get("stringData"), f"Secret {secret['metadata']['name']}"
    refs = set()
    for w in workloads(objs):
        for c in containers(w):
            for env in c.get("env", []):
                if SENSITIVE_ENV.search(env["name"]):
                    assert "value" not in env, f"{c['name']} sets {env['name']} literally"
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    refs.add(src["secretRef"]["name"])
                    assert src["secretRef"].get("optional") is False
    # The translator's provider settings come from the Secret the platform creates (docs/k8s.md).
    assert refs == {PROVIDER_SECRET}
    assert not find(objs, "Secret"), "the repository ships no Secret object at all"


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_images_pinned_and_consistent(rendered, layout):
    version = pyproject()["project"]["version"]
    for w in workloads(rendered[layout]):
        for c in containers(w) + pod_spec(w).get("initContainers", []):
            name, tag, digest = image_ref(c["image"])
            assert tag or digest, f"{c['name']}: untagged image {c['image']}"
            assert tag != "latest" and "latest" not in (tag or ""), f"{c['name']}: {c['image']}"
            if c.get("command", [""])[0].startswith("keyrelay-"):
                assert name == "registry.example.com/keyrelay" and tag == version, c["image"]
            assert c["imagePullPolicy"] == "IfNotPresent"


# ----------------------------------------------------------------------------------------- the policy


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_policy_configmap_is_mounted_for_hot_reload(rendered, layout):
    objs = rendered[layout]
    cm = one(objs, "ConfigMap", POLICY_CONFIGMAP)  # stable name: updated in place, no hash suffix
    assert not HASH_SUFFIX.search(cm["metadata"]["name"])
    authz = [(w, c) for w in workloads(objs) for c in containers(w) if c.get("command") == ["keyrelay-ext-authz"]]
    assert len(authz) == 1
    w, c = authz[0]
    policy_path = flags(c["args"])["policy"]
    volumes = {v["name"]: v for v in pod_spec(w)["volumes"]}
    mounts = [m for m in c["volumeMounts"] if "configMap" in volumes[m["name"]]
              and volumes[m["name"]]["configMap"]["name"] == POLICY_CONFIGMAP]
    assert len(mounts) == 1
    mount = mounts[0]
    assert "subPath" not in mount and "subPathExpr" not in mount, "a subPath mount never sees ConfigMap updates"
    assert mount["readOnly"] is True
    key = policy_path.removeprefix(mount["mountPath"].rstrip("/") + "/")
    assert key != policy_path and key in cm["data"], f"{policy_path} is not a key of {POLICY_CONFIGMAP}"
    assert "items" not in volumes[mount["name"]]["configMap"]
    # The policy file is the single source of truth: no environment override of it in the cluster.
    assert not {e["name"] for e in c.get("env", [])} & {"PASSTHROUGH_API_KEY", "REQUIRE_PASSTHROUGH_KEY",
                                                         "EXT_AUTHZ_POLICY"}


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_policy_configmap_passes_the_ext_authz_loader(rendered, layout, tmp_path):
    from ext_authz.policy import load_policy

    cm = one(rendered[layout], "ConfigMap", POLICY_CONFIGMAP)
    for key, text in cm["data"].items():
        path = tmp_path / key
        path.write_text(text, encoding="utf-8")
        policy = load_policy(path)
        # What the cluster relies on: keys required and passed through on the default route (Istio checks
        # every API request as `default`), open only where the docs say so.
        assert policy.default.require_key is True and policy.default.passthrough is True
        assert policy.for_route("messages").require_key is True
        assert policy.for_route("health").require_key is False


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_containers_keep_serving_until_the_endpoint_is_gone(rendered, layout):
    """preStop sleeps cover endpoint removal; within a Pod no container stops before the one in front of it
    (standalone: Envoy keeps accepting while its preStop runs, so ext_authz and the translator must too)."""
    for w in workloads(rendered[layout]):
        sleeps = {}
        for c in containers(w):
            command = c["lifecycle"]["preStop"]["exec"]["command"]
            assert command[0] == "/bin/sleep", f"{c['name']}: {command}"
            sleeps[c["name"]] = int(command[1])
        assert len(set(sleeps.values())) == 1, f"{w['metadata']['name']}: unequal preStop sleeps {sleeps}"
        sleep = next(iter(sleeps.values()))
        assert 5 <= sleep < pod_spec(w)["terminationGracePeriodSeconds"] - 10


def test_deployed_policy_decides_like_the_example_policy(rendered, tmp_path):
    """kustomize cannot read examples/policy.yaml from k8s/ (outside the kustomization root), so the cluster's
    default policy is its own file; it must stay equivalent to the example the stack and the docs use."""
    from dataclasses import replace

    from ext_authz.policy import load_policy

    path = tmp_path / "policy.yaml"
    path.write_text(one(rendered["istio"], "ConfigMap", POLICY_CONFIGMAP)["data"]["policy.yaml"], encoding="utf-8")
    deployed = load_policy(path)
    example = load_policy(REPO / "examples" / "policy.yaml")
    assert replace(deployed, source="", digest="") == replace(example, source="", digest="")
