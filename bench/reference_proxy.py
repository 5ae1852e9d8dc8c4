"""A LiteLLM-based single-process reference proxy, for calibrating the translator targets.

The issue states its translator targets as ratios to the direct upstream and quotes "a LiteLLM-based
single-process reference proxy" at about 2.6% (non-streaming) and 1.7% (streaming) on its setup. How hard a
ratio target is depends on how fast the upstream is, so the bench measures such a reference in the same runs:
FastAPI + uvicorn, one process, `litellm.acompletion` per request, the same shape as the popular single-process
proxy this project started from. It is a yardstick only, not part of keyrelay.

    python -m bench.reference_proxy --port P --upstream http://127.0.0.1:U/v1
"""



import argparse
import json
import os
import uuid

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def build_app(upstream: str, model: str):
    import litellm
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    from bench.bodies import simple_openai_equivalent

    app = FastAPI()

    def sse(event: str, data: dict) -> str:
        return f"event: {event}\ndata: {json.dumps(data)}\n\n"

    @app.post("/v1/messages")
    async def messages(request: Request):
        body = await request.json()
        oa = simple_openai_equivalent(body, model)
        kwargs = {k: oa[k] for k in ("tools", "max_tokens") if k in oa}
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        if not body.get("stream"):
            resp = await litellm.acompletion(model=f"openai/{model}", messages=oa["messages"], api_base=upstream,
                                             api_key="sk-reference", **kwargs)
            choice = resp.choices[0]
            return JSONResponse({
                "id": mid, "type": "message", "role": "assistant", "model": body.get("model"),
                "content": [{"type": "text", "text": choice.message.content or ""}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": resp.usage.prompt_tokens, "output_tokens": resp.usage.completion_tokens},
            })

        async def events():
            stream = await litellm.acompletion(model=f"openai/{model}", messages=oa["messages"], api_base=upstream,
                                               api_key="sk-reference", stream=True,
                                               stream_options={"include_usage": True}, **kwargs)
            yield sse("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": body.get("model"), "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}})
            yield sse("content_block_start", {"type": "content_block_start", "index": 0,
                                              "content_block": {"type": "text", "text": ""}})
            out_tokens = 0
            async for chunk in stream:
                if getattr(chunk, "usage", None):
                    out_tokens = chunk.usage.completion_tokens or out_tokens
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    yield sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                        "type": "text_delta", "text": chunk.choices[0].delta.content}})
            yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                          "stop_sequence": None},
                                        "usage": {"output_tokens": out_tokens}})
            yield sse("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.reference_proxy")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:P/v1")
    ap.add_argument("--model", default="gpt-bench")
    args = ap.parse_args(argv)
    import uvicorn

    app = build_app(args.upstream, args.model)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            print(f"ready: reference proxy on http://127.0.0.1:{args.port}", flush=True)

    Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)).run()


if __name__ == "__main__":
    main()
