"""Run child processes as one unit: prefixed output, readiness, and all-or-nothing shutdown.

Each child runs in its own process group (so a stop reaches its workers too) and, on Linux, gets SIGTERM if
the supervisor dies without cleaning up (PR_SET_PDEATHSIG). When any child exits on its own, the supervisor
stops the others and reports which one failed.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

PR_SET_PDEATHSIG = 1


def _die_with_parent_fn() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def _set() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return _set


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    # A child is ready when it prints a line starting with "ready:" (the project's process contract), or,
    # when `probe` is given, when the probe returns True.
    probe: Callable[[], bool] | None = None


@dataclass
class Child:
    spec: ChildSpec
    popen: subprocess.Popen
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.popen.pid

    def group_alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class ChildFailed(RuntimeError):
    def __init__(self, child: Child, code: int | None) -> None:
        super().__init__(f"{child.name} exited unexpectedly (exit code {code})")
        self.child = child
        self.code = code


class Interrupted(RuntimeError):
    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class Supervisor:
    """Start children, wait for readiness, and stop them all together.

    `out` receives every output line, already prefixed with the child's name (`[envoy] ...`); events from
    the reader threads (exits) and the signal handler reach the main thread through one queue."""

    def __init__(self, out: Callable[[str], None] | None = None) -> None:
        self.children: list[Child] = []
        self._events: queue.Queue[tuple[str, object]] = queue.Queue()
        self._out_lock = threading.Lock()
        self._out = out or (lambda line: print(line, flush=True))

    # -- output
    def say(self, line: str) -> None:
        with self._out_lock:
            self._out(line)

    # -- signals
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self._events.put(("signal", signum)))

    # -- start
    def spawn(self, specs: list[ChildSpec]) -> list[Child]:
        """Start every child first, then their output readers (no thread runs while forking)."""
        preexec = _die_with_parent_fn()
        started = []
        for spec in specs:
            popen = subprocess.Popen(
                spec.argv, env=spec.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec, text=True, bufsize=1,
                errors="replace")
            child = Child(spec, popen)
            self.children.append(child)
            started.append(child)
        for child in started:
            child.reader = threading.Thread(target=self._read, args=(child,), name=f"out-{child.name}",
                                            daemon=True)
            child.reader.start()
        return started

    def _read(self, child: Child) -> None:
        assert child.popen.stdout is not None
        prefix = f"[{child.name}] "
        for line in child.popen.stdout:
            line = line.rstrip("\n")
            self.say(prefix + line)
            if child.spec.probe is None and line.startswith("ready:"):
                child.ready.set()
        code = child.popen.wait()
        self._events.put(("exit", (child, code)))

    # -- wait
    def _poll_events(self, timeout: float) -> None:
        """Raise on a signal or a child exit seen within `timeout` seconds."""
        try:
            kind, payload = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        if kind == "signal":
            raise Interrupted(payload)  # type: ignore[arg-type]
        child, code = payload  # type: ignore[misc]
        raise ChildFailed(child, code)

    def wait_ready(self, child: Child, timeout: float, progress_every: float = 5.0) -> float:
        start = time.monotonic()
        next_note = start + progress_every
        while not child.ready.is_set():
            now = time.monotonic()
            if now - start > timeout:
                raise TimeoutError(f"{child.name} was not ready within {timeout:g}s")
            if child.spec.probe is not None:
                try:
                    if child.spec.probe():
                        child.ready.set()
                        break
                except Exception:  # a probe failing is "not ready yet"
                    pass
            if now >= next_note:
                self.say(f"[stack] still waiting for {child.name} ({now - start:.0f}s)")
                next_note = now + progress_every
            self._poll_events(0.1)
        return time.monotonic() - start

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        start = time.monotonic()
        while True:
            try:
                if predicate():
                    return
            except Exception:
                pass
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{what} within {timeout:g}s")
            self._poll_events(0.2)

    def run_until_event(self) -> None:
        """Block until a signal arrives or a child exits (raises Interrupted / ChildFailed)."""
        while True:
            self._poll_events(1.0)

    # -- stop
    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every child's process group (in reverse start order), then SIGKILL what is left."""
        for child in reversed(self.children):
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.popen.wait(remaining)
            except subprocess.TimeoutExpired:
                self.say(f"[stack] {child.name} did not stop within {timeout:g}s; killing it")
                child.signal_group(signal.SIGKILL)
                child.popen.wait(5)
        # Workers a child left behind in its group (its leader is gone): they go too.
        for child in self.children:
            if child.group_alive():
                child.signal_group(signal.SIGKILL)
        for child in self.children:
            if child.reader is not None:
                child.reader.join(2)
