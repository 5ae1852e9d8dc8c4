"""Watch the policy file and swap in a new Policy when its content changes.

A Kubernetes ConfigMap volume replaces files through a symlink swap (`policy.yaml -> ..data/policy.yaml`,
`..data -> ..2024_xx`), so an inotify watch on the file misses updates. Polling is simple and sufficient: each
tick compares the resolved path and stat (inode, size, mtime); only when that changes is the file read, and only
when the content digest changed is it parsed. An invalid new file keeps the last good policy, is logged once
and counted."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

from .policy import Policy, PolicyError

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


class PolicyWatcher:
    """`build(raw, source)` turns file bytes into a Policy (parse + environment overrides) or raises PolicyError.
    `on_reload(policy)` / `on_error(error)` report outcomes (metrics, logs)."""

    def __init__(self, path: str, store: PolicyStore, build: Callable[[bytes, str], Policy],
                 on_reload: Callable[[Policy], None], on_error: Callable[[PolicyError], None]) -> None:
        self.path = path
        self.store = store
        self.build = build
        self.on_reload = on_reload
        self.on_error = on_error
        # None, not the file's signature now: the store's policy was read before this watcher started, so the
        # first poll reads the file and compares digests (a change in between is picked up, none is no reload).
        self._last_sig: FileSignature | None = None
        self._last_bad: str | None = None

    def poll_once(self) -> str:
        """Returns 'unchanged', 'reloaded' or 'error'."""
        sig = signature(self.path)
        if sig is not None and sig == self._last_sig:
            return "unchanged"
        if sig is None:
            if self._last_bad != "missing":
                self._last_bad = "missing"
                self._last_sig = None
                self.on_error(PolicyError(self.path, None, "policy file is missing or unreadable; "
                                                           "keeping the last good policy"))
                return "error"
            return "unchanged"
        try:
            with open(sig.realpath, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            self.on_error(PolicyError(self.path, None, f"cannot read policy file: {exc.strerror}"))
            return "error"
        self._last_sig = sig
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self.store.policy.digest:
            self._last_bad = None
            return "unchanged"
        if digest == self._last_bad:
            return "unchanged"
        try:
            policy = self.build(raw, self.path)
        except PolicyError as exc:
            self._last_bad = digest
            self.on_error(exc)
            return "error"
        self._last_bad = None
        self.store.policy = policy
        self.on_reload(policy)
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
