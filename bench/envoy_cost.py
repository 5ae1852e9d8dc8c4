"""Section 5 (`--only envoy`): where Envoy's share of the full path's CPU goes.

The same translator and ext_authz behind several Envoys, measured interleaved with the Claude-Code-sized body
(non-streaming and streaming): the project's envoy.yaml as is, the same without the access log, and the same
with one worker thread. Each variant's Envoy CPU per request against the as-is one tells what that part
costs. With `perf` on the machine (and the rights to use it), a CPU profile of the as-is Envoy under the
non-streaming load gives its time by shared object (Envoy itself, the kernel's network stack, libc) and the
top symbols.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

from bench import bodies, components as C, envoy_config, runner, wrk
from bench.procs import free_port
from bench.runner import Point, Settings
from bench.translator_path import ANTHROPIC_BETA, probe

# name -> (render the access log, Envoy --concurrency or None for the run's default)
VARIANTS = {"as_is": (True, None), "no_access_log": (False, None), "one_worker": (True, 1)}


def run(workdir: Path, settings: Settings, *, connections: int, envoy_concurrency: int, chunks: int,
        sut_cpus: str | None) -> dict:
    policy = workdir / "policy.yaml"
    policy.write_text(C.policy_yaml())
    started: list[C.Started] = []
    try:
        up = C.start_upstream(chunks=chunks, cpus=sut_cpus)
        started.append(up)
        tr = C.start_translator(up.port, cpus=sut_cpus)
        started.append(tr)
        authz = C.start_ext_authz(policy, workers=1, cpus=sut_cpus)
        started.append(authz)
        envoys: dict[str, tuple[C.Started, int]] = {}
        for name, (access_log, concurrency) in VARIANTS.items():
            port, admin = free_port(), free_port()
            cfg, source = envoy_config.stack_bootstrap(admin_port=admin, port=port, authz_grpc_port=authz.port,
                                                       translator_port=tr.port, access_log=access_log)
            if cfg is None:
                raise RuntimeError(f"the project's Envoy config is not usable: {source}")
            e = C.start_envoy(cfg, workdir, f"envoy-{name}", concurrency or envoy_concurrency, cpus=sut_cpus)
            started.append(e)
            envoys[name] = (e, port)
        body, _ = bodies.claude_code_body()
        headers = {"content-type": "application/json", "anthropic-version": "2023-06-01",
                   "anthropic-beta": ANTHROPIC_BETA, "x-api-key": C.BENCH_KEY}
        result: dict = {"variants": {k: {"access_log": v[0], "concurrency": v[1] or envoy_concurrency}
                                     for k, v in VARIANTS.items()}, "groups": {}}
        for stream in (False, True):
            group = f"claude_code/{'stream' if stream else 'json'}"
            f = workdir / f"envoy_cost_{group.replace('/', '_')}.json"
            f.write_text(json.dumps(bodies.with_stream(body, stream)))
            points = []
            for name, (e, port) in envoys.items():
                req = wrk.Request(f"http://127.0.0.1:{port}/v1/messages?beta=true", str(f), headers)
                probe(req, stream)
                points.append(Point(key=f"{group}/{name}", request=req, connections=connections,
                                    procs={"envoy": e.proc, "ext_authz": authz.proc, "translator": tr.proc}))
            runner.log(f"[envoy] {group}: {len(points)} points x {settings.runs} runs x {settings.duration_s:.0f}s")
            samples = runner.run_interleaved(points, settings)
            base = samples[f"{group}/as_is"]
            envoy_cpu = runner.cpu_per_request("envoy")
            result["groups"][group] = {
                name: {**runner.summarize(samples[f"{group}/{name}"]),
                       "envoy_cpu_ratio": runner.paired_ratio(base, samples[f"{group}/{name}"], envoy_cpu)}
                for name in envoys}
            for v in result["groups"][group].values():
                v.pop("runs", None)
        e, port = envoys["as_is"]
        result["stats"] = envoy_stats(e.port)
        if shutil.which("perf"):
            f = workdir / "envoy_cost_claude_code_json.json"
            req = wrk.Request(f"http://127.0.0.1:{port}/v1/messages?beta=true", str(f), headers)
            result["perf"] = perf_profile(e.proc.pid, req, connections, max(3.0, settings.duration_s), workdir)
        return result
    finally:
        for s in reversed(started):
            s.proc.stop()


def envoy_stats(admin_port: int) -> dict[str, float | None]:
    """Per-request figures from the as-is Envoy's own counters (all its runs)."""
    _, body = C.request(f"http://127.0.0.1:{admin_port}/stats", None, {}, method="GET")
    stats = dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)

    def num(key: str) -> float:
        try:
            return float(stats.get(key, "0"))
        except ValueError:
            return 0.0

    rq = num("http.keyrelay.downstream_rq_total") or float("nan")
    return {
        "requests": rq,
        "downstream_requests_per_connection": rq / (num("http.keyrelay.downstream_cx_total") or float("nan")),
        "translator_requests_per_connection": num("cluster.translator.upstream_rq_total") /
        (num("cluster.translator.upstream_cx_total") or float("nan")),
        "ext_authz_checks_per_request": num("cluster.ext_authz.upstream_rq_total") / rq,
        "kb_received_per_request": num("http.keyrelay.downstream_cx_rx_bytes_total") / rq / 1024,
        "kb_sent_per_request": num("http.keyrelay.downstream_cx_tx_bytes_total") / rq / 1024,
    }


def perf_profile(pid: int, req: wrk.Request, connections: int, duration_s: float, workdir: Path) -> dict:
    """`perf record` of Envoy while wrk drives it; its samples by shared object and the top symbols."""
    data = workdir / "envoy.perf.data"
    rec = subprocess.Popen(["perf", "record", "-q", "-F", "499", "-p", str(pid), "-o", str(data), "--",
                            "sleep", str(duration_s)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    load = threading.Thread(target=wrk.run, args=(req,), kwargs={"connections": connections,
                                                                   "duration_s": duration_s + 1})
    load.start()
    _, err = rec.communicate(timeout=duration_s + 60)
    load.join()
    if rec.returncode != 0 or not data.exists():
        return {"error": (err or "perf record failed").strip()[-300:]}

    def report(sort: str, limit: int) -> list[tuple[str, float]]:
        out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort,
                              "--percent-limit", "1"], capture_output=True, text=True, timeout=120).stdout
        rows = []
        for line in out.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "%" not in line.split()[0]:
                continue
            pct, rest = line.split(None, 1)
            rows.append((rest.strip()[:90], float(pct.rstrip("%"))))
        return rows[:limit]

    return {"by_dso": report("dso", 8), "top_symbols": report("dso,sym", 15)}
