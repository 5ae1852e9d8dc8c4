"""Tool definitions seen before, decoded once: a cache from the exact bytes of a request's `tools` array to the
value they parse to and the validated `Tool` models.

Why: Claude Code sends the same tool definitions (two dozen JSON schemas, about 50 KB, 70% of its request body)
on every request of a session, and every developer with the same Claude Code version and MCP servers sends the
same bytes. Parsing and validating them was the largest part of the translator's CPU per such request (counted
in one process on the committed Claude Code fixture, of 2.9 million instructions per request: orjson's parse of
the whole body 0.83 million, pydantic's validation of its tools 0.27 million). Decoding is a pure function of
the bytes, so bytes seen before map to what they decoded to then.

A body uses the cache (`split`): each `"tools":` key in the raw body is looked up by the first KEY_BYTES bytes
of its value; when the whole cached text follows there, that span is replaced by a placeholder string (random
per process) and the rest of the body (a fifth of it) is parsed. Only when the placeholder is then the
top-level `tools` value was the span the top-level tools value: a nested `tools` key, a duplicate key or a key
spelled with an escaped quote leave another value there, and the caller decodes the body the usual way.

An entry is made (`learn`) after a body was decoded and validated the usual way, on the second sighting of the
same tools (by their names and the lengths of their descriptions; a tools array seen once costs nothing more):
the standard library's scanner finds where the top-level value ends, and the entry is decoded again from
exactly those bytes and checked to equal what the body decoded to. That costs about two usual decodings of the
tools, so it is rationed: SCAN_CREDIT scans to start with, one more per request served from the cache (at most
SCAN_CREDIT banked); a client whose tools change on every request with the same names stops costing scans
after that many. Entries are kept for tool texts of MIN_BYTES to MAX_BYTES, at most
MAX_ENTRIES of them and MAX_TOTAL_BYTES (the setting `tools_cache_bytes`) of text and kept conversions' encoded
bytes (what a text decodes to takes a few times its size), least recently used first out; a sighting is
remembered as a hash, at most MAX_SIGHTINGS of them. Whatever fails while an entry is made only leaves it
unmade: the cache never fails a request.

The cached value and `Tool` models are shared by every request that uses them, read-only: the converters build
new objects around them, and what hands them to a library that may change its arguments (LiteLLM) copies them.

An entry also keeps what its tools convert to for a backend (`form`): a request decoded from the cache gets its
tools as a `CachedTools` list, which names its entry, and the backend looks the conversion up by its options (for
chat completions: the backend's caps) instead of converting and encoding the tools again. At most MAX_FORMS per
entry (the least recently used one replaced); their encoded bytes count toward the cache's bytes (an entry's
`size`). A conversion is a pure function of the entry's tools and its key, made the usual way on the first request
that needs it, so it is what that request would have sent anyway; like the entry, it is shared read-only.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator

import orjson
from pydantic import TypeAdapter

from translator.schemas.anthropic import Tool

KEY_BYTES = 256
MIN_BYTES = 4096
MAX_BYTES = 256 * 1024
MAX_ENTRIES = 32
MAX_TOTAL_BYTES = 4 * 1024 * 1024
MAX_FORMS = 4  # conversions kept per entry (one per backend option set the same tools are sent with)
MAX_SIGHTINGS = 256  # tools arrays (a hash of their names and description lengths) remembered as seen once
SCAN_CREDIT = 8
_TRIES = 4  # `"tools"` occurrences looked at per body
_KEY = b'"tools"'
_COLON = re.compile(rb"[ \t\n\r]*:[ \t\n\r]*")
PLACEHOLDER = "keyrelay-cached-tools-" + os.urandom(16).hex()
_PLACEHOLDER_JSON = b'"' + PLACEHOLDER.encode() + b'"'
_TOOLS = TypeAdapter(list[Tool])
_SCANNER = json.JSONDecoder()


@dataclass(slots=True, eq=False)
class Entry:
    text: bytes  # the tools array's JSON text as it was sent
    value: list  # what it parses to
    tools: list[Tool]  # what that validates to
    forms: OrderedDict = field(default_factory=OrderedDict)  # conversion key -> conversion (`form`)
    size: int = 0  # bytes counted toward the cache's bound: the text's and the conversions'


class CachedTools(list):
    """A request's own list of the `Tool` models of a cache entry, naming the entry and its cache (for `form`).
    Replacing a request's tools drops the link with the list."""

    __slots__ = ("entry", "cache")

    def __init__(self, entry: Entry, cache: "RepeatedTools") -> None:
        super().__init__(entry.tools)
        self.entry = entry
        self.cache = cache


class RepeatedTools:
    """One per serving process (used from the event loop only)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._sightings: OrderedDict[int, None] = OrderedDict()
        self._max = max_entries
        self._max_bytes = max_total_bytes
        self._bytes = 0  # of the entries (their `size`)
        self._credit = SCAN_CREDIT  # scans allowed now (`learn`)

    def __len__(self) -> int:
        return len(self._entries)

    def split(self, raw: bytes) -> tuple[bytes, Entry] | None:
        """(`raw` with a cached tools text replaced by the placeholder, its entry), or None when `raw` holds no
        cached tools text. The caller checks that the placeholder is the top-level `tools` value."""
        entries = self._entries
        if not entries:
            return None
        for start in _value_starts(raw):
            prefix = raw[start:start + KEY_BYTES]
            entry = entries.get(prefix)
            if entry is not None and raw.startswith(entry.text, start):
                entries.move_to_end(prefix)
                self._credit = min(SCAN_CREDIT, self._credit + 1)
                view = memoryview(raw)  # (one copy of the rest of the body, not one per piece)
                return b"".join((view[:start], _PLACEHOLDER_JSON, view[start + len(entry.text):])), entry
        return None

    def learn(self, raw: bytes, value: Any, tools: list[Tool] | None) -> None:
        """After `raw` was decoded the usual way (`value`: its top-level tools, `tools`: validated): remember
        them when the same tools were seen before."""
        if not tools or not isinstance(value, list) or len(raw) < MIN_BYTES:
            return
        mark = hash(tuple((t.name, len(t.description or "")) for t in tools))
        if mark not in self._sightings:
            self._sightings[mark] = None
            if len(self._sightings) > MAX_SIGHTINGS:
                self._sightings.popitem(last=False)
            return
        if self._credit <= 0:
            return
        self._credit -= 1
        try:
            text = _span(raw, value)
            if text is None or not MIN_BYTES <= len(text) <= min(MAX_BYTES, self._max_bytes):
                return
            own = orjson.loads(text)  # the entry's own objects, never the request's
            if own != value:
                return
            entry = Entry(text, own, _TOOLS.validate_python(own), size=len(text))
        except Exception:  # noqa: BLE001 - (a scan too deep for the standard library's scanner, ...): no entry
            return
        self._sightings.pop(mark, None)
        key = text[:KEY_BYTES]
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[key] = entry
        self._bytes += entry.size
        self._bound()

    def form(self, entry: Entry, key: Hashable, make: Callable[[], tuple[Any, int]]) -> Any:
        """What `entry`'s tools convert to under `key`: kept, or `make()` -> (conversion, its size in bytes),
        then kept while the entry is cached and the size fits the cache's bound."""
        forms = entry.forms
        hit = forms.get(key)
        if hit is not None:
            forms.move_to_end(key)
            return hit[0]
        value, size = make()
        if self._entries.get(entry.text[:KEY_BYTES]) is entry and entry.size + size <= self._max_bytes:
            if len(forms) >= MAX_FORMS:
                _, (_, dropped) = forms.popitem(last=False)
                entry.size -= dropped
                self._bytes -= dropped
            forms[key] = (value, size)
            entry.size += size
            self._bytes += size
            self._bound()
        return value

    def _bound(self) -> None:
        while len(self._entries) > self._max or self._bytes > self._max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.size


def _value_starts(raw: bytes) -> Iterator[int]:
    """Where the value of each of the first `"tools"` keys in `raw` starts (after the colon); at most _TRIES
    occurrences of the key are looked at."""
    at = 0
    for _ in range(_TRIES):
        at = raw.find(_KEY, at)
        if at < 0:
            return
        at += len(_KEY)
        m = _COLON.match(raw, at)
        if m is not None:
            yield m.end()


def _span(raw: bytes, value: list) -> bytes | None:
    """The JSON text of a `"tools"` value in `raw` that parses to `value`, or None."""
    for start in _value_starts(raw):
        rest = raw[start:].decode("utf-8")
        try:
            found, end = _SCANNER.raw_decode(rest)
        except ValueError:
            continue
        if found == value:
            return rest[:end].encode("utf-8")
    return None
