"""Process logging for the translator: JSON lines on stderr (the field names ext_authz and Envoy's access log
use for the same things), one line per request, written in batches.

Line shape: `{"ts": "2026-01-02T03:04:05.678Z", "level": "info", "logger": ..., "msg": ..., "pid": ..., <fields>}`,
as ext_authz writes it. The request line (`request_fields`, msg `request`) carries request_id (Envoy's
`x-request-id`), key_id, tenant, credential, route, status, duration_ms and the usage fields (docs/usage.md).
Every text that a client or an upstream chose is cut to a bounded length and its control characters are
written as visible `\\uXXXX` escapes (`clean`), so a line can never be split, forged or turn into terminal
control sequences, also after a log viewer decoded the JSON. Exceptions are logged by type and location only,
never with their message (a message may quote input).

Why not a plain `logging.StreamHandler`: it writes and flushes every record, one `write` system call per
request line. py-spy on the translator under load (tiny non-streaming requests) put ~12% of its CPU in that
write alone, more than the upstream call's own socket write. `BatchedStreamHandler` formats each record as
usual and writes what accumulated in one call: when 64 KiB are pending, when a record of level WARNING or
above arrives (errors are never held back), every 0.25 s from a small daemon thread, and at exit
(`logging.shutdown` flushes handlers). A line reaches stderr at most ~0.25 s late.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import traceback
from typing import Any, TextIO

import orjson

QUIET = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "httpcore", "aiohttp.access", "aiohttp.client")

# Attributes every LogRecord has; anything else on a record came in `extra` and becomes a field of the line.
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "taskName"}

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: Any, limit: int = 256) -> str | None:
    """Client- or upstream-chosen text for a log field: at most `limit` characters (a longer text is cut and
    ends in `...`), control characters (C0, DEL, C1, line and paragraph separators) as visible `\\uXXXX`."""
    if type(text) is str and len(text) <= limit and text.isprintable():  # the common case, checked in C
        return text
    if text is None:
        return None
    if not isinstance(text, str):
        text = str(text)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():  # the common case, checked in C: no control or separator character at all
        return text
    return _CONTROL.sub(lambda m: "\\u%04x" % ord(m.group()), text)


_pid = os.getpid()
os.register_at_fork(after_in_child=lambda: globals().__setitem__("_pid", os.getpid()))


# The milliseconds and `Z` of a timestamp, "000Z" to "999Z": formatting the number with `:03d` on every line was
# about half of `JsonFormatter.timestamp`'s time.
_MILLIS = tuple(f"{i:03d}Z" for i in range(1000))


class JsonFormatter(logging.Formatter):
    """One JSON object per record (ext_authz's shape); the timestamp's date part computed once per second
    (`time.strftime` per line was visible in the per-request profile)."""

    _cached: tuple[int, str] = (-1, "")  # (second, its text), replaced as one object: thread-safe

    def __init__(self) -> None:
        super().__init__()
        self._heads: dict[tuple[str, str, int], str] = {}  # (logger, msg, pid) -> the line's encoded middle part

    def timestamp(self, t: float) -> str:
        second = int(t)
        cached_second, text = self._cached
        if second != cached_second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(t))
            self._cached = (second, text)
        ms = int((t - second) * 1000)
        if 0 <= ms < 1000:
            return text + _MILLIS[ms]
        return f"{text}{ms:03d}Z"  # before 1970 only

    def line(self, level: str, logger: str, msg: str, fields: dict[str, Any], t: float, option: int = 0) -> str:
        """The record's JSON text; `option`: orjson options (OPT_APPEND_NEWLINE for a line ready to write)."""
        return orjson.dumps({"ts": self.timestamp(t), "level": level, "logger": logger, "msg": msg, "pid": _pid,
                             **fields}, default=str, option=option).decode()

    def info_line(self, logger: str, msg: str, fields: dict[str, Any], t: float) -> str:
        """The text of `line("info", logger, msg, fields, t, orjson.OPT_APPEND_NEWLINE)`, for a `msg` the code
        chose (a few distinct ones) and `fields` without the line's own keys (ts, level, logger, msg, pid). The
        part between the timestamp and the fields is encoded once per logger and msg, the fields alone per line:
        merging them into one dict for a single `orjson.dumps` was ~15% of the request line's cost."""
        key = (logger, msg, _pid)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= 64:  # bounded, whatever calls this
                self._heads.clear()
            head = self._heads[key] = orjson.dumps({"level": "info", "logger": logger, "msg": msg,
                                                    "pid": _pid}).decode()[1:-1]
        if not fields:
            return f'{{"ts":"{self.timestamp(t)}",{head}}}\n'
        rest = orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE).decode()
        return f'{{"ts":"{self.timestamp(t)}",{head},{rest[1:]}'

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _, tb = record.exc_info
            fields["error"] = exc_type.__name__
            fields["where"] = [f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}"
                               for f in traceback.extract_tb(tb)[-3:]]
        return self.line(record.levelname.lower(), record.name, clean(record.getMessage(), 4096) or "", fields,
                         record.created)


class BatchedStreamHandler(logging.StreamHandler):
    def __init__(self, stream: TextIO | None = None, *, interval_s: float = 0.25,
                 max_pending: int = 64 * 1024) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._size = 0
        self._max = max_pending
        self._interval = interval_s
        self._stop = threading.Event()  # set only by tests; the daemon thread ends with the process
        self._thread = threading.Thread(target=self._flusher, name="log-flush", daemon=True)
        self._thread.start()

    def _flusher(self) -> None:
        while not self._stop.wait(self._interval):
            if self._pending:
                self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)
            return
        self.emit_line(line, urgent=record.levelno >= logging.WARNING)

    def emit_line(self, line: str, *, urgent: bool = False) -> None:
        """A formatted line (with its terminator), buffered; written at once when `urgent` or the buffer is full."""
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
            self._size += len(line)
            full = self._size >= self._max
        if full or urgent:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                text = "".join(self._pending)
                self._pending = []
                self._size = 0
                try:
                    self.stream.write(text)
                except Exception:  # noqa: BLE001 - a closed stderr must not break serving
                    pass
            try:
                if self.stream and hasattr(self.stream, "flush"):
                    self.stream.flush()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        # Flush, and keep the flusher running: logging.config.dictConfig (uvicorn configures its loggers that
        # way) "closes" every existing handler although ours stays attached to the root logger and in use.
        self.flush()
        super().close()


def _sole_batched_handler(logger: logging.Logger) -> BatchedStreamHandler | None:
    """The handler a record of `logger` would reach, if it is exactly one BatchedStreamHandler with our
    formatter and nothing (filters, levels) in the way; else None."""
    found: logging.Handler | None = None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        handlers = node.handlers
        if handlers:
            if found is not None or len(handlers) != 1:
                return None
            found = handlers[0]
        node = node.parent if node.propagate else None  # type: ignore[assignment]
    h = found
    if (type(h) is not BatchedStreamHandler or h.filters or h.level > logging.INFO
            or type(h.formatter) is not JsonFormatter):
        return None
    return h


def request_fields(route: str, method: str, path: str, status: int, duration_s: float,
                   request_id: str | None = None, key_id: str | None = None, tenant: str | None = None,
                   credential: str | None = None, credential_source: str | None = None,
                   requested_model: str | None = None, model: str | None = None, backend: str | None = None,
                   provider: str | None = None, stream: bool = False, tokens: dict[str, Any] | None = None,
                   ttft_s: float | None = None, error: str | None = None, chunks: int | None = None) -> dict[str, Any]:
    """The fields of one request's log line (msg `request`). Text that a client or an upstream chose is cleaned
    here. `request_id`: Envoy's x-request-id (else the translator's own request id); `credential`:
    x-authz-credential, passthrough / fallback (behind ext_authz); `credential_source`: which credential went
    upstream (bearer, x-api-key, static, none); `model`: the target model the upstream saw; `backend`: openai,
    anthropic, litellm; `tokens`: `Usage.as_dict()`."""
    out: dict[str, Any] = {
        "request_id": clean(request_id, 128), "key_id": clean(key_id, 64), "tenant": clean(tenant, 128),
        "credential": clean(credential, 32), "credential_source": credential_source, "route": route,
        "method": clean(method, 16), "path": clean(path, 256), "status": status,
        "duration_ms": round(duration_s * 1000, 1), "requested_model": clean(requested_model, 256),
        "model": clean(model, 256), "backend": backend, "provider": provider, "stream": stream, "tokens": tokens,
        "ttft_ms": round(ttft_s * 1000, 1) if ttft_s is not None else None,
    }
    if error is not None:
        out["error"] = clean(error, 64)
    if chunks is not None:
        out["chunks"] = chunks
    return out


def log_fields(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """A line of `fields` (`request_fields` for msg `request`) at level INFO. In the serving process (root logging
    configured by `configure`) it goes straight into the batched handler, without a LogRecord and a Formatter
    pass per request (~10 µs of the ~140 µs a tiny request cost); anywhere else (tests capturing logs, other
    handlers or filters) it is an ordinary `logger.info` with the fields as `extra`. Nothing below INFO."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _sole_batched_handler(logger)
    if handler is None:
        logger.info(msg, extra=fields)
        return
    handler.emit_line(handler.formatter.info_line(logger.name, msg, fields, time.time()))  # type: ignore[union-attr]


def log_info(logger: logging.Logger, msg: str, *args: Any) -> None:
    """`logger.info(msg, *args)` for a line written on every request of a kind: the same line, by the same
    direct path as `log_fields` when the serving process's handler is the only one (a LogRecord and a
    Formatter pass cost ~15 µs); an ordinary `logger.info` anywhere else."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _sole_batched_handler(logger)
    if handler is None:
        logger.info(msg, *args)
        return
    text = clean(msg % args if args else msg, 4096) or ""
    handler.emit_line(handler.formatter.line("info", logger.name, text, {}, time.time(),  # type: ignore[union-attr]
                                             orjson.OPT_APPEND_NEWLINE))


def configure(level: str) -> None:
    """Root logging to stderr at `level` (batched), third-party request loggers kept quiet (URLs can carry a
    Gemini key as a query parameter), and no per-record lookups the format does not use."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup per record (the Logging HOWTO's "Optimization" section)
    handler = BatchedStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
