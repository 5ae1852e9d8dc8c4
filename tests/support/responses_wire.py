"""The OpenAI Responses API wire format as documented (platform.openai.com/docs/api-reference/responses and
.../responses-streaming), for scripted upstreams and conversion tests: response objects and the full streamed
event sequence a response produces (response.created, in_progress, output_item.added, content_part.added,
output_text.delta, ..., response.completed), each event with its `sequence_number`.

Every builder's output validates against the official `openai` package's pydantic models (`Response`,
`ResponseStreamEvent`); tests/translator/test_convert_responses.py checks that, so the fixtures cannot drift
from the vendor's shapes.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from tests.support.upstream import Reply


def reasoning(id: str, summary: list[str], encrypted: str | None) -> dict:
    item: dict[str, Any] = {"type": "reasoning", "id": id, "summary": [{"type": "summary_text", "text": s} for s in summary]}
    if encrypted is not None:
        item["encrypted_content"] = encrypted
    return item


def message(id: str, text: str, *, refusal: str | None = None) -> dict:
    content: list[dict] = []
    if text:
        content.append({"type": "output_text", "text": text, "annotations": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": id, "role": "assistant", "status": "completed", "content": content}


def function_call(id: str, call_id: str, name: str, arguments: str) -> dict:
    return {"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": "completed"}


def web_search_call(id: str, query: str) -> dict:
    return {"type": "web_search_call", "id": id, "status": "completed", "action": {"type": "search", "query": query}}


def usage(input_tokens: int, output_tokens: int, cached: int = 0, reasoning_tokens: int = 0) -> dict:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens}


def response(output: list[dict], *, status: str = "completed", usage_: dict | None = None,
             incomplete_reason: str | None = None, error: dict | None = None, model: str = "gpt-5-codex",
             id: str = "resp_0123") -> dict:
    return {
        "id": id, "object": "response", "created_at": 1764979200, "model": model, "status": status,
        "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "error": error, "usage": usage_, "store": False, "instructions": None, "metadata": {},
        "temperature": None, "top_p": None,
    }


def stream_events(output: list[dict], *, status: str = "completed", usage_: dict | None = None,
                  incomplete_reason: str | None = None, error: dict | None = None, pieces: int = 3,
                  split: Any = None) -> list[dict]:
    """The documented event sequence for a response with these output items. Text, summaries and arguments
    are cut into `pieces` deltas (or by `split(text) -> list[str]`)."""
    def cut(text: str) -> list[str]:
        if split is not None:
            return split(text)
        if not text:
            return []
        step = max(1, -(-len(text) // pieces))
        return [text[i:i + step] for i in range(0, len(text), step)]

    events: list[dict] = []

    def emit(kind: str, **data: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **data})

    head = response([], status="in_progress", usage_=None)
    emit("response.created", response=head)
    emit("response.in_progress", response=head)
    for oi, item in enumerate(output):
        kind = item["type"]
        if kind == "reasoning":
            emit("response.output_item.added", output_index=oi,
                 item={"type": "reasoning", "id": item["id"], "summary": []})
            for si, s in enumerate(item["summary"]):
                emit("response.reasoning_summary_part.added", item_id=item["id"], output_index=oi, summary_index=si,
                     part={"type": "summary_text", "text": ""})
                for d in cut(s["text"]):
                    emit("response.reasoning_summary_text.delta", item_id=item["id"], output_index=oi,
                         summary_index=si, delta=d)
                emit("response.reasoning_summary_text.done", item_id=item["id"], output_index=oi, summary_index=si,
                     text=s["text"])
                emit("response.reasoning_summary_part.done", item_id=item["id"], output_index=oi, summary_index=si,
                     part={"type": "summary_text", "text": s["text"]})
        elif kind == "message":
            emit("response.output_item.added", output_index=oi,
                 item={**item, "status": "in_progress", "content": []})
            for ci, part in enumerate(item["content"]):
                empty = {"type": "output_text", "text": "", "annotations": []} if part["type"] == "output_text" \
                    else {"type": "refusal", "refusal": ""}
                emit("response.content_part.added", item_id=item["id"], output_index=oi, content_index=ci, part=empty)
                if part["type"] == "output_text":
                    for d in cut(part["text"]):
                        emit("response.output_text.delta", item_id=item["id"], output_index=oi, content_index=ci,
                             delta=d, logprobs=[])
                    emit("response.output_text.done", item_id=item["id"], output_index=oi, content_index=ci,
                         text=part["text"], logprobs=[])
                else:
                    for d in cut(part["refusal"]):
                        emit("response.refusal.delta", item_id=item["id"], output_index=oi, content_index=ci, delta=d)
                    emit("response.refusal.done", item_id=item["id"], output_index=oi, content_index=ci,
                         refusal=part["refusal"])
                emit("response.content_part.done", item_id=item["id"], output_index=oi, content_index=ci, part=part)
        elif kind == "function_call":
            emit("response.output_item.added", output_index=oi,
                 item={**item, "arguments": "", "status": "in_progress"})
            for d in cut(item["arguments"]):
                emit("response.function_call_arguments.delta", item_id=item["id"], output_index=oi, delta=d)
            emit("response.function_call_arguments.done", item_id=item["id"], output_index=oi,
                 arguments=item["arguments"], name=item["name"])
        elif kind == "web_search_call":
            emit("response.output_item.added", output_index=oi, item={**item, "status": "in_progress"})
            emit("response.web_search_call.in_progress", item_id=item["id"], output_index=oi)
            emit("response.web_search_call.searching", item_id=item["id"], output_index=oi)
            emit("response.web_search_call.completed", item_id=item["id"], output_index=oi)
        emit("response.output_item.done", output_index=oi, item=item)
    final = response(output, status=status, usage_=usage_, incomplete_reason=incomplete_reason, error=error)
    emit({"completed": "response.completed", "incomplete": "response.incomplete",
          "failed": "response.failed"}[status], response=final)
    return events


def sse(events: Iterable[dict]) -> list[str]:
    """SSE frames as the Responses API sends them: `event: <type>` and `data: <json>` (no [DONE])."""
    return [f"event: {e['type']}\ndata: {json.dumps(e)}" for e in events]


def stream_reply(events: Iterable[dict], **kw: Any) -> Reply:
    return Reply(sse=sse(events), headers={"content-type": "text/event-stream"}, **kw)
