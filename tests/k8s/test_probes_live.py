"""Each probe of the rendered manifests answers against the real process started with the rendered arguments
(addresses moved to free loopback ports, the policy mount to a temp file): gRPC health for ext_authz, HTTP for
the translator and ext_authz's HTTP side, and the standalone translator's exec probes run as written."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.k8s.manifests import container, find, one, probes, split_addr
from tests.support.procs import Proc, base_env, free_port, script

CASES = [("base", "keyrelay-ext-authz", "ext-authz"), ("base", "keyrelay-translator", "translator"),
         ("standalone", "keyrelay", "ext-authz"), ("standalone", "keyrelay", "translator")]
STARTUP_BUDGET_S = 60


def localize(c: dict, policy_file: str) -> tuple[list[str], dict[int, int]]:
    """The container's command line with every listen address moved to a free loopback port."""
    ports: dict[int, int] = {}
    argv = [script(c["command"][0])]
    for arg in c["args"]:
        assert arg.startswith("--") and "=" in arg, f"manifests use --flag=value: {arg}"
        key, _, value = arg[2:].partition("=")
        if key in ("grpc-addr", "http-addr"):
            port = split_addr(value)[1]
            ports[port] = free_port()
            value = f"127.0.0.1:{ports[port]}"
        elif key == "port":
            ports[int(value)] = free_port()
            value = str(ports[int(value)])
        elif key == "host":
            value = "127.0.0.1"
        elif key == "policy":
            value = policy_file
        argv.append(f"--{key}={value}")
    return argv, ports


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def until(predicate, what: str, timeout: float = STARTUP_BUDGET_S) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} did not succeed within {timeout}s")


def grpc_serving(port: int, service: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("layout,workload,name", CASES, ids=[f"{a}-{c}" for a, _, c in CASES])
def test_probes_answer_against_the_real_process(rendered, tmp_path, layout, workload, name):
    objs = rendered[layout]
    c = container(one(objs, "Deployment", workload), name)
    policy = tmp_path / "policy.yaml"
    policy.write_text(one(objs, "ConfigMap", "keyrelay-policy")["data"]["policy.yaml"], encoding="utf-8")
    argv, ports = localize(c, str(policy))
    named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    proc = Proc(argv, base_env(), name=name).wait_ready(STARTUP_BUDGET_S)
    try:
        for kind, probe in probes(c):
            if "grpc" in probe:
                port = ports[probe["grpc"]["port"]]
                until(lambda: grpc_serving(port, probe["grpc"].get("service", "")), f"{name} {kind}")
            elif "httpGet" in probe:
                target = probe["httpGet"]["port"]
                port = ports[named.get(target, target)]
                url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"
                until(lambda: http_status(url) == 200, f"{name} {kind} GET {url}")
            else:
                command = [sys.executable if i == 0 else part for i, part in enumerate(probe["exec"]["command"])]
                for original, local in ports.items():
                    command = [part.replace(f":{original}/", f":{local}/") for part in command]
                until(lambda: subprocess.run(command, capture_output=True, timeout=10).returncode == 0,
                      f"{name} {kind} exec")
        # The Prometheus annotation of the pod points at a port this container serves metrics on.
        annotations = one(objs, "Deployment", workload)["spec"]["template"]["metadata"]["annotations"]
        scraped = int(annotations["prometheus.io/port"])
        if scraped in ports:
            assert http_status(f"http://127.0.0.1:{ports[scraped]}{annotations['prometheus.io/path']}") == 200
        assert proc.popen.poll() is None
    finally:
        proc.stop()


def test_cases_cover_every_keyrelay_container(rendered):
    seen = {(layout, w["metadata"]["name"], c["name"]) for layout in ("base", "standalone")
            for w in find(rendered[layout], "Deployment") for c in w["spec"]["template"]["spec"]["containers"]
            if c.get("command", [""])[0].startswith("keyrelay-")}
    assert seen == set(CASES)
