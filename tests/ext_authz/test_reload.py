"""Hot reload: good file, bad file (last good stays, counted), ConfigMap-style symlink swap, missing file."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest


from ext_authz.startup import policy_builder
from ext_authz.decide import key_digest
from ext_authz.policy import MAX_POLICY_BYTES, PolicyError, load_policy
from ext_authz.reload import LOOSEN_QUIET_SECONDS, PolicyStore, PolicyWatcher
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
        self.pending: list[tuple[str, list[str]]] = []
        self.now = 1000.0  # the watcher's clock: tests move it on by hand

    def on_pending(self, policy, changes, quiet) -> None:
        self.pending.append((policy.digest, [c.what for c in changes if c.effect == "loosens"]))


def watcher_for(path: Path, overrides: EnvOverrides = EnvOverrides(),
                quiet: float = LOOSEN_QUIET_SECONDS) -> tuple[PolicyWatcher, PolicyStore, Recorder]:
    rec = Recorder()
    build = policy_builder(overrides)
    store = PolicyStore(build(path.read_bytes(), str(path)))
    watcher = PolicyWatcher(str(path), store, build, lambda p: rec.reloads.append(p.digest), rec.errors.append,
                            loosen_quiet_seconds=quiet, on_pending=rec.on_pending, clock=lambda: rec.now)
    return watcher, store, rec


def settle(watcher: PolicyWatcher, rec: Recorder) -> str:
    """A loosening change waits; after the quiet period without edits it is applied."""
    assert watcher.poll_once() == "pending"
    rec.now += LOOSEN_QUIET_SECONDS
    return watcher.poll_once()


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

    rewrite(path, GOOD)                                       # the revocation goes: loosens, so it waits
    assert settle(watcher, rec) == "reloaded" and store.policy.digest == first.digest


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
    assert settle(watcher, rec) == "reloaded" and not store.policy.revoked


def test_missing_file_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(REVOKING)
    watcher, store, rec = watcher_for(path)
    path.unlink()
    assert watcher.poll_once() == "error" and key_digest(KEY) in store.policy.revoked
    assert watcher.poll_once() == "unchanged" and len(rec.errors) == 1
    path.write_text(GOOD)
    assert settle(watcher, rec) == "reloaded"


def test_reload_reapplies_env_overrides_and_rejects_conflicts(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\npassthrough: true\n")
    watcher, store, rec = watcher_for(path, EnvOverrides(require_key=True))
    rewrite(path, "version: 1\npassthrough: true\nrequire_key: false\n")
    # The file loosens, but the environment pins require_key: nothing decides differently, applied at once.
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
    with running_service(tmp_path / "policy.yaml", extra_args=["--loosen-quiet-seconds", "1"]) as svc:
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


# ------------------------------------------------------------------------------------- quiet period


def unrevoke_pending(tmp_path: Path) -> tuple[Path, PolicyWatcher, PolicyStore, Recorder]:
    """A live policy that revokes KEY, and the file rewritten without the revocation: a loosening change that
    waits for its quiet period."""
    path = tmp_path / "policy.yaml"
    path.write_text(REVOKING)
    watcher, store, rec = watcher_for(path)
    rewrite(path, GOOD)
    assert watcher.poll_once() == "pending" and key_digest(KEY) in store.policy.revoked
    return path, watcher, store, rec


def test_loosening_waits_for_quiet_and_an_edit_restarts_the_wait(tmp_path: Path) -> None:
    path, watcher, store, rec = unrevoke_pending(tmp_path)
    assert rec.pending == [(load_policy(path).digest, [f"revoked: key {key_digest(KEY)[:16]} no longer revoked"])]
    rec.now += LOOSEN_QUIET_SECONDS - 0.5
    assert watcher.poll_once() == "pending"
    rewrite(path, GOOD + "# still editing\n")             # content changed: the wait starts again
    rec.now += 1.0
    assert watcher.poll_once() == "pending" and key_digest(KEY) in store.policy.revoked
    rec.now += LOOSEN_QUIET_SECONDS - 0.5
    assert watcher.poll_once() == "pending"
    rec.now += 0.5
    assert watcher.poll_once() == "reloaded" and not store.policy.revoked
    assert len(rec.pending) == 2                          # announced once per content


def test_tightening_applies_at_once_even_while_a_loosening_waits(tmp_path: Path) -> None:
    path, watcher, store, rec = unrevoke_pending(tmp_path)
    rewrite(path, REVOKING + "key_format: '^sk-.+$'\n")   # back to revoked, plus a format: tightens
    assert watcher.poll_once() == "reloaded" and store.policy.default.key_format is not None
    assert watcher.poll_once() == "unchanged"


def test_a_pending_change_reverted_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(REVOKING)
    watcher, store, rec = watcher_for(path)
    live = store.policy
    rewrite(path, "version: 1\nrequire_key: true\nrevoked:\n")   # a writer paused after `revoked:`
    assert watcher.poll_once() == "pending"
    rewrite(path, REVOKING)                                        # ... and finished: same as live
    assert watcher.poll_once() == "unchanged"
    rec.now += 3 * LOOSEN_QUIET_SECONDS
    assert watcher.poll_once() == "unchanged" and store.policy is live and rec.reloads == []


def test_neutral_change_applies_at_once(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(REVOKING)
    watcher, store, rec = watcher_for(path)
    rewrite(path, REVOKING + "decision_log: {mode: denials}\ndry_run: {key_format: '^sk-x.*$'}\n")
    assert watcher.poll_once() == "reloaded" and store.policy.decision_log is not None


def test_invalid_file_while_pending_keeps_last_good(tmp_path: Path) -> None:
    path, watcher, store, rec = unrevoke_pending(tmp_path)
    rewrite(path, BAD)
    rec.now += 2 * LOOSEN_QUIET_SECONDS
    assert watcher.poll_once() == "error" and key_digest(KEY) in store.policy.revoked
    assert watcher.poll_once() == "unchanged" and key_digest(KEY) in store.policy.revoked


OTHER = "sk-reload-other-9876543210"
PARTIAL_POLICY = f"""\
# team keys; regenerated by a script that writes this file in place
version: 1
require_key: true
key_format: '^sk-[A-Za-z0-9-]{{8,64}}$'
revoked:
  - sha256: {key_digest(KEY)}
"""
NEW_POLICY = PARTIAL_POLICY.replace("# team keys", "# team keys (2)") + f"  - sha256: {key_digest(OTHER)}\n"
PARTIAL_SPLIT = NEW_POLICY.index("revoked:") + len("revoked:\n")


def write_in_place_with_pause(path: Path, text: str, split: int, pause: float) -> None:
    """What `cat > policy.yaml`, a script or an editor without safe-write does: truncate, write part, pause,
    write the rest, all on the same inode."""
    with open(path, "r+b") as fh:
        fh.truncate(0)
        fh.write(text[:split].encode())
        fh.flush()
        os.fsync(fh.fileno())
        time.sleep(pause)
        fh.write(text[split:].encode())
        fh.flush()
        os.fsync(fh.fileno())


@pytest.mark.parametrize("quiet,revoked_ever_allowed", [("5", False), ("0", True)], ids=["default-5s", "no-quiet"])
def test_in_place_write_paused_after_revoked_never_allows_the_revoked_key(tmp_path: Path, quiet: str,
                                                                         revoked_ever_allowed: bool) -> None:
    """The revoked key is probed every 100 ms over real gRPC while a writer rewrites the policy in place and
    pauses 3 s right after `revoked:`. With the quiet period (default 5 s) it is never allowed, during the
    write or after; with the quiet period off the same write lets it in (so this test can see the race)."""
    path = tmp_path / "policy.yaml"
    path.write_text(PARTIAL_POLICY)
    with running_service(path, extra_args=["--loosen-quiet-seconds", quiet]) as svc:
        assert svc.check({"x-api-key": KEY}, route="messages").denied_response.status.code == 403
        probes: list[int] = []
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                resp = svc.check({"x-api-key": KEY}, route="messages")
                probes.append(resp.status.code)
                time.sleep(0.1)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            time.sleep(0.3)
            write_in_place_with_pause(path, NEW_POLICY, PARTIAL_SPLIT, pause=3.0)
            # The finished file revokes one more key: a tightening change, live at once.
            wait_for(lambda: svc.check({"x-api-key": OTHER}, route="messages").denied_response.status.code == 403)
            time.sleep(1.0)
        finally:
            done.set()
            prober.join()
        allowed = sum(1 for code in probes if code == 0)
        assert len(probes) >= 30
        assert (allowed > 0) is revoked_ever_allowed, f"{allowed} of {len(probes)} probes allowed the revoked key"
        assert probes[-5:] == [7] * 5   # PERMISSION_DENIED: still revoked after the write
        if not revoked_ever_allowed:
            assert "policy change loosens the policy" in svc.proc.output   # the partial file was seen and held


def test_an_oversized_file_is_refused_and_the_last_good_stays(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(REVOKING)
    watcher, store, rec = watcher_for(path)
    rewrite(path, GOOD + "#" * (MAX_POLICY_BYTES - len(GOOD)) + "\n")   # one byte over the limit
    assert watcher.poll_once() == "error" and key_digest(KEY) in store.policy.revoked
    assert f"larger than {MAX_POLICY_BYTES} bytes" in str(rec.errors[-1])
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(path)
    rec.now += 2 * LOOSEN_QUIET_SECONDS
    assert watcher.poll_once() == "unchanged" and key_digest(KEY) in store.policy.revoked
