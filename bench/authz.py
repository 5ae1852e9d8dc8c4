"""Section 1: the authz path through real Envoy.

One Envoy with three listeners that all answer the same fixed direct_response: `plain` (router only), `w1`
(ext_authz filter -> keyrelay-ext-authz --workers 1) and `w2` (ext_authz filter -> keyrelay-ext-authz --workers 2).
Both ext_authz instances run side by side so the three listeners are measured interleaved in one run.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import components as C
from bench import envoy_config, runner, wrk
from bench.baseline import Tree
from bench.procs import free_port
from bench.runner import Point, Settings

CONCURRENCIES = (1, 16)
# Budgets on (docs/usage.md#budgets): a 1-worker ext_authz whose policy adds a tenant and a per-key budget that
# are never spent, counted in a local redis-server; measured side by side with w1 (the same without budgets).
BUDGETS_LABEL = "w1budgets"
BUDGETS_POLICY = ("budgets:\n  per_key: {requests_per_minute: 1000000000000}\n"
                  "  tenants:\n    bench: {tokens_per_minute: 1000000000000, tokens_per_day: 1000000000000}\n")


def start_budgeted_ext_authz(workdir: Path, cpus: str | None, started: list) -> C.Started | None:
    """redis-server plus ext_authz (1 worker) with budgets on; None (and a log line) without redis-server."""
    from bench.procs import Proc, base_env, script
    from keyrelay_budgets import REDIS_URL_ENV
    from keyrelay_stack.redis_server import find_redis_server, ping, redis_argv, redis_url

    binary = find_redis_server()
    if binary is None:
        runner.log("[authz] redis-server not found: the budgets-on variant is skipped")
        return None
    redis_port = free_port()
    redis = Proc(redis_argv(binary, redis_port), env=base_env(), name="redis")
    started.append(C.Started(redis, redis_port))
    deadline = time.monotonic() + 10
    while not ping(redis_port):
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    policy = workdir / "policy-budgets.yaml"
    policy.write_text(C.policy_yaml() + BUDGETS_POLICY)
    grpc_port, http_port = free_port(), free_port()
    proc = Proc([script("keyrelay-ext-authz"), "--grpc-addr", f"127.0.0.1:{grpc_port}", "--http-addr",
                 f"127.0.0.1:{http_port}", "--policy", str(policy), "--workers", "1"],
                env=base_env(**{REDIS_URL_ENV: redis_url(redis_port)}), name="ext_authz-budgets",
                cpus=cpus).wait_ready(60)
    return C.Started(proc, grpc_port)


def run(workdir: Path, settings: Settings, *, envoy_concurrency: int, worker_counts: tuple[int, ...],
        sut_cpus: str | None, stack_settings: envoy_config.ExtAuthzSettings,
        profile_to: Path | None = None, baseline: Tree | None = None) -> dict:
    policy = workdir / "policy.yaml"
    policy.write_text(C.policy_yaml())
    started: list[C.Started] = []
    try:
        authz = {}
        for w in worker_counts:
            s = C.start_ext_authz(policy, workers=w, cpus=sut_cpus)
            started.append(s)
            authz[f"w{w}"] = s
        if baseline is not None:  # the baseline tree's ext_authz, 1 worker (bench/baseline.py)
            authz["base"] = C.start_ext_authz(policy, workers=1, cpus=sut_cpus, tree=baseline)
            started.append(authz["base"])
        if "w1" in authz:
            budgeted = start_budgeted_ext_authz(workdir, sut_cpus, started)
            if budgeted is not None:
                started.append(budgeted)
                authz[BUDGETS_LABEL] = budgeted
        ports = {label: (free_port(), s.port) for label, s in authz.items()}
        plain_port, admin_port = free_port(), free_port()
        cfg = envoy_config.authz_bootstrap(admin_port=admin_port, plain_port=plain_port, authz=ports,
                                           settings=stack_settings)
        envoy = C.start_envoy(cfg, workdir, "envoy-authz", envoy_concurrency, cpus=sut_cpus)
        started.append(envoy)

        # GET without a body: Envoy's direct_response answers a POST before reading its body and then closes the
        # connection, so a plain listener would measure TCP connects (one per request) while the authz listeners
        # (whose check lets the body arrive) keep theirs. The check is header-only anyway (no with_request_body).
        headers = {"x-api-key": C.BENCH_KEY}
        listeners = {"plain": plain_port, **{label: port for label, (port, _) in ports.items()}}
        probes = sanity(listeners, headers)

        points = []
        for c in CONCURRENCIES:
            for label, port in listeners.items():
                procs = {"envoy": envoy.proc}
                if label != "plain":
                    procs["ext_authz"] = authz[label].proc
                points.append(Point(key=f"{label}/c{c}", connections=c, procs=procs,
                                    request=wrk.Request(f"http://127.0.0.1:{port}/v1/messages", None, headers,
                                                        method="GET")))
        runner.log(f"[authz] {len(points)} points x {settings.runs} runs x {settings.duration_s:.0f}s")
        samples = runner.run_interleaved(points, settings)

        result: dict = {"points": {k: runner.summarize(v) for k, v in samples.items()}, "ratios": {},
                        "probes": probes, "ext_authz_settings_source": stack_settings.source,
                        "envoy_concurrency": envoy_concurrency}
        for label in authz:
            result["ratios"][label] = {
                "throughput_c16": runner.paired_ratio(samples["plain/c16"], samples[f"{label}/c16"], lambda s: s.rps),
                "added_p50_ms_c1": runner.paired_diff(samples["plain/c1"], samples[f"{label}/c1"],
                                                      lambda s: s.p50_ms),
                "added_p99_ms_c1": runner.paired_diff(samples["plain/c1"], samples[f"{label}/c1"],
                                                      lambda s: s.p99_ms),
            }
        if baseline is not None and "w1" in authz:
            cur, old = "w1", "base"
            cpu = runner.cpu_per_request("ext_authz")
            result["baseline"] = {
                "label": baseline.label,
                "throughput_c16": {"current": result["ratios"][cur]["throughput_c16"],
                                   "baseline": result["ratios"][old]["throughput_c16"],
                                   "ratio": runner.paired_ratio(samples[f"{old}/c16"], samples[f"{cur}/c16"],
                                                                lambda s: s.rps)},
                "added_p50_ms_c1": {"current": result["ratios"][cur]["added_p50_ms_c1"],
                                    "baseline": result["ratios"][old]["added_p50_ms_c1"],
                                    "diff": runner.paired_diff(samples[f"{old}/c1"], samples[f"{cur}/c1"],
                                                               lambda s: s.p50_ms)},
                "ext_authz_cpu_ms_c16": {"current": runner.median([cpu(x) * 1000 for x in samples[f"{cur}/c16"]]),
                                         "baseline": runner.median([cpu(x) * 1000 for x in samples[f"{old}/c16"]]),
                                         "ratio": runner.paired_ratio(samples[f"{old}/c16"], samples[f"{cur}/c16"],
                                                                      cpu)},
            }
        if BUDGETS_LABEL in authz:  # budgets on over budgets off, paired in the same runs
            result["budgets"] = {
                "throughput_c16": runner.paired_ratio(samples["w1/c16"], samples[f"{BUDGETS_LABEL}/c16"],
                                                      lambda s: s.rps),
                "added_p50_ms_c1": runner.paired_diff(samples["w1/c1"], samples[f"{BUDGETS_LABEL}/c1"],
                                                      lambda s: s.p50_ms),
            }
        result["peak_rss_mb"] = {label: {str(pid): round(mb, 1) for pid, mb in s.proc.peak_rss_mb().items()}
                                 for label, s in authz.items()}
        result["peak_rss_mb"]["envoy"] = {str(pid): round(mb, 1) for pid, mb in envoy.proc.peak_rss_mb().items()}
        result["worker_cpu_split"] = {label: worker_split(s) for label, s in authz.items()}
        result["requests_per_connection"] = connection_reuse(admin_port, listeners)
        if profile_to is not None and "w1" in authz:
            from bench import profile
            w1 = next(p for p in points if p.key == "w1/c16")
            runner.log("[profile] ext_authz, 1 worker, c16")
            result["profile"] = profile.record(authz["w1"].proc.pid, w1.request, connections=16,
                                               duration_s=max(4.0, settings.duration_s * 2), out=profile_to)
        return result
    finally:
        for s in reversed(started):
            s.proc.stop()


def worker_split(s: C.Started) -> dict[str, float]:
    """CPU seconds per ext_authz process over its lifetime (shows whether both workers got work)."""
    from bench.procs import cpu_of
    return {str(pid): round(cpu_of(pid), 2) for pid in s.proc.pids()}


def connection_reuse(admin_port: int, listeners: dict[str, int]) -> dict[str, float]:
    """Requests per downstream connection per listener, from Envoy's stats: every listener must reuse its
    connections (wrk keeps them alive), or the comparison measures TCP connects."""
    status, body = C.request(f"http://127.0.0.1:{admin_port}/stats?filter=direct_.*downstream_(cx|rq)_total$",
                             None, {}, method="GET")
    stats = dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
    out = {}
    for label in listeners:
        cx = int(stats.get(f"http.direct_{label}.downstream_cx_total", 0))
        rq = int(stats.get(f"http.direct_{label}.downstream_rq_total", 0))
        out[label] = round(rq / cx, 1) if cx else None
    return out


def sanity(listeners: dict[str, int], headers: dict[str, str]) -> dict:
    """A valid key must pass everywhere (200), and a missing key must be denied on the authz listeners (401):
    otherwise the benchmark would measure something else than the authz path."""
    out = {}
    for label, port in listeners.items():
        url = f"http://127.0.0.1:{port}/v1/messages"
        ok_status, ok_body = C.request(url, None, headers, method="GET")
        no_key = {k: v for k, v in headers.items() if k != "x-api-key"}
        deny_status, deny_body = C.request(url, None, no_key, method="GET")
        out[label] = {"valid_key": ok_status, "no_key": deny_status}
        if ok_status != 200 or ok_body != envoy_config.DIRECT_BODY.encode():
            raise RuntimeError(f"listener {label}: valid key got {ok_status} {ok_body[:200]!r}")
        expected = 200 if label == "plain" else 401
        if deny_status != expected:
            raise RuntimeError(f"listener {label}: request without key got {deny_status} (expected {expected}) "
                               f"{deny_body[:200]!r}")
    return out
