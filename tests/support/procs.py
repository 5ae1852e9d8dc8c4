"""Start the project's console scripts as real processes on free loopback ports and wait for their
`ready:` line (the process contract in ARCHITECTURE.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from keyrelay_stack.processes import (PROVIDER_ENV_PREFIXES, SERVICE_ENV_PREFIXES, child_env, console_script,
                                       free_port)  # noqa: F401  (free_port re-exported)

REPO = Path(__file__).resolve().parents[2]


def script(name: str) -> str:
    """Path of a console script installed in this venv (falls back to PATH)."""
    return console_script(name, hint="run `make test`: it installs the project into .venv")


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without provider or service settings (a test passes what it means)."""
    return child_env(drop=PROVIDER_ENV_PREFIXES + SERVICE_ENV_PREFIXES, **extra)


class Proc:
    """A child process whose combined output is captured (for log-secrecy assertions) and whose
    `ready:` line is awaited."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str = "", cwd: str | Path | None = None) -> None:
        self.name = name or Path(argv[0]).name
        self.argv = argv
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.popen = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, bufsize=1, start_new_session=True, cwd=cwd)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("ready:"):  # the process's own line, not a prefixed child's `[demo] ready: ...`
                self._ready.set()
        self._ready.set()  # EOF: unblock waiters; they check returncode

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 60.0) -> "Proc":
        if not self._ready.wait(timeout) or self.popen.poll() is not None and not any(
                l.startswith("ready:") for l in self.lines):
            self.stop()
            raise RuntimeError(f"{self.name} did not become ready within {timeout}s:\n{self.output[-4000:]}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._reader.join(5)
        return self.popen.returncode
