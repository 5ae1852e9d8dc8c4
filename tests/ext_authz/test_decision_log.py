"""The decision log (configured in the policy) and request correlation (`request_id` = the x-request-id Envoy
set): which decisions are logged per mode, what a line carries, that no key ever appears, and over real gRPC
that every log line about a request carries its escaped, bounded x-request-id, never Envoy's stream id."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from ext_authz.decide import Decision, key_digest
from ext_authz.decision_log import DecisionLog, record, wanted
from ext_authz.logs import MAX_REQUEST_ID_LENGTH, escape
from ext_authz.policy import DecisionLogConfig, PolicyError, parse_policy

from .helpers import ENVOY_STREAM_ID, running_service

KEY = "sk-dlog-SECRETALPHA-0123456789"
TEAM = "sk-dlog-SECRETTEAM-0123456789"
OLD = "dlog_SECRETOLD_0123456789"
ALL_SECRETS = (KEY, TEAM, OLD, "SECRETALPHA", "SECRETTEAM", "SECRETOLD")

WANTED = [
    # mode, allowed, dry-run reason, sample value, logged
    ("all", True, "", 0.99, True),
    ("all", False, "", 0.99, True),
    ("denials", True, "", 0.0, False),
    ("denials", False, "", 0.99, True),
    ("denials", True, "key_format", 0.99, True),
    ("sampled", True, "", 0.24, True),
    ("sampled", True, "", 0.25, False),
    ("sampled", False, "", 0.99, True),
    ("sampled", True, "missing_key", 0.99, True),
]


@pytest.mark.parametrize("mode,allowed,dry,sample,logged", WANTED)
def test_which_decisions_are_logged(mode: str, allowed: bool, dry: str, sample: float, logged: bool) -> None:
    cfg = DecisionLogConfig(mode, 0.25 if mode == "sampled" else 1.0)
    assert wanted(cfg, allowed, dry, lambda: sample) is logged


def test_sampling_rate_is_applied() -> None:
    log = DecisionLog(random.Random(7))
    cfg = DecisionLogConfig("sampled", 0.1)
    allow = Decision(True, "passthrough", "messages", credential="passthrough", key_id="k" * 16, forward_key=KEY)
    logged = sum(log.write(cfg, allow, "allow", "abc", "r") for _ in range(2000))
    assert 150 < logged < 250


def test_record_fields_and_no_key() -> None:
    allow = Decision(True, "passthrough", "messages", credential="passthrough", key_id=key_digest(KEY)[:16],
                     tenant="team-a", forward_key=KEY)
    rec = record(allow, "allow", "0123456789ab", "rid-1", "key_format")
    assert rec == {"request_id": "rid-1", "key_id": key_digest(KEY)[:16], "tenant": "team-a", "route": "messages",
                   "result": "allow", "reason": "passthrough", "status": 200, "credential": "passthrough",
                   "policy": "0123456789ab", "dry_run": True, "dry_run_reason": "key_format"}
    assert KEY not in json.dumps(rec)


CONFIG_ERRORS = [
    ("decision_log: {mode: everything}", "decision_log.mode must be one of off, all, denials, sampled"),
    ("decision_log: {mode: sampled}", "sampled needs sample_rate"),
    ("decision_log: {mode: sampled, sample_rate: 0}", "0 < rate <= 1"),
    ("decision_log: {mode: sampled, sample_rate: 1.5}", "0 < rate <= 1"),
    ("decision_log: {mode: sampled, sample_rate: yes}", "0 < rate <= 1"),
    ("decision_log: {mode: all, sample_rate: 0.5}", "only used with mode: sampled"),
    ("decision_log: {level: all}", "unknown field 'level'"),
    ("decision_log: all", "decision_log must be a mapping"),
]


@pytest.mark.parametrize("text,problem", CONFIG_ERRORS, ids=[c[1] for c in CONFIG_ERRORS])
def test_decision_log_config_errors(text: str, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(f"version: 1\n{text}\n", "p.yaml")
    assert info.value.line == 2 and problem in str(info.value)


@pytest.mark.parametrize("text,expected", [
    ("", None), ("decision_log:", None), ("decision_log: {mode: off}", None), ("decision_log: {mode: 'off'}", None),
    ("decision_log: {mode: denials}", DecisionLogConfig("denials")),
    ("decision_log: {mode: sampled, sample_rate: 0.05}", DecisionLogConfig("sampled", 0.05)),
])
def test_decision_log_config(text: str, expected) -> None:
    assert parse_policy(f"version: 1\n{text}\n").decision_log == expected


def test_escape_bounds_and_escapes() -> None:
    assert escape("3f1c-9a", 128) == "3f1c-9a"
    assert escape("a\r\nb\x00\\", 128) == "a\\x0d\\x0ab\\x00\\x5c"
    assert escape("é☃", 128) == "\\xe9\\u2603"
    assert escape("x" * 1000, MAX_REQUEST_ID_LENGTH) == "x" * MAX_REQUEST_ID_LENGTH
    assert len(escape("\x01" * 1000, MAX_REQUEST_ID_LENGTH)) == MAX_REQUEST_ID_LENGTH


# ------------------------------------------------------------------------------------------ real service

POLICY = f"""\
version: 1
require_key: true
key_format: '^[A-Za-z0-9_-]{{8,64}}$'
allowlist:
  - {{sha256: {key_digest(KEY)}, tenant: team-a}}
  - {{sha256: {key_digest(OLD)}, tenant: team-old}}
routes:
  root: {{require_key: false}}
dry_run:
  key_format: '^sk-[A-Za-z0-9-]{{8,64}}$'
decision_log:
  mode: MODE
"""


def lines(output: str, msg: str) -> list[dict]:
    out = []
    for line in output.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == msg:
                out.append(entry)
    return out


def wait_lines(svc, msg: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = lines(svc.proc.output, msg)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"expected {count} {msg!r} lines, got {lines(svc.proc.output, msg)}")


@pytest.mark.parametrize("raw", [False, True], ids=["headers", "header_map"])
def test_service_decision_log_all_and_request_ids(tmp_path: Path, raw: bool) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.replace("MODE", "all"))
    digest = parse_policy(path.read_bytes()).short_digest
    with running_service(path, extra_args=["--log-level", "warning"]) as svc:
        assert svc.check({"x-api-key": KEY}, route="messages", raw=raw, request_id="rid-allow").status.code == 0
        assert svc.check({"x-api-key": TEAM}, route="messages", raw=raw, request_id="rid-deny").status.code == 7
        assert svc.check({"x-api-key": OLD}, route="models", raw=raw, request_id="rid-dry").status.code == 0
        hostile = "evil\r\n{\"level\":\"forged\"}" + "z" * 300
        assert svc.check({"x-api-key": TEAM}, route="messages", raw=raw, request_id=hostile).status.code == 7
        assert svc.check({}, route="root", raw=raw, request_id=None).status.code == 0
        got = wait_lines(svc, "decision", 5)
    by_id = {entry["request_id"]: entry for entry in got}
    assert by_id["rid-allow"] | {"ts": 0, "pid": 0} == {
        "ts": 0, "level": "info", "logger": "ext_authz.decision", "msg": "decision", "pid": 0,
        "request_id": "rid-allow", "key_id": key_digest(KEY)[:16], "tenant": "team-a", "route": "messages",
        "result": "allow", "reason": "passthrough", "status": 200, "credential": "passthrough", "policy": digest,
        "dry_run": False, "dry_run_reason": ""}
    assert by_id["rid-deny"]["result"] == "deny" and by_id["rid-deny"]["reason"] == "not_allowlisted"
    assert by_id["rid-deny"]["status"] == 403 and by_id["rid-deny"]["dry_run"] is False
    assert by_id["rid-dry"]["result"] == "allow" and by_id["rid-dry"]["tenant"] == "team-old"
    assert by_id["rid-dry"]["dry_run"] is True and by_id["rid-dry"]["dry_run_reason"] == "key_format"
    escaped = escape(hostile, MAX_REQUEST_ID_LENGTH)
    assert escaped.startswith("evil\\x0d\\x0a{") and len(escaped) == MAX_REQUEST_ID_LENGTH
    assert by_id[escaped]["reason"] == "not_allowlisted"
    assert by_id[""]["reason"] == "no_key" and by_id[""]["key_id"] == ""
    assert ENVOY_STREAM_ID not in svc.proc.output
    assert not any(secret in svc.proc.output for secret in ALL_SECRETS)
    assert '"level":"forged"' not in svc.proc.output.replace('"level":"info"', "")


def test_service_denials_mode_deny_lines_and_reload_switches_mode(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.replace("MODE", "denials"))
    with running_service(path) as svc:
        svc.check({"x-api-key": KEY}, route="messages", request_id="rid-a1")      # allowed, dry run passes
        svc.check({"x-api-key": TEAM}, route="messages", request_id="rid-d1")     # denied
        svc.check({"x-api-key": OLD}, route="messages", request_id="rid-x1")      # allowed, dry run would deny
        assert [e["request_id"] for e in wait_lines(svc, "deny", 1)] == ["rid-d1"]
        assert [e["request_id"] for e in wait_lines(svc, "dry-run deny", 1)] == ["rid-x1"]
        logged = [e["request_id"] for e in wait_lines(svc, "decision", 2)]
        assert logged == ["rid-d1", "rid-x1"]                                     # not the clean allow
        # Switching the mode is neutral for decisions: applied at the next poll, no quiet period.
        path.write_text(POLICY.replace("MODE", "all").replace("key_format: '^sk-", "key_format: '^dlog_"))
        time.sleep(0.5)
        svc.check({"x-api-key": OLD}, route="messages", request_id="rid-a2")
        assert [e["request_id"] for e in wait_lines(svc, "decision", 3)][2:] == ["rid-a2"]
        assert svc.metric("keyrelay_ext_authz_dry_run_denials_total", reason="key_format", route="messages") >= 1
    assert not any(secret in svc.proc.output for secret in ALL_SECRETS)
