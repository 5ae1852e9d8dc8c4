"""Bounded measurement of the translator's own CPU cost (not a test; numbers go to docs/translator.md).

    .venv/bin/python -m tests.translator.perf_probe
    .venv/bin/python -m tests.translator.perf_probe --stall   # /healthz latency during one 32 MB request

Runs the console script as a real process in front of the scripted loopback upstream and reads the process's
CPU time from /proc before and after: per non-streaming request, per streamed chunk, on the native OpenAI
path and on the LiteLLM path (LiteLLM's `hosted_vllm/` provider speaks the same OpenAI wire format to the
same upstream, so the two paths are compared on identical traffic). Also cold start (spawn -> ready line)
with and without LiteLLM preloaded. Every loop is bounded in count.
"""

from __future__ import annotations

import os
import tempfile
import time

import httpx
import orjson

from tests.support.procs import Proc, base_env, free_port, script
from tests.support.upstream import ScriptedUpstream, openai_completion, openai_stream_text

TICK = os.sysconf("SC_CLK_TCK")
KEY = "sk-perf-probe-0001"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def start(upstream: ScriptedUpstream, *extra: str, routes: str | None = None) -> tuple[Proc, str, float]:
    port = free_port()
    argv = [script("keyrelay-translator"), "--port", str(port), *extra]
    if routes:
        argv += ["--routes", routes]
    t0 = time.perf_counter()
    proc = Proc(argv, env=base_env(OPENAI_BASE_URL=upstream.url + "/v1", TRANSLATOR_LOG_LEVEL="warning"))
    proc.wait_ready(120)
    return proc, f"http://127.0.0.1:{port}", time.perf_counter() - t0


def measure(url: str, pid: int, model: str, upstream: ScriptedUpstream, requests: int, streams: int,
            chunks: int) -> dict[str, float]:
    body = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(headers={"x-api-key": KEY}, timeout=60) as c:
        for _ in range(20):  # warm up (imports, connection pools)
            upstream.push(openai_completion("warm"))
            c.post(f"{url}/v1/messages", json=body).raise_for_status()
        c0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        for _ in range(requests):
            upstream.push(openai_completion("hello there"))
            c.post(f"{url}/v1/messages", json=body).raise_for_status()
        per_request = (cpu_seconds(pid) - c0) / requests
        wall_request = (time.perf_counter() - t0) / requests
        pieces = [f"w{i} " for i in range(chunks)]
        c0 = cpu_seconds(pid)
        for _ in range(streams):
            upstream.push(openai_stream_text(pieces))
            with c.stream("POST", f"{url}/v1/messages", json={**body, "stream": True}) as r:
                r.raise_for_status()
                for _ in r.iter_bytes():
                    pass
        stream_cpu = (cpu_seconds(pid) - c0) / streams
    per_chunk = max(0.0, stream_cpu - per_request) / chunks
    return {"cpu_ms_per_request": per_request * 1000, "wall_ms_per_request": wall_request * 1000,
            "cpu_ms_per_stream": stream_cpu * 1000, "cpu_ms_per_chunk": per_chunk * 1000}


def healthz_stall(url: str, upstream: ScriptedUpstream, messages: int = 30_000, text_bytes: int = 1000,
                  blocks: int = 1) -> dict:
    """/healthz latency (max and p50, polled back to back) while one large accepted request (~32 MB: `messages`
    messages of `text_bytes` each) is read, decoded, converted and sent upstream."""
    import threading

    msgs = [{"role": "user" if i % 2 == 0 else "assistant",
             "content": [{"type": "text", "text": "x" * text_bytes}] * blocks} for i in range(messages)]
    body = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": msgs})
    upstream.push(openai_completion("big"))
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                c.get(f"{url}/healthz").raise_for_status()
                latencies.append(time.perf_counter() - t0)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/messages", content=body, headers={"x-api-key": KEY, "content-type": "application/json"},
                   timeout=120)
    wall = time.perf_counter() - t0
    done.set()
    poller.join()
    latencies.sort()
    return {"request_mb": round(len(body) / 1e6, 1), "status": r.status_code, "request_s": round(wall, 2),
            "healthz_max_ms": round(latencies[-1] * 1000, 1),
            "healthz_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1), "polls": len(latencies)}


def main() -> None:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    if "--stall" in os.sys.argv:
        with ScriptedUpstream() as up:
            proc, url, _ = start(up)
            try:
                for _ in range(2):
                    print("healthz during one 32 MB request:", healthz_stall(url, up))
                    print("healthz during 90,000 messages of 300 bytes:",
                          healthz_stall(url, up, messages=90_000, text_bytes=300))
                    print("healthz during a 29.7 MB request of 1.1M content blocks (refused, 413):",
                          healthz_stall(url, up, messages=1100, text_bytes=1, blocks=1000))
            finally:
                proc.stop()
        return
    with ScriptedUpstream() as up, tempfile.TemporaryDirectory() as tmp:
        proc, url, cold = start(up)
        try:
            print(f"cold start (spawn -> ready), LiteLLM not imported: {cold:.2f} s")
            native = measure(url, proc.popen.pid, "claude-sonnet-4-5", up, requests=300, streams=5, chunks=2000)
            print("native OpenAI path:", {k: round(v, 4) for k, v in native.items()})
        finally:
            proc.stop()
        # The LiteLLM path (routing rule -> hosted_vllm/, LiteLLM's generic OpenAI-compatible provider).
        routes_up = os.path.join(tmp, "routes.yaml")
        with open(routes_up, "w") as fh:
            fh.write(f"version: 1\nrules:\n  - match: perf-litellm\n    target: hosted_vllm/gpt-test\n"
                     f"    base_url: {up.url}/v1\n")
        proc, url, cold = start(up, "--preload-litellm", "true", routes=routes_up)
        try:
            print(f"cold start (spawn -> ready), LiteLLM preloaded: {cold:.2f} s")
            metrics = httpx.get(f"{url}/metrics").text
            imp = [line for line in metrics.splitlines() if line.startswith("keyrelay_translator_litellm_import")]
            print("litellm import:", imp)
            lite = measure(url, proc.popen.pid, "perf-litellm", up, requests=100, streams=3, chunks=1000)
            print("LiteLLM path:", {k: round(v, 4) for k, v in lite.items()})
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
