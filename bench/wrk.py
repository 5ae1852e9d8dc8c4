"""Drive load with wrk (a real load generator, not Python) and read its result from the Lua `done` hook."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import taskset_prefix

LUA = Path(__file__).resolve().parent / "lua" / "request.lua"


@dataclass(frozen=True)
class Request:
    """What one wrk run sends."""

    url: str
    body_file: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_us: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed: `apt-get install -y wrk` (make bench does it when run as root)")
    return found


def wrk_version() -> str:
    out = subprocess.run([wrk_path(), "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def run(req: Request, *, connections: int, duration_s: float, cpus: str | None = None,
        timeout_s: float = 30.0) -> WrkResult:
    env = dict(os.environ)
    env["BENCH_METHOD"] = req.method
    env["BENCH_BODY_FILE"] = req.body_file or ""
    env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in req.headers.items())
    # One wrk thread (-t 1). wrk takes whole time units only (no milliseconds).
    argv = taskset_prefix(cpus) + [
        wrk_path(), "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration_s))}s",
        "--timeout", f"{int(timeout_s)}s", "-s", str(LUA), req.url,
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line[len("BENCH_JSON "):])
            return WrkResult(requests=data["requests"], duration_s=data["duration_us"] / 1e6,
                             errors=data["errors"], latency_us=data["latency_us"])
    raise RuntimeError(f"wrk gave no result (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
