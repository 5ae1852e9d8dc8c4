"""A client's request body, from the ASGI `receive` to a validated request, within the request limits.

- `read_body`: the raw bytes, 413 over the body limit (checked on content-length and while reading).
- `decode_request`: JSON object -> structural caps (messages, content blocks, images) -> the pydantic model;
  every failure a 400 invalid_request_error (413 request_too_large for a cap), never FastAPI's 422.

Why two ways of decoding: small bodies (nearly all) are parsed with orjson and validated in one pydantic call on
the event loop, the cheapest path. A large body (over `OFFLOAD_BYTES`) would hold the event loop for seconds
that way (measured on this project's 2-core machine for a 32 MB body with 100,000 messages: orjson 0.4-1.5 s,
pydantic 2 s, conversion 0.5 s, each holding the GIL in one call), so it is decoded in a worker thread in small
steps: the standard library's C scanner parses one array element at a time (messages, content blocks, system
and tool entries) from a Python loop, and pydantic validates the messages in slices; between two steps the
interpreter can hand the GIL back to the event loop, so other requests wait for one step, not the whole body.
The caps are counted while parsing, so an oversized request is refused before all of it is built.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import orjson
from pydantic import TypeAdapter, ValidationError

from translator.errors import ApiError
from translator.repeated_tools import MIN_BYTES as REPEATED_MIN_BYTES
from translator.repeated_tools import PLACEHOLDER, CachedTools, Entry, RepeatedTools
from translator.schemas.anthropic import IMAGE_COUNT, Message, describe_validation_error, validate_or_400

OFFLOAD_BYTES = 1024 * 1024  # bodies larger than this are decoded in a worker thread, in steps
_SLICE = 500  # messages validated per pydantic call on the stepwise path


class ClientGone(Exception):
    """The client disconnected before its request body was complete (nothing to answer)."""


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int
    max_messages: int
    max_content_blocks: int
    max_images: int

    @classmethod
    def from_settings(cls, s: Any) -> "RequestLimits":
        return cls(s.max_body_bytes, s.max_messages, s.max_content_blocks, s.max_images)


def lower_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    # Starlette's Headers are already case-insensitive; a plain dict is cheaper for repeated lookups.
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "request_too_large", f"request body exceeds the {limit} byte limit")


async def read_body(headers: Mapping[str, str], receive: Callable[[], Awaitable[dict]], limit: int) -> bytes:
    """The raw request body from the ASGI `receive`; 413 over `limit` (checked on content-length and while
    reading, for chunked bodies). `headers` has lower-case names."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise ApiError(400, "invalid_request_error", "invalid content-length header") from None
    first = b""
    parts: list[bytes] | None = None
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone()
        part = message.get("body", b"")
        if part:
            size += len(part)
            if size > limit:
                raise _too_large(limit)
            if not first:
                first = part
            else:
                if parts is None:
                    parts = [first]
                parts.append(part)
        if not message.get("more_body", False):
            break
    return b"".join(parts) if parts is not None else first


def parse_json_object(raw: bytes) -> dict:
    """The body as a JSON object, or 400 invalid_request_error saying what is wrong with it."""
    if not raw.strip():
        raise ApiError(400, "invalid_request_error", "request body is empty; expected a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_request_error", f"request body is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request_error", "request body must be a JSON object")
    return data


# ------------------------------------------------------------------ caps


class _Counter:
    __slots__ = ("limits", "messages", "blocks", "images")

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.messages = self.blocks = self.images = 0

    def message(self, _: Any = None) -> None:
        self.messages += 1
        if self.messages > self.limits.max_messages:
            raise ApiError(413, "request_too_large",
                           f"request has more than {self.limits.max_messages} messages")

    def block(self, block: Any) -> None:
        self.blocks += 1
        if self.blocks > self.limits.max_content_blocks:
            raise ApiError(413, "request_too_large",
                           f"request has more than {self.limits.max_content_blocks} content blocks")
        if isinstance(block, dict) and block.get("type") == "image":
            self.images += 1
            if self.images > self.limits.max_images:
                raise ApiError(413, "request_too_large", f"request has more than {self.limits.max_images} images")
        if isinstance(block, dict) and isinstance(block.get("content"), list):  # tool_result blocks nest blocks
            for inner in block["content"]:
                self.block(inner)


def check_caps(data: dict, limits: RequestLimits) -> None:
    """413 request_too_large when the request has more messages, content blocks or images than allowed."""
    counter = _Counter(limits)
    messages = data.get("messages")
    if not isinstance(messages, list):
        return  # validation names the problem
    for m in messages:
        counter.message()
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            for block in content:
                counter.block(block)
    system = data.get("system")
    if isinstance(system, list):
        for block in system:
            counter.block(block)


def _needs_counting(limits: RequestLimits) -> bool:
    """Whether a small body must be counted for the message and block caps: the smallest message or block is
    more than 16 bytes of JSON, so a body under OFFLOAD_BYTES cannot exceed caps at or above OFFLOAD_BYTES / 16
    (the defaults); lower configured caps are counted. Images are counted during validation (`IMAGE_COUNT`):
    scanning a 70 KB body for them cost ~50-90 µs, more than a tenth of such a request's CPU."""
    return limits.max_messages < OFFLOAD_BYTES // 16 or limits.max_content_blocks < OFFLOAD_BYTES // 16


# ------------------------------------------------------------------ the stepwise path (large bodies)

_WS = re.compile(r"[ \t\n\r]*")
_DEEP = frozenset({"messages", "content", "system", "tools"})  # values parsed element by element


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_scan_once = _decoder.scan_once
_scanstring = json.decoder.scanstring


class _BadJSON(Exception):
    pass


def _next_item(s: str, i: int, close: str) -> tuple[bool, int]:
    """After a member or element: (True, after `close`) at the end of the container, (False, after the comma)."""
    i = _WS.match(s, i).end()
    c = s[i:i + 1]
    if c == close:
        return True, i + 1
    if c != ",":
        raise _BadJSON()
    return False, i + 1


def _parse(s: str, i: int, depth: int, key: str = "", counter: "_Counter | None" = None) -> tuple[Any, int]:
    """One JSON value at `s[i:]`: objects and arrays down to `depth` levels (under the `_DEEP` keys) are walked
    here element by element, everything below is one call of the C scanner. Elements of `messages` and
    `content` arrays are counted as they are parsed, so a request far over a cap is refused early."""
    i = _WS.match(s, i).end()
    c = s[i:i + 1]
    if depth > 0 and c == "{":
        obj: dict[str, Any] = {}
        i = _WS.match(s, i + 1).end()
        if s[i:i + 1] == "}":
            return obj, i + 1
        while True:
            if s[i:i + 1] != '"':
                raise _BadJSON()
            name, i = _scanstring(s, i + 1)
            i = _WS.match(s, i).end()
            if s[i:i + 1] != ":":
                raise _BadJSON()
            obj[name], i = _parse(s, i + 1, depth - 1 if name in _DEEP else 0, name, counter)
            closed, i = _next_item(s, i, "}")
            if closed:
                return obj, i
            i = _WS.match(s, i).end()
    if depth > 0 and c == "[":
        arr: list[Any] = []
        i = _WS.match(s, i + 1).end()
        if s[i:i + 1] == "]":
            return arr, i + 1
        count = None
        if counter is not None:
            count = counter.message if key == "messages" else counter.block if key == "content" else None
        while True:
            value, i = _parse(s, i, depth - 1, "", counter)
            arr.append(value)
            if count is not None:
                count(None)
            closed, i = _next_item(s, i, "]")
            if closed:
                return arr, i
    try:
        return _scan_once(s, i)
    except StopIteration:
        raise _BadJSON() from None


def _parse_stepwise(raw: bytes, limits: RequestLimits) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_request_error", "request body is not valid JSON (invalid UTF-8)") from None
    try:
        # top object -> messages array -> message object -> content array -> blocks (one scanner call each)
        data, end = _parse(text, 0, 4, "", _Counter(limits))
    except (_BadJSON, ValueError, RecursionError):
        raise ApiError(400, "invalid_request_error", "request body is not valid JSON") from None
    if _WS.match(text, end).end() != len(text):
        raise ApiError(400, "invalid_request_error", "request body is not valid JSON (data after the object)")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request_error", "request body must be a JSON object")
    return data


_MESSAGES = TypeAdapter(list[Message])


def _validate_stepwise(model: type, data: dict) -> Any:
    messages = data.get("messages")
    if not isinstance(messages, list) or len(messages) <= _SLICE:
        return validate_or_400(model, data)
    req = validate_or_400(model, {**data, "messages": []})
    out: list[Message] = []
    for start in range(0, len(messages), _SLICE):
        try:
            out += _MESSAGES.validate_python(messages[start:start + _SLICE])
        except ValidationError as exc:
            text = describe_validation_error(exc)
            # Locations are relative to the slice: name the message as the client numbered it.
            text = re.sub(r"^\[(\d+)\]|(?<=; )\[(\d+)\]",
                          lambda m: f"messages[{int(m.group(1) or m.group(2)) + start}]", text)
            raise ApiError(400, "invalid_request_error", text) from None
    req.messages = out
    return req


def _decode_large(raw: bytes, model: type, limits: RequestLimits) -> tuple[dict, Any]:
    data = _parse_stepwise(raw, limits)
    check_caps(data, limits)
    return data, _validate_stepwise(model, data)


_RELEASE_STEP = 2000  # list items freed per event-loop iteration
_releasing: set[asyncio.Task] = set()


def release_stepwise(*lists: Any) -> None:
    """Free large lists (a large request's messages, decoded and converted) a slice per event-loop iteration
    instead of all at once: freeing 90,000 decoded messages and their pydantic models in one go held the loop for
    ~120 ms (measured). Call it when the last other reference is about to go; not-lists are ignored."""
    lists = tuple(x for x in lists if isinstance(x, list) and x)
    if not lists:
        return
    task = asyncio.get_running_loop().create_task(_release(lists))
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)


async def _release(lists: tuple[list, ...]) -> None:
    for items in lists:
        while items:
            del items[-_RELEASE_STEP:]
            await asyncio.sleep(0)


async def decode_request(raw: bytes, model: type, limits: RequestLimits,
                         repeated: RepeatedTools | None = None) -> tuple[dict, Any]:
    """(the JSON object, the validated `model`) of a request body; ApiError 400/413 otherwise. `repeated`: tool
    definitions decoded before (translator.repeated_tools), used and learned from when given."""
    if len(raw) > OFFLOAD_BYTES:
        return await asyncio.to_thread(_decode_large, raw, model, limits)
    if len(raw) < REPEATED_MIN_BYTES:  # too small to hold a tools text worth keeping
        repeated = None
    if repeated is not None:
        hit = repeated.split(raw)
        if hit is not None:
            decoded = _decode_with(hit[0], hit[1], model, limits, repeated)
            if decoded is not None:
                return decoded
    data = parse_json_object(raw)
    req = _validate_small(data, model, limits)
    if repeated is not None:
        repeated.learn(raw, data.get("tools"), getattr(req, "tools", None))
    return data, req


def _validate_small(data: dict, model: type, limits: RequestLimits) -> Any:
    if _needs_counting(limits):
        check_caps(data, limits)
    images = [0]
    token = IMAGE_COUNT.set(images)
    try:
        req = validate_or_400(model, data)
    finally:
        IMAGE_COUNT.reset(token)
    if images[0] > limits.max_images:
        raise ApiError(413, "request_too_large", f"request has more than {limits.max_images} images")
    return req


def _decode_with(rest: bytes, entry: Entry, model: type, limits: RequestLimits,
                 repeated: RepeatedTools) -> tuple[dict, Any] | None:
    """A body whose tools text is cached, decoded from the rest of it (`RepeatedTools.split`); None when the
    cached text was not its top-level tools value, or the body is refused (then the usual way decodes it again
    and says why, exactly as without the cache)."""
    try:
        data = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or data.get("tools") != PLACEHOLDER:
        return None
    data["tools"] = entry.value  # (in its place: the object keeps the body's key order)
    try:
        req = _validate_small({k: v for k, v in data.items() if k != "tools"}, model, limits)
    except ApiError:
        return None
    req.tools = CachedTools(entry, repeated)  # validated when the entry was made; the list is this request's own
    return data, req
