"""docs/k8s.md's policy rotation, end to end without a cluster: the deployed policy ConfigMap is projected into a
directory the way the kubelet does it (payload directory + atomically swapped `..data` symlink), the real
keyrelay-ext-authz runs with the rendered Deployment's own arguments (addresses and mount point moved to this
machine), and a key revoked by its `keyrelay-key-digest` digest is denied after the swap, with no restart; an
invalid edit keeps the last good policy; re-applying the previous policy (the roll back) lets the key in again."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest
import yaml

from tests.k8s.manifests import container, flags, one
from tests.support.procs import Proc, base_env, free_port, script

KEY = "sk-k8s-rotation-probe-0001"
MOUNT = "/etc/keyrelay"


class ConfigMapVolume:
    """The kubelet's atomic projection of a ConfigMap (its AtomicWriter): the payload lives in a fresh
    `..<timestamp>` directory, `..data` points at it and is replaced by rename(2), and each key is a symlink
    `<key> -> ..data/<key>`, so readers see either the whole old or the whole new payload."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def project(self, files: dict[str, str]) -> None:
        self.generation += 1
        payload = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self.generation:04d}"
        payload.mkdir()
        for key, text in files.items():
            (payload / key).write_text(text, encoding="utf-8")
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(payload.name, tmp)
        os.rename(tmp, data)
        for key in files:
            link = self.root / key
            if not link.is_symlink():
                os.symlink(f"..data/{key}", link)
        if old:
            shutil.rmtree(self.root / old)


def check_status(stub, key: str) -> int:
    """HTTP status ext_authz decides for a POST /v1/messages carrying `key` (200 = allowed)."""
    from ext_authz._gen.envoy.service.auth.v3.external_auth_pb2 import CheckRequest

    req = CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host, http.id = "POST", "/v1/messages", "keyrelay", "rotation"
    http.headers["x-api-key"] = key
    resp = stub.Check(req, timeout=10)
    return 200 if resp.status.code == 0 else resp.denied_response.status.code


def wait_for_status(stub, key: str, expected: int, timeout: float = 15.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check_status(stub, key) == expected:
            return time.monotonic() - start
        time.sleep(0.1)
    pytest.fail(f"ext_authz did not answer {expected} for the probe key within {timeout}s")


def wait_for_metric(port: int, suffix: str, at_least: float, timeout: float = 15.0) -> None:
    """Wait until ext_authz's Prometheus counter ending in `suffix` reaches `at_least`."""
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                name, _, value = line.rpartition(" ")
                if not line.startswith("#") and name.endswith(suffix) and float(value) >= at_least:
                    return
        time.sleep(0.1)
    pytest.fail(f"metric *{suffix} did not reach {at_least} within {timeout}s")


def key_digest(key: str) -> str:
    proc = subprocess.run([script("keyrelay-key-digest")], input=key + "\n", capture_output=True, text=True,
                          env=base_env(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert key not in proc.stdout + proc.stderr, "the digest tool must never echo the key"
    return proc.stdout.strip()


def test_policy_rotation_revoke_and_roll_back_without_restart(rendered, tmp_path):
    from ext_authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc

    objs = rendered["istio"]
    policy_text = one(objs, "ConfigMap", "keyrelay-policy")["data"]["policy.yaml"]
    args = flags(container(one(objs, "Deployment", "keyrelay-ext-authz"), "ext-authz")["args"])
    assert args["policy"].startswith(MOUNT + "/")

    volume = ConfigMapVolume(tmp_path)
    volume.project({"policy.yaml": policy_text})
    grpc_port, http_port = free_port(), free_port()
    args_policy = f"{tmp_path}{args['policy'][len(MOUNT):]}"
    argv = [script("keyrelay-ext-authz"), f"--grpc-addr=127.0.0.1:{grpc_port}", f"--http-addr=127.0.0.1:{http_port}",
            f"--policy={args_policy}", f"--workers={args['workers']}"]
    proc = Proc(argv, base_env(), name="ext_authz").wait_ready(60)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        assert check_status(stub, KEY) == 200

        # Revoke the key by digest (docs/k8s.md): edit, apply, the kubelet swaps ..data, ext_authz reloads.
        revoked = yaml.safe_load(policy_text)
        revoked["revoked"] = [*revoked.get("revoked", []), {"sha256": key_digest(KEY)}]
        revoked_text = yaml.safe_dump(revoked, sort_keys=False)
        volume.project({"policy.yaml": revoked_text})
        wait_for_status(stub, KEY, 403)
        # The live policy is visible by content digest (docs/k8s.md: `sha256sum policy.yaml | cut -c1-12`).
        live = hashlib.sha256(revoked_text.encode()).hexdigest()[:12]
        wait_for_metric(http_port, f'policy_info{{digest="{live}",source="{args_policy}"}}', 1)

        # A broken edit is refused; the last good (revoking) policy stays live.
        volume.project({"policy.yaml": "version: 1\nrequire_key: maybe\n"})
        wait_for_metric(http_port, "policy_reload_errors_total", 1)
        assert check_status(stub, KEY) == 403

        # Roll back: re-apply the previous policy.
        volume.project({"policy.yaml": policy_text})
        wait_for_status(stub, KEY, 200)
        assert proc.popen.poll() is None, "no restart anywhere"
        assert KEY not in proc.output
    finally:
        channel.close()
        proc.stop()
