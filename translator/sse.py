"""Server-sent events: an incremental decoder (upstream OpenAI streams) and the encoder (Anthropic streams).

Why hand-written instead of httpx-sse: httpx-sse decodes line by line on top of httpx's `aiter_lines()` (a str
line splitter, then one Python call per line and per field). The upstream stream is the translator's hot path
(thousands of chunks per long answer), so this decoder works on the raw bytes of `aiter_raw()`/`aiter_bytes()`:
it splits whole events on the blank line with `bytes.split`, takes a fast path for the common single-line
`data: {...}` event, and decodes UTF-8 once per event (so multibyte characters split across reads are safe).
Measured numbers are in docs/conversion.md. It follows the WHATWG event-stream parsing rules: LF, CRLF and CR
line endings (also a CRLF split across two reads), comments (`:` lines), `event:`/`data:`/`id:`/`retry:` fields,
one optional space after the colon, multi-line data joined with "\\n", events without data not dispatched.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["SSEEvent", "SSEDecoder", "EventSplitter", "encode_event", "encode_events", "DONE"]

DONE = "[DONE]"


class SSEEvent:
    """One dispatched event. `event` is "message" when the stream named none; `data` is the joined data text."""

    __slots__ = ("event", "data", "id", "retry")

    def __init__(self, data: str, event: str = "message", id: str | None = None, retry: int | None = None):
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry

    @property
    def is_done(self) -> bool:
        """OpenAI's end-of-stream sentinel (`data: [DONE]`)."""
        return self.data == DONE

    def json(self) -> Any:
        return orjson.loads(self.data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SSEEvent):
            return NotImplemented
        return (self.event, self.data, self.id, self.retry) == (other.event, other.data, other.id, other.retry)

    def __repr__(self) -> str:
        return f"SSEEvent(event={self.event!r}, data={self.data!r}, id={self.id!r}, retry={self.retry!r})"


class EventSplitter:
    """Cuts an SSE byte stream at event boundaries without parsing it (the Anthropic passthrough relays events
    as bytes): `feed(bytes)` returns the complete events those bytes finished (line endings normalized to LF,
    each event ending in a blank line), `flush()` the rest at the end of the stream.

    Linear in the bytes received: the pieces of an unfinished event are kept in a list and joined once, when
    a blank line completes it; a read is searched for the blank line only in its own bytes (and across the
    seam with the previous read).
    """

    __slots__ = ("_pending", "_pending_nl", "_cr", "pending_bytes")

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._pending_nl = False  # the pending bytes end with "\n"
        self._cr = False  # the previous read ended with "\r"
        self.pending_bytes = 0  # size of the unfinished event

    def feed(self, chunk: bytes) -> bytes:
        if self._cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._cr = False
        if not chunk:
            return b""
        if b"\r" in chunk:
            self._cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._pending:
            if b"\n\n" not in chunk and not (self._pending_nl and chunk[:1] == b"\n"):
                self._pending.append(chunk)
                self._pending_nl = chunk[-1:] == b"\n"
                self.pending_bytes += len(chunk)
                return b""
            head = b"".join(self._pending)
            self._pending = []
            self.pending_bytes = 0
            if b"\n\n" in chunk:
                cut = chunk.rfind(b"\n\n") + 2
                out, rest = head + chunk[:cut], chunk[cut:]
            else:  # the blank line straddles the seam: the pending bytes end "\n", the chunk starts "\n"
                out, rest = head + chunk[:1], chunk[1:]
        else:
            cut = chunk.rfind(b"\n\n")
            if cut < 0:
                out, rest = b"", chunk
            else:
                out, rest = chunk[:cut + 2], chunk[cut + 2:]
        if rest:
            self._pending = [rest]
            self._pending_nl = rest[-1:] == b"\n"
            self.pending_bytes = len(rest)
        return out

    def flush(self) -> bytes:
        """An unfinished last event (the stream ended without its blank line), completed; b"" when none."""
        raw = b"".join(self._pending)
        self._pending = []
        self.pending_bytes = 0
        if not raw.strip():
            return b""
        return raw.rstrip(b"\n") + b"\n\n"


class SSEDecoder(EventSplitter):
    """Incremental decoder: `feed(bytes)` returns the events completed by those bytes; `flush()` at end of
    stream dispatches a final event that lacked its blank line (lenient: some servers close right after
    `data: [DONE]\\n`).

    An `EventSplitter` that also parses the events it cuts out. A read that is exactly whole LF-terminated
    events with nothing pending (an upstream flushing one event per write, the usual case) is taken as is: the
    splitter would return the same bytes, and this path runs once per streamed chunk."""

    __slots__ = ("last_event_id",)

    def __init__(self) -> None:
        super().__init__()
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:  # type: ignore[override]
        if not self._pending and not self._cr and chunk[-2:] == b"\n\n" and b"\r" not in chunk:
            buf = chunk
        else:
            buf = EventSplitter.feed(self, chunk)
        if not buf:
            return []
        parts = buf.split(b"\n\n")
        parts.pop()  # `buf` ends with the blank line of its last event
        out: list[SSEEvent] = []
        last_id = self.last_event_id
        for raw in parts:
            # Fast path: one `data: ...` line, no other field (what OpenAI-compatible servers send).
            if raw[:6] == b"data: " and b"\n" not in raw:
                out.append(SSEEvent(raw[6:].decode("utf-8", "replace"), "message", last_id))
                continue
            if not raw:
                continue
            ev = self._parse(raw)
            last_id = self.last_event_id
            if ev is not None:
                out.append(ev)
        return out

    def single_data(self, chunk: bytes) -> bytes | None:
        """The data of `chunk` when it is exactly one event of one `data: ` line (LF-terminated, no other field)
        and nothing is pending, without decoding it (`feed` would return that one event, with this data as
        text); None otherwise, and then `chunk` is still to be fed. The shape a paced upstream's read has: one
        chunk per read, every read of a long answer."""
        if (self._pending or self._cr or chunk[:6] != b"data: " or chunk.find(b"\n") != len(chunk) - 2
                or chunk[-2:] != b"\n\n" or b"\r" in chunk):
            return None
        return chunk[6:-2]

    def flush(self) -> list[SSEEvent]:  # type: ignore[override]
        raw = EventSplitter.flush(self)
        if not raw:
            return []
        ev = self._parse(raw)
        return [ev] if ev is not None else []

    def _parse(self, raw: bytes) -> SSEEvent | None:
        data: list[str] = []
        event = "message"
        retry = None
        for line in raw.decode("utf-8", "replace").split("\n"):
            if not line or line[0] == ":":
                continue
            name, sep, value = line.partition(":")
            if sep and value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value or "message"
            elif name == "id":
                if "\0" not in value:
                    self.last_event_id = value
            elif name == "retry":
                if value.isdigit():
                    retry = int(value)
        if not data:
            return None
        return SSEEvent("\n".join(data), event, self.last_event_id, retry)


_PREFIX: dict[str, bytes] = {}


def _prefix(name: str) -> bytes:
    p = _PREFIX.get(name)
    if p is None:
        if "\n" in name or "\r" in name:
            raise ValueError("SSE event name must be one line")
        p = _PREFIX[name] = b"event: " + name.encode() + b"\ndata: "
    return p


def encode_event(name: str, data: Any) -> bytes:
    """`event: <name>\\ndata: <compact JSON>\\n\\n` (UTF-8, no ASCII escaping: JSON never contains a raw
    newline, so one data line always suffices)."""
    return b"%s%s\n\n" % (_PREFIX.get(name) or _prefix(name), orjson.dumps(data))


def encode_events(events: list[tuple[str, Any]]) -> bytes:
    """Several events as one bytes object (one transport write instead of one per event)."""
    if len(events) == 1:  # the usual case while text streams: one delta per upstream chunk
        name, data = events[0]
        return b"%s%s\n\n" % (_PREFIX.get(name) or _prefix(name), orjson.dumps(data))
    dumps = orjson.dumps
    return b"".join(
        [b"%s%s\n\n" % (_PREFIX.get(name) or _prefix(name), dumps(data)) for name, data in events]
    )
