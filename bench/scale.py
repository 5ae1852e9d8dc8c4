"""Section 4: concurrent long streams through the full path (Envoy + ext_authz + one translator worker).

N clients each hold one Claude-Code-shaped turn: the Claude-Code-sized request, streamed, the upstream writing a
time-stamped content chunk every `interval_ms` for `hold_s` seconds and a tool call at the end. For each N (run
in ascending order against the same processes) the table reports completed streams, the added delay per chunk
(arrival at the client minus the upstream's own stamp: Envoy, ext_authz's share of the first chunk, the
translator, loopback and the client's read), the time to the first chunk, and per process RSS and CPU.
"""

from __future__ import annotations

import array
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import bodies, components as C, machine, runner
from bench.procs import Proc, base_env, vm_hwm_kb
from bench.scale_client import pct
from keyrelay_stack.processes import raise_open_files_limit
from bench.translator_path import ANTHROPIC_BETA

STREAMS_PER_CLIENT = 1000
STREAMS_PER_UPSTREAM = 2500


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Peak current RSS (summed over a process and its workers) while a run lasts, sampled every 0.5 s:
    VmHWM alone is the peak over the process's whole life (earlier, smaller N included)."""

    def __init__(self, procs: dict[str, Proc]) -> None:
        self.procs = procs
        self.peak: dict[str, float] = {n: 0.0 for n in procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for n, p in self.procs.items():
                total = sum(rss_mb(pid) or 0.0 for pid in p.pids())
                self.peak[n] = max(self.peak[n], total)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def run(workdir: Path, *, ns: list[int], hold_s: float, interval_ms: float, ramp_s: float | None,
        envoy_concurrency: int, sut_cpus: str | None = None, translator_workers: int = 1) -> dict:
    raise_open_files_limit()  # inherited by every process started below
    chunks = max(1, round(hold_s * 1000 / interval_ms))
    policy = workdir / "policy.yaml"
    policy.write_text(C.policy_yaml())
    body, source = bodies.claude_code_body()
    body_file = workdir / "scale_body.json"
    body_file.write_text(json.dumps(bodies.with_stream(body, True)))
    started: list[C.Started] = []
    result: dict = {"translator_workers": translator_workers, "hold_s": hold_s, "interval_ms": interval_ms, "chunks_per_stream": chunks,
                    "body": f"{body_file.stat().st_size:,} B ({source}), streaming", "runs": {}}
    try:
        up_procs = max(1, math.ceil(max(ns) / STREAMS_PER_UPSTREAM))
        up = C.start_upstream(procs=up_procs, chunks=chunks, cpus=sut_cpus, interval_ms=interval_ms)
        started.append(up)
        fp = C.start_full_path(workdir, policy, up.port, started, name="envoy-scale",
                               envoy_concurrency=envoy_concurrency, cpus=sut_cpus,
                               translator_workers=translator_workers)
        tr, authz, envoy, envoy_port, cfg_source = fp.translator, fp.ext_authz, fp.envoy, fp.port, fp.config_source
        result.update(upstream_procs=up_procs, envoy_config=cfg_source)
        headers = {"content-type": "application/json", "anthropic-version": "2023-06-01",
                   "anthropic-beta": ANTHROPIC_BETA, "x-api-key": C.BENCH_KEY}
        procs = {"envoy": envoy.proc, "ext_authz": authz.proc, "translator": tr.proc, "upstream": up.proc}
        for n in ns:
            runner.log(f"[scale] N={n}: {n} streams of {chunks} chunks every {interval_ms:.0f} ms "
                       f"(~{hold_s:.0f} s each)")
            result["runs"][str(n)] = one_run(workdir, n, envoy_port, headers, body_file, chunks, hold_s,
                                             ramp_s if ramp_s is not None else min(10.0, max(1.0, n / 400)),
                                             procs)
            r = result["runs"][str(n)]
            runner.log(f"  completed {r['completed']}/{n}, added p99 {r['delay_ms']['p99']} ms, "
                       f"translator RSS {r['rss_mb']['translator']:.0f} MB")
        result["peak_rss_mb_lifetime"] = {n: round(sum((vm_hwm_kb(p) or 0) for p in s.pids()) / 1024, 1)
                                          for n, s in procs.items()}
        return result
    finally:
        for s in reversed(started):
            s.proc.stop()


def one_run(workdir: Path, n: int, port: int, headers: dict[str, str], body_file: Path, chunks: int,
            hold_s: float, ramp_s: float, procs: dict[str, Proc]) -> dict:
    clients = max(1, math.ceil(n / STREAMS_PER_CLIENT))
    start_ns = time.monotonic_ns() + int(1.5e9)  # all client processes are up and importing by then
    meters = {name: p.cpu_seconds() for name, p in procs.items()}
    sched0 = {name: p.sched_s() for name, p in procs.items()}
    t0 = time.monotonic()
    children = []
    for i in range(clients):
        delays = workdir / f"delays-{n}-{i}.bin"
        argv = [sys.executable, "-m", "bench.scale_client", "--port", str(port), "--headers", json.dumps(headers),
                "--body", str(body_file), "--total", str(n), "--procs", str(clients), "--index", str(i),
                "--start-ns", str(start_ns), "--ramp-s", str(ramp_s), "--chunks", str(chunks),
                "--timeout-s", str(hold_s * 3 + 60), "--delays", str(delays)]
        children.append((subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=base_env(), cwd=C.REPO), delays))
    with RssSampler(procs) as sampler:
        outs = []
        for child, delays in children:
            out, err = child.communicate(timeout=hold_s * 4 + ramp_s + 120)
            if child.returncode != 0:
                raise RuntimeError(f"scale client failed: {err[-2000:]}")
            outs.append((json.loads(out.strip().splitlines()[-1]), delays))
    wall = time.monotonic() - t0
    time.sleep(0.25)
    cpu = {name: round(p.cpu_seconds() - meters[name], 2) for name, p in procs.items()}
    # Runnable share: (time on a CPU + time waiting for one) / wall time, per process. Near 1 for a
    # single-threaded process means it wanted a whole core all along (saturated); a wait much larger than
    # the run time means the machine was busy with other work.
    sched = {name: [b - a for a, b in zip(sched0[name], p.sched_s())] for name, p in procs.items()}
    all_delays = array.array("i")
    for _, delays in outs:
        with open(delays, "rb") as fh:
            all_delays.frombytes(fh.read())
        delays.unlink()
    ds = sorted(all_delays)
    ttfb = [x for o, _ in outs for x in o["ttfb_ms"]]
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for o, _ in outs:
        for k, v in o["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    client_cpu = sum(o["cpu_s"] for o, _ in outs)

    def q(p: float) -> float | None:
        return round(ds[min(len(ds) - 1, int(p * len(ds)))] / 1000, 2) if ds else None

    per_chunk = {name: round(v / len(ds) * 1e6, 1) if ds else None for name, v in cpu.items()}
    return {
        "loadavg": machine.loadavg()[0], "us_per_chunk": per_chunk,
        "cpu_wait_s": {name: round(w, 2) for name, (_, w) in sched.items()},
        "translator_runnable_share": round(sum(sched["translator"]) / wall, 2),
        "n": n, "completed": sum(o["completed"] for o, _ in outs), "statuses": statuses, "errors": errors,
        "chunks": len(ds), "chunks_expected": n * chunks, "ramp_s": ramp_s, "wall_s": round(wall, 1),
        "delay_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": q(1.0)},
        "ttfb_ms": {"p50": pct(ttfb, 0.5), "p99": pct(ttfb, 0.99)},
        "rss_mb": {name: round(v, 1) for name, v in sampler.peak.items()},
        "cpu_s": cpu, "cpu_cores": {name: round(v / wall, 3) for name, v in cpu.items()},
        "client": {"procs": clients, "cpu_s": round(client_cpu, 2),
                   "cores": round(client_cpu / wall, 3)},
    }
