"""OpenAI chat completion chunks -> Anthropic Messages stream events (pure, incremental; docs/conversion.md).

`OpenAIStreamConverter.feed(chunk)` takes one parsed chunk (a plain dict) and returns the Anthropic events it
completes, as `(event_name, data)` pairs; `finish()` closes the message. The grammar produced is exactly
Anthropic's: message_start, then content blocks one at a time (content_block_start, deltas,
content_block_stop, indexes 0, 1, 2, ...), then message_delta (stop_reason, stop_sequence, usage) and
message_stop.

Ordering and tool calls:
- Text and reasoning stream live (text_delta / thinking_delta), each kind in its own block.
- A tool call streams live: its block starts as soon as its id and name are known (and no lower OpenAI `index`
  can still come first), and its arguments go out as input_json_delta while they arrive, each piece checked
  by `json_prefix.ObjectPrefix` so the client never receives bytes that cannot become a JSON object. The block
  closes when the object is complete. Anything that arrives meanwhile for another call, or text, waits in
  arrival order and follows as soon as the open call completes: calls that really interleave are buffered,
  calls that come one after another (the common case) are not, and text between two calls keeps its place.
- A call whose arguments do not start as a JSON object is held until the choice finishes and normalized like a
  non-streamed response (`parse_tool_arguments`); a live call cut short (length limit, invalid continuation)
  is completed with the shortest closing text (`ObjectPrefix.closing`), so every tool block holds a JSON object.
- Stop sequences: with `stop_sequences`, text that could be the start of one is held back (at most the longest
  sequence's length) until it is known not to be; a sequence found in the text ends the output there
  (stop_reason stop_sequence), whether or not the backend named it.

Hot path: a text delta while a text block is open costs a few dict lookups and one small dict per event; no
pydantic, no copies.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from translator.convert.call_ids import client_id_for_call
from translator.convert.json_prefix import ObjectPrefix
from translator.convert.openai_response import (
    SYNTHETIC_SIGNATURE,
    map_finish_reason,
    map_usage,
    parse_tool_arguments,
)
from translator.ids import new_message_id, new_tool_use_id

Event = tuple[str, dict[str, Any]]

_NONE, _TEXT, _THINKING, _TOOL = 0, 1, 2, 3


class _Tool:
    __slots__ = ("id", "name", "args", "order", "call", "json", "sent", "index")

    def __init__(self, order: tuple[int, int]) -> None:
        self.order = order  # (OpenAI index, arrival): tool blocks are emitted in this order
        self.id: str | None = None
        self.name: str | None = None
        self.args: list[str] = []
        self.call: dict[str, Any] = {}  # the first chunk's call object (thought signature fields)
        self.json: ObjectPrefix | None = None  # set while the call streams live
        self.sent = False  # an input_json_delta went out
        self.index = -1  # its block index once started

    def complete(self) -> bool:
        """The live block can close: the object is complete, or it broke after some input was sent (what
        follows is not forwarded). A call broken before sending anything waits for the end of the choice."""
        j = self.json
        return j is not None and (j.done or (j.broken and self.sent))


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
        "_live",
        "_next_index",
        "_tools",
        "_segments",
        "_stops",
        "_held",
        "_cut",
        "_finish_reason",
        "_matched_stop",
        "_usage",
        "_chars",
        "_signature",
        "_tool_blocks",
        "_tool_names",
        "_refused",
        "_arrivals",
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
        self._open = _NONE  # kind of the block currently open (text / thinking / tool)
        self._live: _Tool | None = None  # the tool call whose block is open
        self._next_index = 0  # a call with a higher OpenAI index waits (a lower one may still come)
        self._tools: dict[int, _Tool] = {}
        self._segments: list[Any] = []  # waiting, in arrival order: _Tool or [kind, [pieces]]
        self._stops = [s for s in stop_sequences if s] if stop_sequences else None
        self._held = ""  # text held back: it may be the start of a stop sequence
        self._cut = False  # a stop sequence was found in the text: the output ends there
        self._finish_reason: str | None = None
        self._matched_stop: str | None = None
        self._usage: dict[str, Any] | None = None
        self._chars = 0  # for an output-token estimate when the backend reports no usage
        self._signature: str | None = None
        self._tool_blocks = 0
        self._refused = False
        self._arrivals = 0

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
        if delta and not self._cut:  # (a dict; a malformed non-dict chunk is the caller's 502, see the server)
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                self._chars += len(reasoning)
                self._piece(_THINKING, reasoning, out)
            text = delta.get("content")
            if text and self._stops is not None:
                self._chars += len(text)
                text = self._hold_back(text)
                if text:
                    self._piece(_TEXT, text, out)
            elif text:
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
        if self._cut:
            stop_reason, stop_sequence = "stop_sequence", self._matched_stop
        elif (
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

    @property
    def stopped(self) -> bool:
        """A stop sequence was found in the text: nothing after it will be emitted (the caller may stop
        reading the upstream)."""
        return self._cut

    def error(self, type: str, message: str) -> Event:
        """An `error` event for a failure after the stream started (never a made-up stop_reason)."""
        self._done = True
        return ("error", {"type": "error", "error": {"type": type, "message": message}})

    # ------------------------------------------------------------------ blocks

    def _close(self, out: list[Event]) -> None:
        if self._open == _TOOL:
            self._close_tool(out)
            return
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

    def _hold_back(self, text: str) -> str:
        """The part of `text` that can go out now: up to a stop sequence found in it (the output ends there),
        else all but a tail that may be the start of a stop sequence (held for the next piece)."""
        s = self._held + text
        stops = self._stops
        assert stops is not None
        first = -1
        for seq in stops:
            at = s.find(seq)
            if at != -1 and (first == -1 or at < first):
                first, self._matched_stop = at, seq
        if first != -1:
            self._cut = True
            self._held = ""
            return s[:first]
        keep = 0  # the longest tail of s that is a proper prefix of a sequence
        n = len(s)
        for seq in stops:
            first_char = seq[0]
            i = s.find(first_char, max(0, n - len(seq) + 1))
            while i != -1 and n - i > keep:  # leftmost candidate first: the longest tail
                if seq.startswith(s[i:]):
                    keep = n - i
                    break
                i = s.find(first_char, i + 1)
        self._held = s[n - keep:] if keep else ""
        return s[: len(s) - keep]

    def _piece(self, kind: int, text: str, out: list[Event]) -> None:
        """Text or reasoning that does not continue the open block."""
        if self._segments or self._open == _TOOL:
            last = self._segments[-1] if self._segments else None
            if isinstance(last, list) and last[0] == kind:
                last[1].append(text)
            else:
                self._segments.append([kind, [text]])
            self._advance(out)
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
                self._arrivals += 1
                tool = tools[i] = _Tool((i if isinstance(i, int) else 1 << 30, self._arrivals))
                self._segments.append(tool)
            if cid and not tool.id:
                tool.id = cid
                tool.call = call
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
                    if tool is self._live:
                        self._send_args(tool, args, out)
        self._advance(out)

    def _advance(self, out: list[Event]) -> None:
        """Close the live call once complete, then emit what waits, in arrival order, until something must
        wait again (a call still receiving arguments, or one whose id/name is unknown or whose lower-index
        sibling may still come)."""
        while True:
            live = self._live
            if live is not None:
                if not live.complete():
                    return
                self._close_tool(out)
            segments = self._segments
            if not segments:
                return
            head = segments[0]
            if isinstance(head, _Tool):
                tool = min((t for t in segments if isinstance(t, _Tool)), key=_order)
                if tool.id is None or tool.name is None or tool.order[0] > self._next_index:
                    return
                segments.remove(tool)
                self._open_tool(tool, out)
            else:
                segments.pop(0)
                kind, pieces = head
                self._piece(kind, "".join(pieces), out)

    def _open_tool(self, tool: _Tool, out: list[Event]) -> None:
        if self._open != _NONE:
            self._close(out)
        self._next_index = max(self._next_index, tool.order[0] + 1)
        tool.index = self._start_block(self._tool_block(tool), out)
        self._open = _TOOL
        self._live = tool
        tool.json = ObjectPrefix()
        if tool.args:
            self._send_args(tool, "".join(tool.args), out)

    def _send_args(self, tool: _Tool, args: str, out: list[Event]) -> None:
        j = tool.json
        assert j is not None
        if j.broken:
            return
        n = j.feed(args)
        if n and j.started:
            piece = args[:n] if n < len(args) else args
            if not tool.sent:
                piece = piece.lstrip()
            if piece:
                tool.sent = True
                out.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": tool.index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                )

    def _close_tool(self, out: list[Event]) -> None:
        tool = self._live
        assert tool is not None and tool.json is not None
        if tool.sent:
            tail = tool.json.closing()
        else:  # nothing usable streamed: the whole arguments, normalized like a non-streamed response
            tail = _tool_input_json("".join(tool.args))
        if tail:
            out.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": tool.index,
                        "delta": {"type": "input_json_delta", "partial_json": tail},
                    },
                )
            )
        out.append(("content_block_stop", {"type": "content_block_stop", "index": tool.index}))
        self._live = None
        self._open = _NONE
        self._tool_blocks += 1

    def _tool_block(self, tool: _Tool) -> dict[str, Any]:
        name = tool.name or ""
        if self._tool_names:
            name = self._tool_names.get(name, name)
        return {
            "type": "tool_use",
            "id": client_id_for_call(tool.id, tool.call) if tool.id else new_tool_use_id(),
            "name": name,
            "input": {},
        }

    def _flush(self, out: list[Event]) -> None:
        """The choice ended: emit held text, close the open block and emit everything waiting, in arrival
        order; calls that waited fill their places in OpenAI index order."""
        if self._held:
            held, self._held = self._held, ""
            self._piece(_TEXT, held, out)
        if self._open != _NONE:
            self._close(out)
        segments, self._segments = self._segments, []
        self._tools = {}
        self._next_index = 0
        tools = sorted((t for t in segments if isinstance(t, _Tool)), key=_order)
        for seg in segments:
            if isinstance(seg, _Tool):
                tool = tools.pop(0)
                if tool.name is None and tool.id is None and not tool.args:
                    continue
                self._emit_tool(tool, out)
            else:
                kind, pieces = seg
                self._piece(kind, "".join(pieces), out)
        if self._open != _NONE:
            self._close(out)

    def _emit_tool(self, tool: _Tool, out: list[Event]) -> None:
        """A call that never streamed live: start, its whole (normalized) arguments, stop."""
        index = self._start_block(self._tool_block(tool), out)
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


def _order(tool: _Tool) -> tuple[int, int]:
    return tool.order
