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
