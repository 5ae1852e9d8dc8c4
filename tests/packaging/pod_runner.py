"""Runs inside the sandbox that stands in for one Pod (see test_sandbox.py): plays the container runtime and the
kubelet for that Pod. Reads a JSON spec (argv[1]), reports what the sandbox enforces, starts each container's
command line as given, runs the manifests' probes against it, sends one ext_authz Check and one Messages request,
stops the containers with SIGTERM and prints one JSON object per line on stdout.

It runs with the installed virtualenv's Python and imports only what the wheel installed (grpcio, the compiled
ext_authz protos) and the standard library: the source tree is not inside the sandbox.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def confinement(spec: dict) -> dict:
    """Who this process is and what it may write: the same holds for every child (they inherit it)."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status", encoding="ascii") if ":" in line)
    writes = {}
    for directory in spec["write_probes"]:
        path = os.path.join(directory, f".keyrelay-write-probe-{os.getpid()}")
        try:
            with open(path, "w", encoding="ascii") as fh:
                fh.write("x")
            os.unlink(path)
            writes[directory] = "writable"
        except OSError as exc:
            writes[directory] = errno.errorcode.get(exc.errno, str(exc.errno))
    return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
            "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(),
            "cap_bnd": status["CapBnd"].strip(), "no_new_privs": status["NoNewPrivs"].strip(), "writes": writes}


def until(predicate, deadline: float) -> tuple[bool, str]:
    last = ""
    while time.monotonic() < deadline:
        try:
            ok, last = predicate()
        except Exception as exc:  # noqa: BLE001 - a probe that raises has failed, report why
            ok, last = False, f"{type(exc).__name__}: {exc}"
        if ok:
            return True, last
        time.sleep(0.2)
    return False, last


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def grpc_health(port: int, service: str) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.ServingStatus.Name(
        resp.status)


def probe(p: dict) -> tuple[bool, str]:
    if p["type"] == "grpc":
        return grpc_health(p["port"], p["service"])
    if p["type"] == "httpGet":
        status, _ = http(f"http://127.0.0.1:{p['port']}{p['path']}")
        return status == 200, f"HTTP {status}"
    proc = subprocess.run(p["command"], capture_output=True, text=True, timeout=10)
    return proc.returncode == 0, f"exit {proc.returncode} {proc.stderr[-300:]}"


def check(port: int, key: str) -> dict:
    """One CheckRequest the way Envoy sends it, with the key and without."""
    import grpc
    from ext_authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
    from ext_authz._gen.envoy.service.auth.v3.external_auth_pb2 import CheckRequest

    out = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for case, headers in (("with_key", {"x-api-key": key}), ("without_key", {})):
            req = CheckRequest()
            http_attrs = req.attributes.request.http
            http_attrs.id, http_attrs.method, http_attrs.path = "sandbox-1", "POST", "/v1/messages"
            for name, value in headers.items():
                http_attrs.headers[name] = value
            resp = stub.Check(req, timeout=10)
            out[case] = {"code": resp.status.code,
                         "set_headers": sorted(h.header.key for h in resp.ok_response.headers),
                         "authorization_is_bearer_key": any(
                             h.header.key == "authorization" and h.header.value == f"Bearer {key}"
                             for h in resp.ok_response.headers),
                         "denied_status": resp.denied_response.status.code}
    return out


def message(m: dict) -> dict:
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64,
                       "messages": [{"role": "user", "content": "hello from the sandbox"}]}).encode()
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01", **m["headers"]}
    status, raw = http(m["url"], body, headers)
    try:
        reply = json.loads(raw)
    except ValueError:
        reply = {"raw": raw[:500].decode("utf-8", "replace")}
    text = "".join(b.get("text", "") for b in reply.get("content", []) if isinstance(b, dict))
    return {"status": status, "type": reply.get("type"), "text": text, "error": reply.get("error")}


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as fh:
        spec = json.load(fh)
    emit(step="confinement", **confinement(spec))
    children: dict[str, subprocess.Popen] = {}
    deadline = time.monotonic() + spec["timeout"]
    try:
        for c in spec["containers"]:
            children[c["name"]] = subprocess.Popen(c["argv"], env=c["env"], cwd=c.get("workdir", "/tmp"),
                                                   stdout=sys.stderr, stderr=sys.stderr)
            emit(step="started", container=c["name"], argv=c["argv"])
        for p in spec["probes"]:
            ok, detail = until(lambda: probe(p), deadline)
            emit(step="probe", container=p["container"], kind=p["kind"], type=p["type"], ok=ok, detail=detail)
        if spec.get("check"):
            emit(step="check", **check(spec["check"]["port"], spec["check"]["key"]))
        if spec.get("message"):
            emit(step="message", **message(spec["message"]))
        emit(step="running", **{name: proc.poll() is None for name, proc in children.items()})
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in children.items():
            try:
                codes[name] = proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = f"killed after 20s: {proc.wait()}"
        emit(step="stopped", **codes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
