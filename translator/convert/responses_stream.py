"""OpenAI Responses API stream events -> Anthropic Messages stream events (pure, incremental; docs/conversion.md).

`ResponsesStreamConverter.feed(event)` takes one parsed event (`data` of an SSE event; its `type` names it) and
returns the Anthropic events it completes; `finish()` closes the message. It is the chat-completions stream
converter fed from Responses events, so the block machinery is one: text and reasoning stream live, tool input
streams as it arrives (function calls are numbered in arrival order, the way chat completions index them),
stop sequences are found in the text (the Responses API takes none, so this is the only place they end the
output), the grammar is Anthropic's.

| Responses event | Anthropic |
|---|---|
| response.output_item.added (reasoning) | a thinking block opens |
| response.reasoning_summary_text.delta | thinking_delta (summary parts separated by a blank line) |
| response.output_item.done (reasoning) | signature_delta carrying the encrypted content, block closes |
| response.output_text.delta / response.refusal.delta | text_delta (a refusal also sets stop_reason refusal) |
| response.output_item.added (function_call) | tool_use block (call_id, name) as soon as it can stream |
| response.function_call_arguments.delta | input_json_delta |
| response.completed / response.incomplete | message_delta (stop_reason, usage), message_stop |
| the stream ends without either (and no stop sequence ended it) | ApiError raised by `finish()` |
| response.failed / error | ApiError raised (`responses_error` mapping); the caller sends `.error(...)` |

Everything else (created, in_progress, content_part.*, *.done repeats, web_search_call.*) carries nothing new.
"""

from __future__ import annotations

from typing import Any, Mapping

from translator.convert.openai_stream import _TEXT, _THINKING, Event, OpenAIStreamConverter
from translator.convert.responses_request import reasoning_signature
from translator.convert.responses_response import chat_usage, responses_error
from translator.errors import ApiError

__all__ = ["ResponsesStreamConverter"]


class ResponsesStreamConverter(OpenAIStreamConverter):
    __slots__ = ("_calls", "_summary_index", "_failure", "_terminal")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._calls: dict[Any, int] = {}  # output_index -> tool number (0, 1, ... in arrival order)
        self._summary_index = 0
        self._failure: tuple[int, str, str] | None = None
        self._terminal = False  # response.completed / response.incomplete seen

    @property
    def failure(self) -> tuple[int, str, str] | None:
        """(status, type, message) when the upstream reported a failure (response.failed / error)."""
        return self._failure

    def feed(self, event: Mapping[str, Any]) -> list[Event]:  # type: ignore[override]
        out = [] if self._started else self.start()
        if self._done:
            return out
        t = event.get("type")
        if t == "response.output_text.delta":
            text = event.get("delta")
            if text and isinstance(text, str) and not self._cut:
                self._chars += len(text)
                if self._stops is not None:
                    text = self._hold_back(text)
                if text:
                    if self._open == _TEXT and not self._segments:
                        self._delta(_TEXT, text, out)
                    else:
                        self._piece(_TEXT, text, out)
        elif t == "response.function_call_arguments.delta":
            n = self._calls.get(event.get("output_index"))
            delta = event.get("delta")
            if n is not None and delta and isinstance(delta, str) and not self._cut:
                self._tool_calls([{"index": n, "function": {"arguments": delta}}], out)
        elif t == "response.reasoning_summary_text.delta":
            text = event.get("delta")
            if text and isinstance(text, str) and not self._cut:
                self._chars += len(text)
                self._piece(_THINKING, text, out)
        elif t == "response.reasoning_summary_part.added":
            index = event.get("summary_index")
            if isinstance(index, int) and index > 0 and not self._cut:
                self._piece(_THINKING, "\n\n", out)
        elif t == "response.output_item.added":
            self._item_added(event.get("item"), event.get("output_index"), out)
        elif t == "response.output_item.done":
            item = event.get("item")
            if isinstance(item, Mapping) and item.get("type") == "reasoning" and not self._cut:
                enc = item.get("encrypted_content")
                if isinstance(enc, str) and enc:
                    self._signature = reasoning_signature(str(item.get("id") or ""), enc)
                if self._open == _THINKING and not self._segments:
                    self._close(out)
        elif t == "response.refusal.delta":
            text = event.get("delta")
            if text and isinstance(text, str) and not self._cut:
                self._refused = True
                self._chars += len(text)
                self._piece(_TEXT, text, out)
        elif t in ("response.completed", "response.incomplete"):
            self._terminal = True
            resp = event.get("response")
            resp = resp if isinstance(resp, Mapping) else {}
            self._usage = chat_usage(resp.get("usage"))
            if t == "response.incomplete":
                details = resp.get("incomplete_details")
                reason = details.get("reason") if isinstance(details, Mapping) else None
                self._finish_reason = "content_filter" if reason == "content_filter" else "length"
            else:
                self._finish_reason = "tool_calls" if self._calls else "stop"
            self._flush(out)
        elif t in ("response.failed", "error"):
            err = event.get("error") if t == "error" else (event.get("response") or {}).get("error")
            if t == "error" and err is None:
                err = event
            status, kind, message = self._failure = responses_error(err)
            # The caller turns this into the stream's `error` event (`.error`), as for any failure mid-stream.
            raise ApiError(status, kind, message, upstream=True)
        return out

    def finish(self) -> list[Event]:
        """As the chat converter's; but a Responses stream always ends with a terminal event, so one that ended
        without it (and without a stop sequence having ended the output) was cut: an ApiError, not a made-up
        stop_reason."""
        if not self._terminal and not self._cut and not self._done:
            raise ApiError(502, "api_error", "upstream responses stream ended before its final event", upstream=True)
        return super().finish()

    def _item_added(self, item: Any, output_index: Any, out: list[Event]) -> None:
        if not isinstance(item, Mapping) or self._cut:
            return
        kind = item.get("type")
        if kind == "reasoning":
            # Each reasoning item is its own thinking block (its own signature), even with an empty summary.
            self._summary_index = 0
            if self._open != 0 and not self._segments:
                self._close(out)
            if not self._segments and self._open == 0:
                self._start_block({"type": "thinking", "thinking": "", "signature": ""}, out)
                self._open = _THINKING
        elif kind == "function_call":
            n = self._calls[output_index] = len(self._calls)
            call = {"index": n, "id": item.get("call_id") or None,
                    "function": {"name": item.get("name") or None, "arguments": item.get("arguments") or None}}
            self._tool_calls([call], out)
