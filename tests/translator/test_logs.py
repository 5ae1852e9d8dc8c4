"""The batched log handler: one write per batch, errors never held back, nothing lost on close."""

from __future__ import annotations

import logging
import time

import pytest

from translator.logs import BatchedStreamHandler


class CountingStream:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def logger_and_stream():
    stream = CountingStream()
    handler = BatchedStreamHandler(stream, interval_s=0.1, max_pending=4096)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"keyrelay.test.logs.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, handler
    handler._stop.set()
    logger.removeHandler(handler)


def test_info_lines_are_written_together_within_the_interval(logger_and_stream):
    logger, stream, _ = logger_and_stream
    for i in range(50):
        logger.info("request %d", i)
    assert stream.writes == []  # held back, not one write per line
    deadline = time.monotonic() + 5
    while not stream.writes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(stream.writes) == 1
    assert stream.writes[0].splitlines() == [f"INFO request {i}" for i in range(50)]


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR])
def test_warnings_and_errors_flush_at_once_in_order(logger_and_stream, level):
    logger, stream, _ = logger_and_stream
    logger.info("first")
    logger.log(level, "bad")
    assert "".join(stream.writes).splitlines() == ["INFO first", f"{logging.getLevelName(level)} bad"]


def test_a_full_buffer_is_written_without_waiting(logger_and_stream):
    logger, stream, _ = logger_and_stream
    for _ in range(200):  # 200 lines of 46 bytes: over the 4 KiB limit
        logger.info("x" * 40)
    assert len(stream.writes) >= 2, "a buffer over max_pending must be written at once"


def test_close_flushes_and_the_handler_keeps_working(logger_and_stream):
    # logging.config.dictConfig (uvicorn) closes existing handlers that stay attached to the root logger.
    logger, stream, handler = logger_and_stream
    logger.info("before close")
    handler.close()
    assert "".join(stream.writes).splitlines() == ["INFO before close"]
    logger.info("after close")
    handler.flush()
    assert "".join(stream.writes).splitlines() == ["INFO before close", "INFO after close"]


@pytest.mark.parametrize("created", [0.0, 1_700_000_000.123, 1_700_000_000.999, 1_700_000_001.0005, 1_800_000_000.5])
def test_formatter_matches_the_standard_asctime(created):
    from translator.logs import Formatter

    fast, std = Formatter("%(asctime)s %(levelname)s %(message)s"), logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for _ in range(2):  # the second call comes from the per-second cache
        r = logging.LogRecord("n", logging.INFO, "p", 1, "msg %s", ("x",), None)
        r.created, r.msecs = created, (created - int(created)) * 1000
        assert fast.format(r) == std.format(r)


def test_log_info_writes_what_logger_info_writes(monkeypatch):
    import io

    from translator import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("info")
        handler = root.handlers[0]
        handler.stream = io.StringIO()
        log = logging.getLogger("keyrelay.translator")
        log.info("%s", "POST /v1/messages status=200 key_id=abc")
        logs.log_info(log, "POST /v1/messages status=200 key_id=abc")
        handler.flush()
        a, b = handler.stream.getvalue().splitlines()
        # Same text; the timestamps (taken a moment apart) agree to the second.
        assert a[:19] == b[:19] and a[23:] == b[23:]
        assert b.endswith(" INFO keyrelay.translator POST /v1/messages status=200 key_id=abc")
        logs.configure("warning")
        handler = root.handlers[0]
        handler.stream = io.StringIO()
        logs.log_info(log, "not shown")
        handler.flush()
        assert handler.stream.getvalue() == ""
    finally:
        for h in root.handlers:
            if isinstance(h, BatchedStreamHandler):
                h._stop.set()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_log_info_goes_through_logging_when_others_listen(caplog):
    from translator import logs

    with caplog.at_level(logging.INFO, logger="keyrelay.translator"):
        logs.log_info(logging.getLogger("keyrelay.translator"), "seen by caplog key_id=abc")
    assert [r.getMessage() for r in caplog.records] == ["seen by caplog key_id=abc"]


@pytest.mark.parametrize("text,escaped", [
    ("plain model-name 1.0", "plain model-name 1.0"),
    ("a\nb", "a\\nb"),
    ("a\r\n2026-01-01 INFO forged", "a\\r\\n2026-01-01 INFO forged"),
    ("bell\x07 esc\x1b[31m", "bell\\x07 esc\\x1b[31m"),
    ("sep\u2028x\x85", "sep\\u2028x\\x85"),
    ("tab\there", "tab\\there"),
    ("ünïcode ok", "ünïcode ok"),
])
def test_escape_keeps_every_record_on_one_line(text, escaped):
    from translator.logs import FORMAT, Formatter, escape

    assert escape(text) == escaped
    record = logging.LogRecord("keyrelay.translator", logging.ERROR, __file__, 1, "model=%s", (text,), None)
    line = Formatter(FORMAT).format(record)
    assert "\n" not in line and "\r" not in line and line.endswith("model=" + escaped)
