"""Section 2: the translator, against a fast loopback OpenAI-compatible upstream.

For each body (tiny, Claude-Code-sized) and mode (non-streaming, streaming with ~200 chunks), three points are
measured interleaved: (a) the upstream directly in OpenAI format, (b) the translator, (c) Envoy + ext_authz +
translator. CPU seconds are charged per process, per run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench import bodies, components as C, runner, wrk
from bench.baseline import Tree
from bench.runner import Point, Settings
from bench.upstream import frames_per_stream

LITELLM_STREAM_CONNECTIONS = 2
RESPONSES_MODEL = "openai/gpt-5-codex"  # routed to the Responses backend by default (a Responses-only model)

ANTHROPIC_BETA = ("claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14,"
                  "context-management-2025-06-27")


def run(workdir: Path, settings: Settings, *, connections: int, envoy_concurrency: int, upstream_procs: int,
        chunks: int, sut_cpus: str | None, upstream_cpus: str | None,
        litellm_proxy: bool = True, stream_writes: str = "frame",
        baseline: Tree | None = None, on_ready=None) -> dict:
    policy = workdir / "policy.yaml"
    policy.write_text(C.policy_yaml())
    started: list[C.Started] = []
    try:
        up = C.start_upstream(procs=upstream_procs, chunks=chunks, cpus=upstream_cpus, stream_writes=stream_writes)
        started.append(up)
        fp = C.start_full_path(workdir, policy, up.port, started, name="envoy-full",
                               envoy_concurrency=envoy_concurrency, cpus=sut_cpus)
        tr, authz, envoy, envoy_port, source = fp.translator, fp.ext_authz, fp.envoy, fp.port, fp.config_source
        admin_port = envoy.port
        base: dict = {}
        if baseline is not None:
            # The baseline's translator and ext_authz behind an Envoy with the same (current) configuration.
            bp = C.start_full_path(workdir, policy, up.port, started, name="envoy-baseline",
                                   envoy_concurrency=envoy_concurrency, cpus=sut_cpus, tree=baseline)
            base = {"tr": bp.translator, "authz": bp.ext_authz, "envoy": bp.envoy, "port": bp.port}
        litellm = C.start_litellm_proxy(up.port, workdir, cpus=sut_cpus) if litellm_proxy else None
        if litellm:
            started.append(litellm)

        cc_body, cc_source = bodies.claude_code_body()
        variants = {"tiny": bodies.tiny_body(), "claude_code": cc_body}
        result: dict = {"groups": {}, "bodies": {}, "full_path_envoy_config": source,
                        "connections": connections, "upstream_procs": upstream_procs, "chunks": chunks,
                        "stream_writes": stream_writes,
                        "litellm_stream_connections": min(connections, LITELLM_STREAM_CONNECTIONS)}
        for body_name, body in variants.items():
            for stream in (False, True):
                group = f"{body_name}/{'stream' if stream else 'json'}"
                a_body = with_stream_openai(body, stream)
                b_body = bodies.with_stream(body, stream)
                a_file = workdir / f"{group.replace('/', '_')}_openai.json"
                b_file = workdir / f"{group.replace('/', '_')}_anthropic.json"
                a_file.write_text(json.dumps(a_body[0]))
                b_file.write_text(json.dumps(b_body))
                result["bodies"][group] = {"anthropic_bytes": b_file.stat().st_size,
                                           "openai_bytes": a_file.stat().st_size, "openai_from": a_body[1],
                                           "anthropic_from": cc_source if body_name == "claude_code" else "tiny"}
                path = "/v1/messages?beta=true" if body_name == "claude_code" else "/v1/messages"
                common = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
                if body_name == "claude_code":
                    common["anthropic-beta"] = ANTHROPIC_BETA
                reqs = {
                    "a_direct": wrk.Request(f"http://127.0.0.1:{up.port}/v1/chat/completions", str(a_file),
                                            {"content-type": "application/json",
                                             "authorization": f"Bearer {C.BENCH_KEY}"}),
                    # What the translator sees behind Envoy: the key as a bearer credential.
                    "b_translator": wrk.Request(f"http://127.0.0.1:{tr.port}{path}", str(b_file),
                                                {**common, "authorization": f"Bearer {C.BENCH_KEY}"}),
                    # What Claude Code sends with ANTHROPIC_API_KEY.
                    "c_full": wrk.Request(f"http://127.0.0.1:{envoy_port}{path}", str(b_file),
                                          {**common, "x-api-key": C.BENCH_KEY}),
                }
                if base:
                    reqs["B_translator"] = wrk.Request(f"http://127.0.0.1:{base['tr'].port}{path}", str(b_file),
                                                       {**common, "authorization": f"Bearer {C.BENCH_KEY}"})
                    reqs["C_full"] = wrk.Request(f"http://127.0.0.1:{base['port']}{path}", str(b_file),
                                                 {**common, "x-api-key": C.BENCH_KEY})
                if stream:
                    # The same request on the Responses API backend (a Responses-only model by its routing
                    # default); the upstream answers /responses with the same number of text deltas.
                    r_file = workdir / f"{group.replace('/', '_')}_anthropic_responses.json"
                    r_file.write_text(json.dumps({**b_body, "model": RESPONSES_MODEL}))
                    reqs["b_responses"] = wrk.Request(f"http://127.0.0.1:{tr.port}{path}", str(r_file),
                                                      {**common, "authorization": f"Bearer {C.BENCH_KEY}"})
                procs = {
                    "B_translator": {"translator": base["tr"].proc, "upstream": up.proc} if base else {},
                    "C_full": {"envoy": base["envoy"].proc, "ext_authz": base["authz"].proc,
                               "translator": base["tr"].proc, "upstream": up.proc} if base else {},
                    "a_direct": {"upstream": up.proc},
                    "b_translator": {"translator": tr.proc, "upstream": up.proc},
                    "c_full": {"envoy": envoy.proc, "ext_authz": authz.proc, "translator": tr.proc,
                               "upstream": up.proc},
                }
                if "b_responses" in reqs:
                    procs["b_responses"] = {"translator": tr.proc, "upstream": up.proc}
                if litellm:
                    # The LiteLLM proxy server in front of the same upstream, its master key as Claude Code
                    # would send a key (x-api-key).
                    reqs["l_litellm"] = wrk.Request(f"http://127.0.0.1:{litellm.port}{path}", str(b_file),
                                                    {**common, "x-api-key": C.LITELLM_MASTER_KEY})
                    procs["l_litellm"] = {"litellm": litellm.proc, "upstream": up.proc}
                # Each baseline point right after its current counterpart (and right before it in the reversed
                # repetitions: ABBA), so the two of a pair see the same machine.
                order = ("a_direct", "b_translator", "B_translator", "b_responses", "c_full", "C_full", "l_litellm")
                reqs = {k: reqs[k] for k in order if k in reqs}
                probes = {k: probe(r, stream) for k, r in reqs.items()}
                points = [Point(key=f"{group}/{k}", request=r, connections=connections, procs=procs[k])
                          for k, r in reqs.items()]
                for p in points:
                    if p.key.endswith("/l_litellm") and stream:
                        # A 200-chunk stream costs the LiteLLM proxy ~100x the translator's CPU: at c16 one
                        # takes seconds and a run of a few seconds completes none. Fewer connections and at
                        # least 5 s keep in-flight requests (charged, not counted) a small share.
                        p.connections = min(connections, LITELLM_STREAM_CONNECTIONS)
                        p.min_duration_s, p.settle_s = 5.0, 1.0
                runner.log(f"[translator] {group}: {len(points)} points x {settings.runs} runs x "
                           f"{settings.duration_s:.0f}s")
                samples = runner.run_interleaved(points, settings)
                a, b, c = (samples[f"{group}/{k}"] for k in ("a_direct", "b_translator", "c_full"))
                result["groups"][group] = {
                    "points": {k: runner.summarize(samples[f"{group}/{k}"]) for k in reqs},
                    "probes": probes,
                    "translator_over_direct": runner.paired_ratio(a, b, lambda s: s.rps),
                    "full_over_translator": runner.paired_ratio(b, c, lambda s: s.rps),
                    # Is the upstream the bottleneck? Its CPU use while serving the translator, as a share of
                    # one core, and its own direct capacity.
                    "upstream_busy_during_b": runner.median(
                        [s.cpu_s["upstream"] / settings.duration_s for s in b]),
                }
                if "l_litellm" in reqs:
                    lp = samples[f"{group}/l_litellm"]
                    result["groups"][group]["litellm"] = {
                        "litellm_over_direct": runner.paired_ratio(a, lp, lambda s: s.rps),
                        # CPU per request, keyrelay / LiteLLM proxy (target <= 1/50 for the translator).
                        "translator_cpu_over_litellm": runner.paired_ratio(
                            lp, b, runner.cpu_per_request("translator"), runner.cpu_per_request("litellm")),
                        "full_cpu_over_litellm": runner.paired_ratio(
                            lp, c, full_path_cpu_per_request, runner.cpu_per_request("litellm")),
                    }
                if stream:
                    frames = frames_per_stream(chunks)
                    result["groups"][group]["translator_cpu_us_per_chunk"] = runner.median(
                        [s.cpu_s["translator"] / (s.requests * frames) * 1e6 for s in b if s.requests])
                    # Per text delta on both paths (the Responses stream frames each delta the same way, plus
                    # 8 lifecycle events instead of 3), side by side in the same run.
                    r = samples[f"{group}/b_responses"]
                    per_delta = lambda s: s.cpu_s["translator"] / (s.requests * max(chunks, 1)) * 1e6  # noqa: E731
                    result["groups"][group]["responses_cpu_us_per_delta"] = runner.median(
                        [per_delta(s) for s in r if s.requests])
                    result["groups"][group]["chat_cpu_us_per_delta"] = runner.median(
                        [per_delta(s) for s in b if s.requests])
                    result["groups"][group]["responses_over_chat_cpu"] = runner.paired_ratio(
                        [s for s in b], [s for s in r], lambda s: per_delta(s) if s.requests else 0.0)
                if base:
                    result["groups"][group]["baseline"] = compare_baseline(
                        b, samples[f"{group}/B_translator"], c, samples[f"{group}/C_full"],
                        frames_per_stream(chunks) if stream else None)
        if baseline is not None:
            result["baseline"] = {"label": baseline.label, "peak_rss_mb": {
                name: {str(pid): round(mb, 1) for pid, mb in base[name].proc.peak_rss_mb().items()}
                for name in ("tr", "authz")}}
        result["envoy_connection_reuse"] = envoy_reuse(admin_port)
        result["peak_rss_mb"] = {name: {str(pid): round(mb, 1) for pid, mb in s.proc.peak_rss_mb().items()}
                                 for name, s in (("translator", tr), ("ext_authz", authz), ("envoy", envoy),
                                                 ("upstream", up)) + ((("litellm", litellm),) if litellm else ())}
        if on_ready is not None:  # stream cost and profiling reuse the running upstream and translator
            result.update(on_ready(up=up, tr=tr, workdir=workdir, variants=variants, partial=result))
        return result
    finally:
        for s in reversed(started):
            s.proc.stop()


def full_path_cpu_per_request(s: runner.Sample) -> float:
    """Envoy + ext_authz + translator CPU seconds per request of a full-path sample."""
    return sum(s.cpu_s[p] for p in ("envoy", "ext_authz", "translator")) / s.requests if s.requests else float("nan")


def compare_baseline(b: list[runner.Sample], bb: list[runner.Sample], c: list[runner.Sample],
                     cb: list[runner.Sample], frames: int | None) -> dict:
    """Current against baseline, each ratio the median of per-repetition ratios (current / baseline; below 1
    is better): translator CPU per request alone and on the full path, and per upstream chunk for streams."""
    out = {}
    for label, cur, old in (("translator", b, bb), ("full", c, cb)):
        procs = ("translator",) if label == "translator" else ("translator", "ext_authz", "envoy")
        for proc in procs:
            metric = runner.cpu_per_request(proc)
            out[f"{label}/{proc}"] = {"current_ms": runner.median([metric(s) * 1000 for s in cur]),
                                      "baseline_ms": runner.median([metric(s) * 1000 for s in old]),
                                      "ratio": runner.paired_ratio(old, cur, metric)}
        out[f"{label}/rps"] = {"current": runner.median([s.rps for s in cur]),
                               "baseline": runner.median([s.rps for s in old]),
                               "ratio": runner.paired_ratio(old, cur, lambda s: s.rps)}
    if frames:
        per_chunk = lambda s: s.cpu_s["translator"] / (s.requests * frames) * 1e6 if s.requests else float("nan")  # noqa: E731
        out["translator/us_per_chunk"] = {"current_us": runner.median([per_chunk(s) for s in b]),
                                          "baseline_us": runner.median([per_chunk(s) for s in bb]),
                                          "ratio": runner.paired_ratio(bb, b, per_chunk)}
    return out


def envoy_reuse(admin_port: int) -> dict[str, float | None]:
    """Requests per connection on the full path's Envoy: downstream (wrk) and to the translator."""
    _, body = C.request(f"http://127.0.0.1:{admin_port}/stats", None, {}, method="GET")
    stats = dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)

    def ratio(rq: str, cx: str) -> float | None:
        try:
            return round(int(stats[rq]) / int(stats[cx]), 1)
        except (KeyError, ValueError, ZeroDivisionError):
            return None

    return {"downstream": ratio("http.keyrelay.downstream_rq_total", "http.keyrelay.downstream_cx_total"),
            "to_translator": ratio("cluster.translator.upstream_rq_total", "cluster.translator.upstream_cx_total")}


def with_stream_openai(body: dict, stream: bool) -> tuple[dict, str]:
    return bodies.openai_equivalent(bodies.with_stream(body, stream), C.UPSTREAM_MODEL)


def probe(req: wrk.Request, stream: bool) -> dict:
    """Send the point's request once and check it is answered as it should be (never measure errors)."""
    body = Path(req.body_file).read_bytes() if req.body_file else None
    status, data = C.request(req.url, body, req.headers, req.method)
    info: dict = {"status": status, "bytes": len(data), "sha256_12": hashlib.sha256(data).hexdigest()[:12]}
    if status != 200:
        raise RuntimeError(f"probe {req.url} -> {status}: {data[:300]!r}")
    is_openai = "/chat/completions" in req.url
    if stream:
        if is_openai:
            info["upstream_frames"] = data.count(b"data: ")
            ok = b"data: [DONE]" in data
        else:
            info["content_block_deltas"] = C.count_sse_events(data, "content_block_delta")
            ok = b"event: message_stop" in data and info["content_block_deltas"] > 0
    else:
        doc = C.json_or_none(data) or {}
        ok = doc.get("object") == "chat.completion" if is_openai else doc.get("type") == "message"
    if not ok:
        raise RuntimeError(f"probe {req.url}: unexpected answer {data[:300]!r}")
    return info
