"""OpenAI chat completion chunks -> Anthropic Messages stream events (pure, incremental; docs/conversion.md).

`OpenAIStreamConverter.feed(chunk)` takes one parsed chunk (a plain dict) and returns the Anthropic events it
completes, as `(event_name, data)` pairs; `finish()` closes the message. The grammar produced is exactly
Anthropic's: message_start, then content blocks one at a time (content_block_start, deltas,
content_block_stop, indexes 0, 1, 2, ...), then message_delta (stop_reason, stop_sequence, usage) and
message_stop.

Ordering and tool calls:
- Text and reasoning stream live (text_delta / thinking_delta), each kind in its own block.
- Tool calls are buffered per OpenAI `index` and emitted, each as start + one input_json_delta + stop, when the
  choice finishes (finish_reason) or at `finish()`. That is what makes every case below lossless: name and
  arguments in one chunk, arguments of parallel calls interleaved, the id arriving late, arguments arriving
  before the name, and invalid or truncated JSON (repaired or wrapped, see `parse_tool_arguments`) that an SDK
  accumulator would otherwise fail on. It also spares the client re-parsing a growing JSON buffer per delta.
- Text or reasoning that arrives after the first tool call is kept in order behind the calls (a new block).

Hot path: a text delta while a text block is open costs a few dict lookups and one small dict per event; no
pydantic, no copies.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from translator.convert.openai_response import (
    SYNTHETIC_SIGNATURE,
    map_finish_reason,
    map_usage,
    parse_tool_arguments,
)
from translator.ids import new_message_id, new_tool_use_id

Event = tuple[str, dict[str, Any]]

_NONE, _TEXT, _THINKING = 0, 1, 2


class _Tool:
    __slots__ = ("id", "name", "args", "order")

    def __init__(self, order: tuple[int, int]) -> None:
        self.order = order  # (OpenAI index, arrival): tool blocks are emitted in this order
        self.id: str | None = None
        self.name: str | None = None
        self.args: list[str] = []


def _tool_input_json(raw: str) -> str:
    """The arguments as one input_json_delta: valid JSON objects pass unchanged, anything else is normalized
    the same way as in non-streaming responses. "" means no delta (the block keeps its `{}`)."""
    if not raw or not raw.strip():
        return ""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return raw
    fixed = parse_tool_arguments(raw)
    return json.dumps(fixed, ensure_ascii=False, separators=(",", ":")) if fixed else ""


class OpenAIStreamConverter:
    __slots__ = (
        "model",
        "message_id",
        "input_tokens",
        "stop_sequences",
        "_started",
        "_done",
        "_index",
        "_open",
        "_deferring",
        "_tools",
        "_segments",
        "_finish_reason",
        "_matched_stop",
        "_usage",
        "_chars",
        "_signature",
        "_tool_blocks",
        "_tool_names",
        "_refused",
    )

    def __init__(
        self,
        *,
        model: str,
        message_id: str | None = None,
        input_tokens: int = 0,
        stop_sequences: list[str] | None = None,
        tool_names: Mapping[str, str] | None = None,
    ) -> None:
        self.model = model
        self._tool_names = tool_names or None
        self.message_id = message_id or new_message_id()
        self.input_tokens = input_tokens
        self.stop_sequences = stop_sequences
        self._started = False
        self._done = False
        self._index = -1  # index of the last block started
        self._open = _NONE  # kind of the block currently open (text / thinking); tool blocks never stay open
        self._deferring = False  # a tool call appeared: later text/reasoning queue behind it
        self._tools: dict[int, _Tool] = {}
        self._segments: list[Any] = []  # pending, in arrival order: _Tool or [kind, [pieces]]
        self._finish_reason: str | None = None
        self._matched_stop: str | None = None
        self._usage: dict[str, Any] | None = None
        self._chars = 0  # for an output-token estimate when the backend reports no usage
        self._signature: str | None = None
        self._tool_blocks = 0
        self._refused = False

    # ------------------------------------------------------------------ public

    @property
    def upstream_usage(self) -> dict[str, Any] | None:
        """The last `usage` object the upstream sent (OpenAI streams send it in their final chunk), or None."""
        return self._usage

    @property
    def finish_reason(self) -> str | None:
        """The upstream's finish_reason (`stop`, `length`, `tool_calls`, ...), once a chunk carried one."""
        return self._finish_reason

    @property
    def output_chars(self) -> int:
        """Characters of text, reasoning and tool arguments seen so far (for an estimate without usage)."""
        return self._chars

    def start(self) -> list[Event]:
        """message_start (once). `feed` calls it; the server may call it early (e.g. as soon as the upstream
        answered 200) to get the first bytes out sooner."""
        if self._started:
            return []
        self._started = True
        return [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": self.message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
                    },
                },
            )
        ]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        out = [] if self._started else self.start()
        if self._done:
            return out
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        choices = chunk.get("choices")
        if not choices:
            return out
        choice = choices[0]
        delta = choice.get("delta")
        if delta:  # (a dict; a malformed non-dict chunk is the caller's 502, see the server's stream reader)
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                self._chars += len(reasoning)
                self._piece(_THINKING, reasoning, out)
            text = delta.get("content")
            if text:
                self._chars += len(text)
                if self._open == _TEXT:
                    out.append(
                        (
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": self._index,
                                "delta": {"type": "text_delta", "text": text},
                            },
                        )
                    )
                else:
                    self._piece(_TEXT, text, out)
            else:
                refusal = delta.get("refusal")
                if refusal and isinstance(refusal, str):
                    self._refused = True
                    self._chars += len(refusal)
                    self._piece(_TEXT, refusal, out)
            calls = delta.get("tool_calls")
            if calls:
                self._tool_calls(calls, out)
            else:
                legacy = delta.get("function_call")
                if legacy:
                    self._tool_calls([{"index": 0, "function": legacy}], out)
            blocks = delta.get("thinking_blocks")
            if blocks:
                for b in blocks:
                    if isinstance(b, dict) and b.get("signature"):
                        self._signature = b["signature"]
        finish = choice.get("finish_reason")
        if finish:
            self._finish_reason = finish
            matched = choice.get("stop_reason")
            if isinstance(matched, str):
                self._matched_stop = matched
            self._flush(out)
        return out

    def finish(self) -> list[Event]:
        """Close everything: pending blocks, message_delta (stop_reason, stop_sequence, usage), message_stop."""
        out = [] if self._started else self.start()
        if self._done:
            return out
        self._flush(out)
        self._done = True
        stop_reason = map_finish_reason(self._finish_reason, has_tool_calls=self._tool_blocks > 0)
        if self._refused and stop_reason == "end_turn":
            stop_reason = "refusal"
        stop_sequence = None
        if (
            stop_reason == "end_turn"
            and self._matched_stop is not None
            and self.stop_sequences
            and self._matched_stop in self.stop_sequences
        ):
            stop_reason, stop_sequence = "stop_sequence", self._matched_stop
        if self._usage:
            usage: dict[str, Any] = map_usage(self._usage)
        else:
            usage = {"output_tokens": (self._chars + 3) // 4}
        out.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": usage,
                },
            )
        )
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def error(self, type: str, message: str) -> Event:
        """An `error` event for a failure after the stream started (never a made-up stop_reason)."""
        self._done = True
        return ("error", {"type": "error", "error": {"type": type, "message": message}})

    # ------------------------------------------------------------------ blocks

    def _close(self, out: list[Event]) -> None:
        if self._open == _THINKING:
            out.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self._index,
                        "delta": {
                            "type": "signature_delta",
                            "signature": self._signature or SYNTHETIC_SIGNATURE,
                        },
                    },
                )
            )
            self._signature = None
        out.append(("content_block_stop", {"type": "content_block_stop", "index": self._index}))
        self._open = _NONE

    def _start_block(self, block: dict[str, Any], out: list[Event]) -> int:
        self._index += 1
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self._index, "content_block": block},
            )
        )
        return self._index

    def _piece(self, kind: int, text: str, out: list[Event]) -> None:
        """Text or reasoning that does not continue the open block."""
        if self._deferring:
            last = self._segments[-1] if self._segments else None
            if isinstance(last, list) and last[0] == kind:
                last[1].append(text)
            else:
                self._segments.append([kind, [text]])
            return
        if self._open == kind:
            self._delta(kind, text, out)
            return
        if self._open != _NONE:
            self._close(out)
        if kind == _THINKING:
            self._start_block({"type": "thinking", "thinking": "", "signature": ""}, out)
        else:
            self._start_block({"type": "text", "text": ""}, out)
        self._open = kind
        self._delta(kind, text, out)

    def _delta(self, kind: int, text: str, out: list[Event]) -> None:
        if kind == _TEXT:
            d = {"type": "text_delta", "text": text}
        else:
            d = {"type": "thinking_delta", "thinking": text}
        out.append(("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": d}))

    def _tool_calls(self, calls: list[dict[str, Any]], out: list[Event]) -> None:
        if not self._deferring:
            self._deferring = True
            if self._open != _NONE:
                self._close(out)
        tools = self._tools
        for call in calls:
            if not isinstance(call, dict):
                continue
            i = call.get("index")
            cid = call.get("id")
            if i is None:  # some backends omit the index: match by id, else continue the last call
                i = next((k for k, t in tools.items() if cid and t.id == cid), None)
                if i is None:
                    i = len(tools) if (cid or not tools) else max(tools)
            tool = tools.get(i)
            fn = call.get("function")
            if not isinstance(fn, dict):
                fn = None
            if tool is None or (
                # A new id with a name on an index already in use is a new call (some Gemini adapters put
                # every parallel call at index 0); the same id repeated is the same call.
                cid and tool.id and cid != tool.id and fn and fn.get("name")
            ):
                tool = tools[i] = _Tool((i if isinstance(i, int) else 1 << 30, len(self._segments)))
                self._segments.append(tool)
            if cid and not tool.id:
                tool.id = cid
            if fn:
                name = fn.get("name")
                if name and not tool.name:
                    tool.name = name
                args = fn.get("arguments")
                if args:
                    if not isinstance(args, str):  # a few backends send the object itself
                        args = json.dumps(args, ensure_ascii=False)
                    tool.args.append(args)
                    self._chars += len(args)

    def _flush(self, out: list[Event]) -> None:
        """Close the open block and emit everything pending, in arrival order."""
        if self._open != _NONE:
            self._close(out)
        segments, self._segments = self._segments, []
        self._deferring = False
        self._tools = {}
        tools_done = False
        for seg in segments:
            if isinstance(seg, _Tool):
                # All calls of the turn together, in OpenAI index order (what a non-streamed response lists),
                # where the first one arrived; text that came after a call follows them.
                if tools_done:
                    continue
                tools_done = True
                for tool in sorted((t for t in segments if isinstance(t, _Tool)), key=lambda t: t.order):
                    if tool.name is None and tool.id is None and not tool.args:
                        continue
                    self._emit_tool(tool, out)
            else:
                kind, pieces = seg
                self._piece(kind, "".join(pieces), out)
        if self._open != _NONE:
            self._close(out)

    def _emit_tool(self, tool: _Tool, out: list[Event]) -> None:
        name = tool.name or ""
        if self._tool_names:
            name = self._tool_names.get(name, name)
        index = self._start_block(
            {
                "type": "tool_use",
                "id": tool.id or new_tool_use_id(),
                "name": name,
                "input": {},
            },
            out,
        )
        partial = _tool_input_json("".join(tool.args))
        if partial:
            out.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": partial},
                    },
                )
            )
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        self._tool_blocks += 1
