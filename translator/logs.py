"""Process logging for the translator: one line per request on stderr, written in batches.

Why not a plain `logging.StreamHandler`: it writes and flushes every record, one `write` system call per
request line. py-spy on the translator under load (tiny non-streaming requests) put ~12% of its CPU in that
write alone, more than the upstream call's own socket write. `BatchedStreamHandler` formats each record as
usual and writes what accumulated in one call: when 64 KiB are pending, when a record of level WARNING or
above arrives (errors are never held back), every 0.25 s from a small daemon thread, and at exit
(`logging.shutdown` flushes handlers). A line reaches stderr at most ~0.25 s late.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
QUIET = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "httpcore", "aiohttp.access", "aiohttp.client")


def escape(text: str) -> str:
    """`text` with every non-printable character (control characters such as CR and LF, DEL, C1 controls, line
    and paragraph separators) written as its Python escape, so text a client or an upstream controls (a model
    name, a path, an upstream message) can never start a forged log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class Formatter(logging.Formatter):
    """logging.Formatter with the default `asctime` (`2026-01-02 03:04:05,678`), its date part computed once
    per second instead of per record (`time.strftime` per line was visible in the per-request profile).
    Messages are escaped (`escape`): one record is one line, whatever its arguments contained; a traceback
    (debug level only) follows on its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        record.message = escape(record.message)
        return super().formatMessage(record)

    _cached: tuple[int, str] = (-1, "")  # (second, its text), replaced as one object: thread-safe

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.default_msec_format % (self.second_text(record.created), record.msecs)

    def second_text(self, t: float) -> str:
        """The date and time of `t` to the second, formatted once per second."""
        second = int(t)
        cached_second, text = self._cached
        if second != cached_second:
            text = time.strftime(self.default_time_format, self.converter(t))
            self._cached = (second, text)
        return text


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
    found: list[logging.Handler] = []
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        found.extend(node.handlers)
        node = node.parent if node.propagate else None  # type: ignore[assignment]
    if len(found) != 1:
        return None
    h = found[0]
    if (type(h) is not BatchedStreamHandler or h.filters or h.level > logging.INFO
            or type(h.formatter) is not Formatter or h.formatter._fmt != FORMAT):  # noqa: SLF001
        return None
    return h


def log_info(logger: logging.Logger, msg: str) -> None:
    """`logger.info(msg)` for a message the caller formatted (the request line): the same text, but in the
    serving process (root logging configured by `configure`) written straight into the batched handler, without
    a LogRecord and a Formatter pass per request (~10 µs of the ~140 µs a tiny request cost). Anywhere else
    (tests capturing logs, other handlers or filters) it is an ordinary `logger.info`."""
    if not logger.isEnabledFor(logging.INFO):
        return
    msg = escape(msg)
    handler = _sole_batched_handler(logger)
    if handler is None:
        logger.info("%s", msg)
        return
    now = time.time()
    fmt = handler.formatter
    assert isinstance(fmt, Formatter)
    handler.emit_line("%s,%03d INFO %s %s\n" % (fmt.second_text(now), int((now - int(now)) * 1000), logger.name,
                                                  msg))


def configure(level: str) -> None:
    """Root logging to stderr at `level` (batched), third-party request loggers kept quiet (URLs can carry a
    Gemini key as a query parameter), and no per-record lookups the format does not use."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup per record (the Logging HOWTO's "Optimization" section)
    handler = BatchedStreamHandler(sys.stderr)
    handler.setFormatter(Formatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
