"""An upstream body's JSON with a part encoded before: a top-level value that is an `EncodedList` is written as
the bytes it carries instead of being encoded again.

Why: the tool definitions of a Claude-Code-sized request are about 50 KB of the 70 KB sent upstream, and the same
converted tools go out on every request of a session (translator.repeated_tools keeps them converted, with their
encoding). `dumps(body)` is byte for byte `orjson.dumps(body)`: orjson writes an object as `{`, its `"key":value`
items joined by `,`, and `}`, without whitespace, so the object's items before and after the pre-encoded one are
encoded as two objects and joined around it.
"""

from __future__ import annotations

from typing import Any

import orjson


class EncodedList(list):
    """A list that also carries its own orjson encoding (`json`); shared read-only by the requests that use it.
    Anything that does not know it sees a list (orjson encodes it as one)."""

    __slots__ = ("json",)

    def __init__(self, items: list, encoded: bytes | None = None) -> None:
        super().__init__(items)
        self.json = orjson.dumps(items) if encoded is None else encoded


def dumps(body: dict[str, Any], key: str = "tools") -> bytes:
    """`orjson.dumps(body)`, with `body[key]`'s own encoding when it is an `EncodedList`."""
    value = body.get(key)
    if type(value) is not EncodedList:
        return orjson.dumps(body)
    head: dict[str, Any] = {}
    tail: dict[str, Any] = {}
    part = head
    for k, v in body.items():
        if k == key:
            part = tail
        else:
            part[k] = v
    name = orjson.dumps(key)
    parts: list[Any] = [memoryview(orjson.dumps(head))[:-1], b"," if head else b"", name, b":", value.json]
    if tail:
        parts += [b",", memoryview(orjson.dumps(tail))[1:]]
    else:
        parts.append(b"}")
    return b"".join(parts)
