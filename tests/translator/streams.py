"""One streamed /v1/messages call whose raw SSE is checked against Anthropic's grammar and then rebuilt by the
official SDK's accumulator (the same bytes: one upstream turn per call)."""

from __future__ import annotations

import anthropic
import httpx

from tests.translator.test_convert_stream import check_grammar, sdk_final_message
from translator.sse import SSEDecoder


def checked_stream(url: str, key: str, body: dict) -> tuple[list[tuple[str, dict]], anthropic.types.Message]:
    r = httpx.post(f"{url}/v1/messages", headers={"x-api-key": key}, json={**body, "stream": True}, timeout=30)
    assert r.status_code == 200, r.text
    events = [(e.event, e.json()) for e in SSEDecoder().feed(r.content)]
    check_grammar([e for e in events if e[0] != "ping"])
    return events, anthropic.types.Message.model_validate(sdk_final_message(r.content))
