"""Structured JSON logs on stderr (one object per line). Records carry fingerprints, never keys: callers pass
only key_id and reasons as `extra` fields, and exception logging records the exception type and location but
never its message (a message may quote input)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback

# The x-request-id Envoy sets (or keeps) on every request, as received in the Check request's headers. It comes
# from the client side of Envoy, so it is bounded and escaped before it reaches a log line.
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128  # Envoy's own ids are 36-character UUIDs

_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                out[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _, tb = record.exc_info
            frames = traceback.extract_tb(tb)[-3:]
            out["error"] = exc_type.__name__
            out["where"] = [f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in frames]
        return json.dumps(out, default=str, separators=(",", ":"))


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc/asyncio chatter stays at warning.
    for name in ("asyncio", "grpc"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def request_id(http) -> str:
    """`x-request-id` of an AttributeContext.HttpRequest (`headers` map or raw `header_map`), bounded to
    MAX_REQUEST_ID_LENGTH characters after escaping; "" when absent. Only called when a line is logged, so an
    allowed request at info level never pays for it."""
    if http.HasField("header_map"):
        for entry in http.header_map.headers:
            if entry.key.lower() == REQUEST_ID_HEADER:
                value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
                break
        else:
            return ""
    else:
        value = http.headers.get(REQUEST_ID_HEADER, "")
    return escape(value, MAX_REQUEST_ID_LENGTH)


def escape(value: str, limit: int) -> str:
    """Printable ASCII except the backslash stays as is; anything else becomes a \\xNN / \\uNNNN escape (so an
    escape in the output is always ours); at most `limit` characters."""
    value = value[:limit]
    if value.isascii() and value.isprintable() and "\\" not in value:
        return value
    return "".join(c if c.isascii() and c.isprintable() and c != "\\" else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in value)[:limit]
