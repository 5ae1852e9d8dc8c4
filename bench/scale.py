"""Section 4: concurrent long streams through the full path (Envoy + ext_authz + one translator worker).

N clients each hold one Claude-Code-shaped turn: the Claude-Code-sized request, streamed, the upstream writing a
time-stamped content chunk every `interval_ms` for `hold_s` seconds and a tool call at the end. For each N (run
in ascending order against the same processes) the table reports completed streams, the added delay per chunk
(arrival at the client minus the upstream's own stamp: Envoy, ext_authz's share of the first chunk, the
translator, loopback and the client's read), the time to the first chunk, and per process RSS and CPU.

With several Envoy variants (`--scale-envoy-variants`), one Envoy per variant runs in front of the same ext_authz
and translator, and every run's streams are dealt round-robin over them (their start times interleaved), so the
variants' Envoy CPU per chunk is measured side by side under the same load.
"""

from __future__ import annotations

import array
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import bodies, components as C, envoy_config, machine, runner
from bench.procs import Proc, base_env, free_port, vm_hwm_kb
from bench.scale_client import pct
from keyrelay_stack.processes import raise_open_files_limit
from bench.translator_path import ANTHROPIC_BETA

STREAMS_PER_CLIENT = 1000
STREAMS_PER_UPSTREAM = 2500
# The scale targets (issue text; docs/bench.md): every stream completed, and these two limits.
TARGET_P99_MS = 25.0
TARGET_TRANSLATOR_RSS_MB = 400.0


def meets_targets(run: dict) -> list[str]:
    """What a run missed of the scale targets (empty: it met them all)."""
    missed = []
    if run["completed"] < run["n"]:
        missed.append(f"{run['n'] - run['completed']} streams not completed")
    p99 = run["delay_ms"]["p99"]
    if p99 is None or p99 > TARGET_P99_MS:
        missed.append(f"added p99 {p99} ms > {TARGET_P99_MS:.0f} ms")
    if run["rss_mb"]["translator"] > TARGET_TRANSLATOR_RSS_MB:
        missed.append(f"translator RSS {run['rss_mb']['translator']:.0f} MB > {TARGET_TRANSLATOR_RSS_MB:.0f} MB")
    return missed


def capacity(run: dict, *, interval_ms: float, caps: dict[str, int], cores: int) -> dict:
    """The cores each process needs for the offered load (N streams x 1000/interval_ms chunks/s), from its CPU
    per chunk measured in the run, against what it can use (`caps`: a one-worker translator one core, Envoy its
    --concurrency) and against the machine's cores. keyrelay's processes and the bench's own (upstream,
    client) are summed apart: the bench's load generators are on the machine too, but not in a deployment."""
    offered = run["n"] * 1000 / interval_ms
    need = {name: round(us * offered / 1e6, 2) for name, us in run["us_per_chunk"].items() if us is not None}
    keyrelay = round(sum(v for k, v in need.items() if k in ("translator", "envoy", "ext_authz")), 2)
    bench_own = round(sum(v for k, v in need.items() if k in ("upstream", "client")), 2)
    over = {name: round(need[name] / cap, 2) for name, cap in caps.items() if name in need and need[name] > cap}
    return {"chunks_per_s": offered, "cores_needed": need, "caps": caps, "keyrelay_cores": keyrelay,
            "bench_cores": bench_own, "machine_cores": cores, "over_cap": over,
            "fits": not over and keyrelay + bench_own <= cores}


def _no_idle_timeouts(config: dict) -> None:
    """The stream idle timers off (HCM stream_idle_timeout and every route's idle_timeout): what re-arming
    them on every chunk costs. Informational only: the product promises both timeouts (docs/stack.md)."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                hcm = f.get("typed_config", {})
                if "stream_idle_timeout" in hcm:
                    hcm["stream_idle_timeout"] = "0s"
                for vh in hcm.get("route_config", {}).get("virtual_hosts", []):
                    for route in vh.get("routes", []):
                        route.get("route", {}).pop("idle_timeout", None)


# name -> (render the access log, Envoy --concurrency or None for the run's default, config change or None)
ENVOY_VARIANTS = {
    "as_is": (True, None, None),
    "concurrency_1": (True, 1, None),
    "no_access_log": (False, None, None),
    "no_idle_timeouts": (True, None, _no_idle_timeouts),
}


class ProcGroup:
    """Several processes read as one (the Envoys of a run with variants: the table's `envoy` column)."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs

    def pids(self) -> list[int]:
        return [pid for p in self.procs for pid in p.pids()]

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.procs)

    def sched_s(self) -> tuple[float, float]:
        runs, waits = zip(*(p.sched_s() for p in self.procs))
        return sum(runs), sum(waits)


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
        envoy_concurrency: int, sut_cpus: str | None = None, translator_workers: int = 1,
        envoy_variants: list[str] | None = None) -> dict:
    raise_open_files_limit()  # inherited by every process started below
    chunks = max(1, round(hold_s * 1000 / interval_ms))
    policy = workdir / "policy.yaml"
    policy.write_text(C.policy_yaml())
    body, source = bodies.claude_code_body()
    body_file = workdir / "scale_body.json"
    body_file.write_text(json.dumps(bodies.with_stream(body, True)))
    started: list[C.Started] = []
    result: dict = {"translator_workers": translator_workers, "hold_s": hold_s, "interval_ms": interval_ms, "chunks_per_stream": chunks,
                    "body": f"{body_file.stat().st_size:,} B ({source}), streaming", "runs": {},
                    "envoy_concurrency": envoy_concurrency}
    try:
        up_procs = max(1, math.ceil(max(ns) / STREAMS_PER_UPSTREAM))
        up = C.start_upstream(procs=up_procs, chunks=chunks, cpus=sut_cpus, interval_ms=interval_ms)
        started.append(up)
        fp = C.start_full_path(workdir, policy, up.port, started, name="envoy-scale",
                               envoy_concurrency=envoy_concurrency, cpus=sut_cpus,
                               translator_workers=translator_workers)
        tr, authz, envoy, envoy_port, cfg_source = fp.translator, fp.ext_authz, fp.envoy, fp.port, fp.config_source
        result.update(upstream_procs=up_procs, envoy_config=cfg_source)
        targets: dict[str, tuple[int, Proc]] = {"as_is": (envoy_port, envoy.proc)}
        if envoy_variants:
            targets = start_envoy_variants(workdir, envoy_variants, envoy, envoy_port, authz.port, tr.port,
                                           envoy_concurrency, sut_cpus, started)
            result["envoy_variants"] = {name: {"access_log": ENVOY_VARIANTS[name][0],
                                               "concurrency": ENVOY_VARIANTS[name][1] or envoy_concurrency}
                                        for name in targets}
        headers = {"content-type": "application/json", "anthropic-version": "2023-06-01",
                   "anthropic-beta": ANTHROPIC_BETA, "x-api-key": C.BENCH_KEY}
        procs = {"envoy": ProcGroup([p for _, p in targets.values()]), "ext_authz": authz.proc, "translator": tr.proc,
                 "upstream": up.proc}
        for n in ns:
            runner.log(f"[scale] N={n}: {n} streams of {chunks} chunks every {interval_ms:.0f} ms "
                       f"(~{hold_s:.0f} s each)" + (f", dealt over Envoys {', '.join(targets)}" if envoy_variants
                                                   else ""))
            result["runs"][str(n)] = one_run(workdir, n, targets if envoy_variants else None, envoy_port, headers,
                                             body_file, chunks, hold_s,
                                             ramp_s if ramp_s is not None else min(10.0, max(1.0, n / 400)),
                                             procs)
            r = result["runs"][str(n)]
            r["capacity"] = capacity(r, interval_ms=interval_ms, cores=os.cpu_count() or 1, caps={
                "translator": translator_workers, "envoy": max(
                    ENVOY_VARIANTS[v][1] or envoy_concurrency for v in (envoy_variants or ["as_is"])),
                "ext_authz": 1, "upstream": up_procs, "client": r["client"]["procs"]})
            r["targets_missed"] = meets_targets(r)
            runner.log(f"  completed {r['completed']}/{n}, added p99 {r['delay_ms']['p99']} ms, "
                       f"translator RSS {r['rss_mb']['translator']:.0f} MB")
        result["peak_rss_mb_lifetime"] = {n: round(sum((vm_hwm_kb(p) or 0) for p in s.pids()) / 1024, 1)
                                          for n, s in procs.items()}
        return result
    finally:
        for s in reversed(started):
            s.proc.stop()


def start_envoy_variants(workdir: Path, names: list[str], as_is: C.Started, as_is_port: int, authz_port: int,
                         translator_port: int, concurrency: int, cpus: str | None,
                         started: list[C.Started]) -> dict[str, tuple[int, Proc]]:
    """One Envoy per variant (the already started as-is one included) in front of the same services."""
    unknown = [n for n in names if n not in ENVOY_VARIANTS]
    if unknown:
        raise ValueError(f"unknown Envoy variant(s) {', '.join(unknown)}; known: {', '.join(ENVOY_VARIANTS)}")
    targets: dict[str, tuple[int, Proc]] = {}
    for name in names:
        if name == "as_is":
            targets[name] = (as_is_port, as_is.proc)
            continue
        access_log, variant_concurrency, change = ENVOY_VARIANTS[name]
        port, admin = free_port(), free_port()
        cfg, source = envoy_config.stack_bootstrap(admin_port=admin, port=port, authz_grpc_port=authz_port,
                                                   translator_port=translator_port, access_log=access_log)
        if cfg is None:
            raise RuntimeError(f"the project's Envoy config is not usable: {source}")
        if change is not None:
            change(cfg)
        e = C.start_envoy(cfg, workdir, f"envoy-scale-{name}", variant_concurrency or concurrency, cpus=cpus)
        started.append(e)
        targets[name] = (port, e.proc)
    return targets


def one_run(workdir: Path, n: int, variants: dict[str, tuple[int, Proc]] | None, port: int,
            headers: dict[str, str], body_file: Path, chunks: int, hold_s: float, ramp_s: float,
            procs: dict[str, Proc | ProcGroup]) -> dict:
    names = list(variants or {"as_is": (port, None)})
    # Client k takes streams k, k + clients, ... and sends them to Envoy variant k % len(names): every variant
    # gets the same share, with start times interleaved.
    clients = math.ceil(max(1, math.ceil(n / STREAMS_PER_CLIENT)) / len(names)) * len(names)
    start_ns = time.monotonic_ns() + int(1.5e9)  # all client processes are up and importing by then
    meters = {name: p.cpu_seconds() for name, p in procs.items()}
    envoy_meters = {name: p.cpu_seconds() for name, (_, p) in (variants or {}).items()}
    sched0 = {name: p.sched_s() for name, p in procs.items()}
    t0 = time.monotonic()
    children = []
    for i in range(clients):
        variant = names[i % len(names)]
        delays = workdir / f"delays-{n}-{i}.bin"
        argv = [sys.executable, "-m", "bench.scale_client", "--port",
                str(variants[variant][0] if variants else port), "--headers", json.dumps(headers),
                "--body", str(body_file), "--total", str(n), "--procs", str(clients), "--index", str(i),
                "--start-ns", str(start_ns), "--ramp-s", str(ramp_s), "--chunks", str(chunks),
                "--timeout-s", str(hold_s * 3 + 60), "--delays", str(delays)]
        children.append((subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=base_env(), cwd=C.REPO), delays, variant))
    with RssSampler(procs) as sampler:
        outs = []
        for child, delays, variant in children:
            out, err = child.communicate(timeout=hold_s * 4 + ramp_s + 120)
            if child.returncode != 0:
                raise RuntimeError(f"scale client failed: {err[-2000:]}")
            outs.append((json.loads(out.strip().splitlines()[-1]), delays, variant))
    wall = time.monotonic() - t0
    time.sleep(0.25)
    cpu = {name: round(p.cpu_seconds() - meters[name], 2) for name, p in procs.items()}
    envoy_cpu = {name: p.cpu_seconds() - envoy_meters[name] for name, (_, p) in (variants or {}).items()}
    # Runnable share: (time on a CPU + time waiting for one) / wall time, per process. Near 1 for a
    # single-threaded process means it wanted a whole core all along (saturated); a wait much larger than
    # the run time means the machine was busy with other work.
    sched = {name: [b - a for a, b in zip(sched0[name], p.sched_s())] for name, p in procs.items()}
    all_delays = array.array("i")
    by_variant: dict[str, array.array] = {name: array.array("i") for name in names}
    for _, delays, variant in outs:
        with open(delays, "rb") as fh:
            by_variant[variant].frombytes(fh.read())
        delays.unlink()
    for d in by_variant.values():
        all_delays.extend(d)
    ds = sorted(all_delays)
    ttfb = [x for o, _, _ in outs for x in o["ttfb_ms"]]
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for o, _, _ in outs:
        for k, v in o["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    client_cpu = sum(o["cpu_s"] for o, _, _ in outs)

    def q(p: float, ds: list[int] = ds) -> float | None:
        return round(ds[min(len(ds) - 1, int(p * len(ds)))] / 1000, 2) if ds else None

    per_variant = {}
    for name in envoy_cpu:
        vd = sorted(by_variant[name])
        per_variant[name] = {
            "streams": sum(len(range(i, n, clients)) for i in range(clients) if names[i % len(names)] == name),
            "completed": sum(o["completed"] for o, _, v in outs if v == name), "chunks": len(vd),
            "delay_ms": {"p50": q(0.5, vd), "p99": q(0.99, vd)},
            "envoy_cpu_s": round(envoy_cpu[name], 2),
            "envoy_us_per_chunk": round(envoy_cpu[name] / len(vd) * 1e6, 1) if vd else None}

    per_chunk = {name: round(v / len(ds) * 1e6, 1) if ds else None for name, v in cpu.items()}
    per_chunk["client"] = round(client_cpu / len(ds) * 1e6, 1) if ds else None
    return {
        "loadavg": machine.loadavg()[0], "us_per_chunk": per_chunk, "envoy_variants": per_variant,
        "cpu_wait_s": {name: round(w, 2) for name, (_, w) in sched.items()},
        "translator_runnable_share": round(sum(sched["translator"]) / wall, 2),
        "n": n, "completed": sum(o["completed"] for o, _, _ in outs), "statuses": statuses, "errors": errors,
        "chunks": len(ds), "chunks_expected": n * chunks, "ramp_s": ramp_s, "wall_s": round(wall, 1),
        "delay_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": q(1.0)},
        "ttfb_ms": {"p50": pct(ttfb, 0.5), "p99": pct(ttfb, 0.99)},
        "rss_mb": {name: round(v, 1) for name, v in sampler.peak.items()},
        "cpu_s": cpu, "cpu_cores": {name: round(v / wall, 3) for name, v in cpu.items()},
        "client": {"procs": clients, "cpu_s": round(client_cpu, 2),
                   "cores": round(client_cpu / wall, 3)},
    }
