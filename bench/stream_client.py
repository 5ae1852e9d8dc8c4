"""Baseline clients for the streaming-cost comparison, run in a fresh process each:

    python -m bench.stream_client --url URL --body FILE --streams N --mode httpx|litellm

- httpx: read the upstream's SSE stream with httpx and json.loads every data line: the least a Python
  process must do per chunk; the translator's CPU per chunk is compared with this.
- litellm: the same stream through litellm.acompletion(stream=True) (informational: LiteLLM's stream wrapper).

Prints one JSON line: {"mode", "streams", "frames", "cpu_s", "us_per_frame", "frames_per_cpu_s"}. CPU time is
time.process_time() around the loop only (imports, connection set-up and one warm-up stream excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from bench.upstream import frames_per_stream


async def httpx_loop(url: str, body: bytes, streams: int) -> tuple[int, float]:
    import httpx

    frames = 0
    async with httpx.AsyncClient(timeout=30) as client:
        async def one() -> int:
            n = 0
            async with client.stream("POST", url, content=body,
                                     headers={"content-type": "application/json",
                                              "authorization": "Bearer sk-bench"}) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        data = line[6:]
                        n += 1
                        if data != "[DONE]":
                            json.loads(data)
            return n

        await one()  # warm-up: connection, first-use imports
        t0 = time.process_time()
        for _ in range(streams):
            frames += await one()
        return frames, time.process_time() - t0


async def litellm_loop(url: str, body: bytes, streams: int, frames_per_stream: int) -> tuple[int, float]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    req = json.loads(body)
    base = url.rsplit("/chat/completions", 1)[0]

    async def one() -> int:
        n = 0
        resp = await litellm.acompletion(model=f"openai/{req['model']}", messages=req["messages"], stream=True,
                                         api_base=base, api_key="sk-bench",
                                         stream_options={"include_usage": True})
        async for _chunk in resp:
            n += 1
        return n

    await one()
    t0 = time.process_time()
    for _ in range(streams):
        await one()
    # The wrapper merges or drops frames ([DONE], the usage chunk), so charge per upstream frame, as for httpx.
    return streams * frames_per_stream, time.process_time() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.stream_client")
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--mode", choices=["httpx", "litellm"], default="httpx")
    ap.add_argument("--frames-per-stream", type=int, default=frames_per_stream(200),
                    help="upstream frames per stream (litellm mode; default: those of 200 chunks)")
    args = ap.parse_args(argv)
    body = open(args.body, "rb").read()
    if args.mode == "httpx":
        frames, cpu = asyncio.run(httpx_loop(args.url, body, args.streams))
    else:
        frames, cpu = asyncio.run(litellm_loop(args.url, body, args.streams, args.frames_per_stream))
    print(json.dumps({"mode": args.mode, "streams": args.streams, "frames": frames, "cpu_s": cpu,
                      "us_per_frame": cpu / frames * 1e6 if frames else None,
                      "frames_per_cpu_s": frames / cpu if cpu else None}))


if __name__ == "__main__":
    main()
