"""Processes under test: start, wait for the `ready:` line (timestamped, for cold start), and read their CPU
time and peak RSS from /proc.

Own small class rather than tests/support/procs.Proc: a benchmark must not keep every output line in memory
during a load run (access logs) and needs the monotonic time at which the ready line arrived.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from keyrelay_stack.processes import (PROVIDER_ENV_PREFIXES, SERVICE_ENV_PREFIXES, child_env, console_script,
                                       free_port)  # noqa: F401  (free_port re-exported)

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def script(name: str) -> str:
    """Path of a console script installed in this venv (falls back to PATH)."""
    return console_script(name, hint="run `make bench`: it installs the project into .venv")


def base_env(**extra: str) -> dict[str, str]:
    """The parent environment without any provider/policy setting that could change what is measured."""
    return child_env(drop=PROVIDER_ENV_PREFIXES + SERVICE_ENV_PREFIXES + ("LITELLM_",), **extra)


def taskset_prefix(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


class Proc:
    """A child process in its own session. Output is drained continuously; only the last lines are kept."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, name: str = "",
                 cpus: str | None = None, ready_prefix: str = "ready:", cwd: Path = REPO) -> None:
        self.name = name or Path(argv[0]).name
        self.argv = argv
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.ready_at: float | None = None
        self._ready_prefix = ready_prefix
        self._ready = threading.Event()
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen(taskset_prefix(cpus) + argv, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                      start_new_session=True, cwd=cwd)
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"out-{self.name}")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            if self.ready_at is None and (line.startswith(self._ready_prefix) or f" {self._ready_prefix} " in line):
                self.ready_at = time.monotonic()
                self._ready.set()
            self.tail.append(line.rstrip("\n"))
        self._ready.set()  # EOF: unblock waiters; they check whether ready_at was set

    @property
    def output(self) -> str:
        return "\n".join(self.tail)

    def wait_ready(self, timeout: float = 90.0) -> "Proc":
        self._ready.wait(timeout)
        if self.ready_at is None:
            code = self.popen.poll()
            self.stop()
            state = f"exited with {code}" if code is not None else f"not ready within {timeout:.0f}s"
            raise RuntimeError(f"{self.name} {state}:\n{self.output[-3000:]}")
        return self

    @property
    def startup_s(self) -> float:
        assert self.ready_at is not None
        return self.ready_at - self.started_at

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._reader.join(5)
        return self.popen.returncode

    # ------------------------------------------------------------------ /proc readings

    def pids(self) -> list[int]:
        """This process and all live descendants (worker processes)."""
        return [self.pid] + descendants(self.pid)

    def cpu_seconds(self) -> float:
        """utime+stime of the process and every live descendant (worker processes are long-lived, so their
        time is counted while they run; cutime/cstime would only count reaped children)."""
        return sum(cpu_of(p) for p in self.pids())

    def sched_s(self) -> tuple[float, float]:
        """(seconds on a CPU, seconds runnable but waiting for one) of the process and its live descendants,
        from /proc/<pid>/schedstat: a large wait means the machine, not the process, set the pace."""
        run = wait = 0.0
        for p in self.pids():
            try:
                with open(f"/proc/{p}/schedstat") as f:
                    r, w, _ = f.read().split()
            except (OSError, ValueError):
                continue
            run += int(r) / 1e9
            wait += int(w) / 1e9
        return run, wait

    def peak_rss_mb(self) -> dict[int, float]:
        """VmHWM per process (the process and each worker) in MiB."""
        out = {}
        for p in self.pids():
            hwm = vm_hwm_kb(p)
            if hwm is not None:
                out[p] = hwm / 1024
        return out


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command name: state(0) ppid(1) ... utime(11) stime(12)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class CpuMeter:
    """CPU seconds of a set of named processes between start() and stop()."""

    procs: dict[str, Proc]

    def start(self) -> None:
        self._t0 = {n: p.cpu_seconds() for n, p in self.procs.items()}

    def stop(self) -> dict[str, float]:
        return {n: p.cpu_seconds() - self._t0[n] for n, p in self.procs.items()}
