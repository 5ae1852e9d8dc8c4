"""Section 2: the translator, against a fast loopback OpenAI-compatible upstream.

For each body (tiny, Claude-Code-sized) and mode (non-streaming, streaming with ~200 chunks), three points are
measured interleaved: (a) the upstream directly in OpenAI format, (b) the translator, (c) Envoy + ext_authz +
translator. CPU seconds are charged per process, per run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench import bodies, components as C, envoy_config, runner, wrk
from bench.procs import free_port
from bench.runner import Point, Settings
from bench.upstream import frames_per_stream

RESPONSES_MODEL = "openai/gpt-5-codex"  # routed to the Responses backend by default (a Responses-only model)

ANTHROPIC_BETA = ("claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14,"
                  "context-management-2025-06-27")


def run(workdir: Path, settings: Settings, *, connections: int, envoy_concurrency: int, upstream_procs: int,
        chunks: int, sut_cpus: str | None, upstream_cpus: str | None,
        stack_settings: envoy_config.ExtAuthzSettings, reference: bool = True, stream_writes: str = "frame",
        on_ready=None) -> dict:
    policy = workdir / "policy.yaml"
    policy.write_text(C.policy_yaml())
    started: list[C.Started] = []
    try:
        up = C.start_upstream(procs=upstream_procs, chunks=chunks, cpus=upstream_cpus, stream_writes=stream_writes)
        started.append(up)
        tr = C.start_translator(up.port, cpus=sut_cpus)
        started.append(tr)
        authz = C.start_ext_authz(policy, workers=1, cpus=sut_cpus)
        started.append(authz)
        envoy_port, admin_port = free_port(), free_port()
        cfg, source = envoy_config.stack_bootstrap(admin_port=admin_port, port=envoy_port,
                                                   authz_grpc_port=authz.port, translator_port=tr.port)
        if cfg is None:
            runner.log(f"[translator] full path: {source}; using the bench's own Envoy config")
            cfg = envoy_config.full_bootstrap(admin_port=admin_port, port=envoy_port, authz_grpc_port=authz.port,
                                              translator_port=tr.port, settings=stack_settings)
            source = "bench/envoy_config.full_bootstrap (" + source + ")"
        envoy = C.start_envoy(cfg, workdir, "envoy-full", envoy_concurrency, cpus=sut_cpus)
        started.append(envoy)
        ref = C.start_reference_proxy(up.port, cpus=sut_cpus) if reference else None
        if ref:
            started.append(ref)

        cc_body, cc_source = bodies.claude_code_body()
        variants = {"tiny": bodies.tiny_body(), "claude_code": cc_body}
        result: dict = {"groups": {}, "bodies": {}, "full_path_envoy_config": source,
                        "connections": connections, "upstream_procs": upstream_procs, "chunks": chunks,
                        "stream_writes": stream_writes}
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
                if stream:
                    # The same request on the Responses API backend (a Responses-only model by its routing
                    # default); the upstream answers /responses with the same number of text deltas.
                    r_file = workdir / f"{group.replace('/', '_')}_anthropic_responses.json"
                    r_file.write_text(json.dumps({**b_body, "model": RESPONSES_MODEL}))
                    reqs["b_responses"] = wrk.Request(f"http://127.0.0.1:{tr.port}{path}", str(r_file),
                                                      {**common, "authorization": f"Bearer {C.BENCH_KEY}"})
                procs = {
                    "a_direct": {"upstream": up.proc},
                    "b_translator": {"translator": tr.proc, "upstream": up.proc},
                    "c_full": {"envoy": envoy.proc, "ext_authz": authz.proc, "translator": tr.proc,
                               "upstream": up.proc},
                }
                if "b_responses" in reqs:
                    procs["b_responses"] = {"translator": tr.proc, "upstream": up.proc}
                if ref and body_name == "tiny" and not stream:
                    # Calibration yardstick (bench/reference_proxy.py), non-streaming tiny body only: a stream
                    # through LiteLLM costs ~70 ms CPU here, so at c16 one takes over a second and a run of a
                    # few seconds completes too few for a figure; the streaming-cost table covers LiteLLM.
                    reqs["r_reference"] = wrk.Request(f"http://127.0.0.1:{ref.port}{path}", str(b_file),
                                                      {**common, "authorization": f"Bearer {C.BENCH_KEY}"})
                    procs["r_reference"] = {"reference": ref.proc, "upstream": up.proc}
                probes = {k: probe(r, stream) for k, r in reqs.items()}
                points = [Point(key=f"{group}/{k}", request=r, connections=connections, procs=procs[k])
                          for k, r in reqs.items()]
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
                if "r_reference" in reqs:
                    r = samples[f"{group}/r_reference"]
                    result["groups"][group]["reference_over_direct"] = runner.paired_ratio(a, r, lambda s: s.rps)
                    result["groups"][group]["translator_over_reference"] = runner.paired_ratio(r, b, lambda s: s.rps)
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
        result["envoy_connection_reuse"] = envoy_reuse(admin_port)
        result["peak_rss_mb"] = {name: {str(pid): round(mb, 1) for pid, mb in s.proc.peak_rss_mb().items()}
                                 for name, s in (("translator", tr), ("ext_authz", authz), ("envoy", envoy),
                                                 ("upstream", up)) + ((("reference", ref),) if ref else ())}
        if on_ready is not None:  # stream cost and profiling reuse the running upstream and translator
            result.update(on_ready(up=up, tr=tr, workdir=workdir, variants=variants, partial=result))
        return result
    finally:
        for s in reversed(started):
            s.proc.stop()


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
