"""Hot reload: good file, bad file (last good stays, counted), ConfigMap-style symlink swap, missing file."""

from __future__ import annotations

import os
import time
from pathlib import Path


from ext_authz.startup import policy_builder
from ext_authz.decide import key_digest
from ext_authz.policy import PolicyError, load_policy
from ext_authz.reload import PolicyStore, PolicyWatcher
from ext_authz.settings import EnvOverrides

from .helpers import running_service

KEY = "sk-reload-test-0123456789"
GOOD = "version: 1\nrequire_key: true\n"
REVOKING = f"version: 1\nrequire_key: true\nrevoked:\n  - sha256: {key_digest(KEY)}\n"
BAD = "version: 1\nrequire_key: maybe\n"


class Recorder:
    def __init__(self) -> None:
        self.reloads: list[str] = []
        self.errors: list[PolicyError] = []


def watcher_for(path: Path, overrides: EnvOverrides = EnvOverrides()) -> tuple[PolicyWatcher, PolicyStore, Recorder]:
    rec = Recorder()
    store = PolicyStore(load_policy(path))
    watcher = PolicyWatcher(str(path), store, policy_builder(overrides), lambda p: rec.reloads.append(p.digest),
                            rec.errors.append)
    return watcher, store, rec


def rewrite(path: Path, text: str) -> None:
    """Write and make sure the stat signature changes even on coarse-mtime filesystems."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_good_bad_good(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    watcher, store, rec = watcher_for(path)
    first = store.policy
    assert watcher.poll_once() == "unchanged"

    rewrite(path, REVOKING)
    assert watcher.poll_once() == "reloaded"
    assert key_digest(KEY) in store.policy.revoked and rec.reloads == [store.policy.digest]

    rewrite(path, BAD)
    assert watcher.poll_once() == "error"
    assert key_digest(KEY) in store.policy.revoked           # last good policy stays
    assert len(rec.errors) == 1 and rec.errors[0].line == 2 and "require_key" in str(rec.errors[0])
    rewrite(path, BAD)                                        # same bad content: reported once
    assert watcher.poll_once() == "unchanged" and len(rec.errors) == 1

    rewrite(path, GOOD)
    assert watcher.poll_once() == "reloaded" and store.policy.digest == first.digest


def test_touch_without_change_does_not_reload(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    watcher, store, rec = watcher_for(path)
    rewrite(path, GOOD)
    assert watcher.poll_once() == "unchanged" and rec.reloads == []


def test_a_change_between_start_up_and_the_watcher_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    store = PolicyStore(load_policy(path))  # start-up read the file ...
    rewrite(path, REVOKING)  # ... which changed before the watcher started
    rec = Recorder()
    watcher = PolicyWatcher(str(path), store, policy_builder(EnvOverrides()), lambda p: rec.reloads.append(p.digest),
                            rec.errors.append)
    assert watcher.poll_once() == "reloaded" and key_digest(KEY) in store.policy.revoked


def configmap_dir(root: Path, version: str, text: str) -> None:
    """Mimic the kubelet: files live in a timestamped dir, `..data` points at it, the file is a symlink
    through `..data`, and updates swap `..data` atomically with a rename."""
    target = root / f"..{version}"
    target.mkdir()
    (target / "policy.yaml").write_text(text)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(target.name)
    os.replace(tmp_link, root / "..data")
    link = root / "policy.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/policy.yaml")


def test_configmap_symlink_swap(tmp_path: Path) -> None:
    configmap_dir(tmp_path, "2026_11_27_01", GOOD)
    path = tmp_path / "policy.yaml"
    watcher, store, rec = watcher_for(path)
    configmap_dir(tmp_path, "2026_11_27_02", REVOKING)
    assert watcher.poll_once() == "reloaded" and key_digest(KEY) in store.policy.revoked
    configmap_dir(tmp_path, "2026_11_27_03", BAD)
    assert watcher.poll_once() == "error" and key_digest(KEY) in store.policy.revoked
    configmap_dir(tmp_path, "2026_11_27_04", GOOD)
    assert watcher.poll_once() == "reloaded" and not store.policy.revoked


def test_missing_file_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(REVOKING)
    watcher, store, rec = watcher_for(path)
    path.unlink()
    assert watcher.poll_once() == "error" and key_digest(KEY) in store.policy.revoked
    assert watcher.poll_once() == "unchanged" and len(rec.errors) == 1
    path.write_text(GOOD)
    assert watcher.poll_once() == "reloaded"


def test_reload_reapplies_env_overrides_and_rejects_conflicts(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\npassthrough: true\n")
    rec = Recorder()
    overrides = EnvOverrides(require_key=True)
    build = policy_builder(overrides)
    store = PolicyStore(build(path.read_bytes(), str(path)))
    watcher = PolicyWatcher(str(path), store, build, lambda p: rec.reloads.append(p.digest), rec.errors.append)
    rewrite(path, "version: 1\npassthrough: true\nrequire_key: false\n")
    assert watcher.poll_once() == "reloaded" and store.policy.default.require_key is True  # env wins
    rewrite(path, "version: 1\npassthrough: false\n")
    assert watcher.poll_once() == "error" and store.policy.default.passthrough is True
    assert "REQUIRE_PASSTHROUGH_KEY" in str(rec.errors[-1])


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_live_service_reloads_through_symlink_swap(tmp_path: Path) -> None:
    configmap_dir(tmp_path, "v1", GOOD)
    with running_service(tmp_path / "policy.yaml") as svc:
        assert svc.check({"x-api-key": KEY}, route="messages").status.code == 0
        configmap_dir(tmp_path, "v2", REVOKING)
        wait_for(lambda: svc.check({"x-api-key": KEY}, route="messages").denied_response.status.code == 403)
        assert svc.metric("keyrelay_ext_authz_policy_reloads_total", result="success") == 2
        configmap_dir(tmp_path, "v3", BAD)
        wait_for(lambda: svc.metric("keyrelay_ext_authz_policy_reload_errors_total") == 1)
        assert svc.check({"x-api-key": KEY}, route="messages").denied_response.status.code == 403
        assert "invalid policy; keeping the last good one" in svc.proc.output
        assert "policy.yaml:2: require_key must be true or false" in svc.proc.output
        code, _ = svc.http_get("/readyz")
        assert code == 200
        configmap_dir(tmp_path, "v4", GOOD)
        wait_for(lambda: svc.check({"x-api-key": KEY}, route="messages").status.code == 0)
        info = svc.metric("keyrelay_ext_authz_policy_info")
        assert info == 1  # exactly one live digest
