"""Watch the policy file and swap in a new Policy when its content changes.

A Kubernetes ConfigMap volume replaces files through a symlink swap (`policy.yaml -> ..data/policy.yaml`,
`..data -> ..2024_xx`), so an inotify watch on the file misses updates. Polling is simple and sufficient: each
tick compares the resolved path and stat (inode, size, mtime); only when that changes is the file read, and only
when the content digest changed is it parsed. An invalid new file keeps the last good policy, is logged once
and counted.

A file edited in place can be read half-written, and a prefix of a policy is often a valid, weaker policy (cut
right after `revoked:` it revokes nothing). No stability window can tell a writer that paused from one that
finished, so the direction of the change decides (policy_diff.py): a change that only tightens the policy (or
changes nothing that decides) is applied at once; a change that loosens it in any way is applied only after
its content stayed the same for `loosen_quiet_seconds`. A half-written file therefore never weakens the live
policy unless the writer pauses longer than that; an atomic replace (rename, ConfigMap swap) is always safe."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .policy import Policy, PolicyError, read_bounded
from .policy_diff import LOOSENS, Change, compare, effect

# Default of --loosen-quiet-seconds: how long a loosening change must stay unchanged in the file before it is
# applied. Longer than any pause of an interactive or scripted in-place write one expects; short enough that
# an intended un-revoke or new key goes live within seconds.
LOOSEN_QUIET_SECONDS = 5.0

log = logging.getLogger("ext_authz.reload")


class PolicyStore:
    """Holds the live policy. Readers take `store.policy` once per check; the swap is one reference assignment."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy


@dataclass(frozen=True, slots=True)
class FileSignature:
    realpath: str
    dev: int
    ino: int
    size: int
    mtime_ns: int


def signature(path: str) -> FileSignature | None:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return FileSignature(real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(slots=True)
class _Pending:
    """A valid file content that differs from the live policy and waits for its quiet period."""

    digest: str
    since: float            # clock() of the first poll that saw this content
    policy: Policy
    changes: list[Change]
    loosens: bool
    announced: bool = False


class PolicyWatcher:
    """`build(raw, source)` turns file bytes into a Policy (parse + environment overrides) or raises PolicyError.
    `on_reload(policy)` / `on_error(error)` report outcomes (metrics, logs); `on_pending(policy, changes,
    quiet_seconds)` reports, once per content, a loosening change that waits for its quiet period."""

    def __init__(self, path: str, store: PolicyStore, build: Callable[[bytes, str], Policy],
                 on_reload: Callable[[Policy], None], on_error: Callable[[PolicyError], None], *,
                 loosen_quiet_seconds: float = LOOSEN_QUIET_SECONDS,
                 on_pending: Callable[[Policy, list[Change], float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.store = store
        self.build = build
        self.on_reload = on_reload
        self.on_error = on_error
        self.on_pending = on_pending
        self.loosen_quiet_seconds = loosen_quiet_seconds
        self.clock = clock
        # None, not the file's signature now: the store's policy was read before this watcher started, so the
        # first poll reads the file and compares digests (a change in between is picked up, none is no reload).
        self._last_sig: FileSignature | None = None
        self._last_bad: str | None = None
        self._pending: _Pending | None = None

    def poll_once(self) -> str:
        """Returns 'unchanged', 'reloaded', 'pending' (a loosening change waits) or 'error'."""
        sig = signature(self.path)
        if sig is not None and sig == self._last_sig and self._pending is None:
            return "unchanged"
        if sig is None:
            self._pending = None
            if self._last_bad != "missing":
                self._last_bad = "missing"
                self._last_sig = None
                self.on_error(PolicyError(self.path, None, "policy file is missing or unreadable; "
                                                           "keeping the last good policy"))
                return "error"
            return "unchanged"
        try:
            # Re-read while a change is pending even if the stat looks the same: the quiet period is about
            # the content, and a same-size rewrite within one mtime tick would not change the signature.
            raw = read_bounded(sig.realpath)
        except OSError as exc:
            self.on_error(PolicyError(self.path, None, f"cannot read policy file: {exc.strerror}"))
            return "error"
        self._last_sig = sig
        now = self.clock()
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self.store.policy.digest:
            self._last_bad = None
            self._pending = None
            return "unchanged"
        if digest == self._last_bad:
            return "unchanged"
        pending = self._pending
        if pending is None or pending.digest != digest:
            try:
                policy = self.build(raw, self.path)
            except PolicyError as exc:
                self._last_bad = digest
                self._pending = None
                self.on_error(exc)
                return "error"
            self._last_bad = None
            changes = compare(self.store.policy, policy)
            pending = self._pending = _Pending(digest, now, policy, changes, effect(changes) == LOOSENS)
        if pending.loosens and now - pending.since < self.loosen_quiet_seconds:
            if not pending.announced and self.on_pending is not None:
                self.on_pending(pending.policy, pending.changes, self.loosen_quiet_seconds)
            pending.announced = True
            return "pending"
        self._pending = None
        self.store.policy = pending.policy
        self.on_reload(pending.policy)
        return "reloaded"

    def run(self, interval: float, stop: threading.Event) -> None:
        """Poll until `stop` is set (runs in its own daemon thread, off the request path)."""
        while not stop.wait(interval):
            try:
                self.poll_once()
            except Exception:  # never let the watcher die; the last good policy stays live
                log.error("policy watcher failed", exc_info=True)

    def start_thread(self, interval: float, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(interval, stop), name="ext_authz-policy-watch", daemon=True)
        thread.start()
        return thread
