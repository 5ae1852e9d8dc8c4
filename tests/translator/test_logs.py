"""The batched log handler: one write per batch, errors never held back, nothing lost on close."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time

import orjson
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
def test_json_lines_have_ext_authz_shape(created):
    from ext_authz.logs import JsonFormatter as AuthzFormatter
    from translator.logs import JsonFormatter

    ours, theirs = JsonFormatter(), AuthzFormatter()
    for _ in range(2):  # the second call comes from the per-second cache
        r = logging.LogRecord("n", logging.INFO, "p", 1, "msg %s", ("x",), None)
        r.created, r.msecs = created, (created - int(created)) * 1000
        r.key_id = "abc"
        assert json.loads(ours.format(r)) == json.loads(theirs.format(r))


def test_exceptions_are_logged_by_type_and_place_never_by_message():
    from translator.logs import JsonFormatter

    try:
        raise ValueError("sk-secret-quoted-by-an-exception")
    except ValueError:
        r = logging.LogRecord("n", logging.ERROR, "p", 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(r)
    assert "sk-secret" not in line
    data = json.loads(line)
    assert data["error"] == "ValueError" and data["where"][0].startswith("test_logs.py:")


CLEAN_CASES = [
    ("plain", "abc", 256, "abc"),
    ("newline cannot split a line", "a\nb\r", 256, "a\\u000ab\\u000d"),
    ("terminal escape", "\x1b[31mred", 256, "\\u001b[31mred"),
    ("DEL and C1 controls", "a\x7fb\x9bc", 256, "a\\u007fb\\u009bc"),
    ("line and paragraph separators", "a\u2028b\u2029", 256, "a\\u2028b\\u2029"),
    ("cut at the limit", "x" * 10, 4, "xxxx..."),
    ("not text", 12, 256, "12"),
    ("none", None, 256, None),
    ("unicode stays", "Grüße ✓", 256, "Grüße ✓"),
]


@pytest.mark.parametrize("text,limit,expected", [c[1:] for c in CLEAN_CASES], ids=[c[0] for c in CLEAN_CASES])
def test_clean(text, limit, expected):
    from translator.logs import clean

    assert clean(text, limit) == expected


def _line(**kw):
    from translator.logs import request_fields

    base = dict(route="messages", method="POST", path="/v1/messages", status=200, duration_s=0.01234)
    base.update(kw)
    return request_fields(**base)


def test_request_line_fields():
    from translator.usage import Usage

    fields = _line(request_id="rid-1", key_id="0123456789abcdef", tenant="team-a", credential="passthrough",
                   credential_source="bearer", requested_model="claude-sonnet-4-5", model="gpt-4.1",
                   backend="openai", provider="openai", stream=True, tokens=Usage(input=3, output=2).as_dict(),
                   ttft_s=0.5, chunks=4)
    assert fields == {
        "request_id": "rid-1", "key_id": "0123456789abcdef", "tenant": "team-a", "credential": "passthrough",
        "credential_source": "bearer", "route": "messages", "method": "POST", "path": "/v1/messages",
        "status": 200, "duration_ms": 12.3, "requested_model": "claude-sonnet-4-5", "model": "gpt-4.1",
        "backend": "openai", "provider": "openai", "stream": True,
        "tokens": {"input": 3, "output": 2, "cache_read": 0, "cache_write": 0, "reasoning": 0, "estimated": False},
        "ttft_ms": 500.0, "chunks": 4}
    assert _line(error="api_error")["error"] == "api_error"
    assert "error" not in _line() and _line()["ttft_ms"] is None


def test_request_line_escapes_what_clients_and_upstreams_chose():
    evil = "x\n{\"status\":200}\x1b[2J\u2028"
    fields = _line(request_id=evil, tenant=evil, credential=evil, requested_model=evil, model=evil, path=evil,
                   key_id=evil, error=evil)
    for name in ("request_id", "tenant", "credential", "requested_model", "model", "path", "key_id", "error"):
        assert not any(ord(c) < 0x20 or c in "\x1b\u2028" for c in fields[name]), name
    assert len(_line(requested_model="m" * 5000)["requested_model"]) == 256 + 3


@contextlib.contextmanager
def _serving_logging():
    """Root logging as the serving process configures it (restored afterwards); yields `configure(level)` that
    returns the handler, writing into a StringIO."""
    import io

    from translator import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def configure(level: str) -> BatchedStreamHandler:
        logs.configure(level)
        handler = root.handlers[0]
        handler.stream = io.StringIO()
        return handler

    try:
        yield configure
    finally:
        for h in root.handlers:
            if isinstance(h, BatchedStreamHandler):
                h._stop.set()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_log_fields_writes_one_json_line_in_the_serving_process():
    from translator import logs

    log = logging.getLogger("keyrelay.translator")
    with _serving_logging() as configure:
        handler = configure("info")
        logs.log_fields(log, "request", _line(request_id="r1", tenant="t\nx"))
        log.info("request", extra=_line(request_id="r1", tenant="t\nx"))  # the ordinary path
        handler.flush()
        fast, slow = [json.loads(x) for x in handler.stream.getvalue().splitlines()]
        assert fast["ts"][:19] == slow["ts"][:19]
        fast.pop("ts"), slow.pop("ts")
        assert fast == slow
        assert fast["msg"] == "request" and fast["level"] == "info" and fast["logger"] == "keyrelay.translator"
        assert fast["request_id"] == "r1" and fast["tenant"] == "t\\u000ax"
        handler = configure("warning")
        logs.log_fields(log, "request", _line())
        handler.flush()
        assert handler.stream.getvalue() == ""


@pytest.mark.parametrize("msg, args", [
    ("conversion request_id=%s route=%s notes=%s", ("r1", "default", '["dropped \'x\'\\u2028"]')),
    ("conversion request_id=%s route=%s notes=%s", ("r\n1", "rule\x1b[31m", "[]")),  # control characters escaped
    ("a line without arguments, %s kept as is", ()),
])
def test_log_info_writes_the_line_logging_would_write(msg, args):
    from translator import logs

    log = logging.getLogger("keyrelay.translator")
    with _serving_logging() as configure:
        handler = configure("info")
        logs.log_info(log, msg, *args)
        log.info(msg, *args)  # the ordinary path
        handler.flush()
        fast, slow = [json.loads(x) for x in handler.stream.getvalue().splitlines()]
        fast.pop("ts"), slow.pop("ts")
        assert fast == slow
        handler = configure("warning")
        logs.log_info(log, msg, *args)
        handler.flush()
        assert handler.stream.getvalue() == ""


def test_log_fields_goes_through_logging_when_others_listen(caplog):
    from translator import logs

    with caplog.at_level(logging.INFO, logger="keyrelay.translator"):
        logs.log_fields(logging.getLogger("keyrelay.translator"), "request", _line(key_id="abc"))
    assert [r.getMessage() for r in caplog.records] == ["request"]
    assert caplog.records[0].key_id == "abc" and caplog.records[0].status == 200


INFO_LINE_CASES = [  # logger, msg, fields: the text must be what encoding the merged dict in one call gives
    ("keyrelay.translator", "request", {}),
    ("keyrelay.translator", "request", {"request_id": "r1", "status": 200, "stream": False, "tokens": None}),
    ("translator.service", "request", {"tenant": "t\\u000ax", "duration_ms": 1.5, "nested": {"a": [1, 2.5]}}),
    ("name \"quoted\"\n", "msg with \u2028 and \"quotes\"", {"obj": {1}, "other": 1 << 40}),
]


@pytest.mark.parametrize("logger, msg, fields", INFO_LINE_CASES)
def test_info_line_is_the_text_of_line(logger, msg, fields):
    from translator.logs import JsonFormatter

    f = JsonFormatter()
    for t in (1_700_000_000.123, 1_700_000_000.9995, 1_700_000_001.0):  # also from the per-logger cache
        assert f.info_line(logger, msg, fields, t) == f.line("info", logger, msg, fields, t, orjson.OPT_APPEND_NEWLINE)


@pytest.mark.parametrize("t", [0.0, 0.0005, 0.999, 0.9999999, 1_700_000_000.0, 1_700_000_000.0015, 1_700_000_000.5,
                               1_700_000_059.9999, 4_102_444_800.25, -0.5, -1_000.123])
def test_timestamp_is_the_utc_second_and_milliseconds(t):
    from translator.logs import JsonFormatter

    second = int(t)
    expected = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(t)) + f"{int((t - second) * 1000):03d}Z"
    f = JsonFormatter()
    assert f.timestamp(t) == expected
    assert f.timestamp(t) == expected  # from the per-second cache
