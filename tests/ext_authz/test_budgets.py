"""Budgets: the policy section, the pure over-budget rule, and the Check path against a real redis-server with
the translator's real usage writer (no mocks): tokens and requests counted across two trackers (two replicas),
weights, dry-run, the window's end, and Redis down in both modes."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from prometheus_client import CollectorRegistry

import keyrelay_budgets as kb
from ext_authz.budgets import (REASON_REQUESTS, REASON_TOKENS_DAY, REASON_TOKENS_MINUTE, REASON_UNAVAILABLE,
                               BudgetTracker, Subject, over_budget)
from ext_authz.decide import key_digest
from ext_authz.metrics import Metrics
from ext_authz.policy import Budget, PolicyError, parse_policy
from ext_authz.reload import PolicyStore
from ext_authz.server import Authorizer
from tests.support.redis import RedisServer
from translator.budgets import UsageRecorder
from translator.metrics import build_metrics
from translator.usage import Usage

from .helpers import check_request

KEY_A = "sk-budget-team-a-0001"
KEY_B = "sk-budget-team-b-0002"
KEY_C = "sk-budget-team-a-0003"
BASE = f"""\
version: 1
allowlist:
  - {{sha256: {key_digest(KEY_A)}, tenant: team-a}}
  - {{sha256: {key_digest(KEY_B)}, tenant: team-b}}
  - {{sha256: {key_digest(KEY_C)}, tenant: team-a}}
"""


def policy(budgets: str):
    return parse_policy(BASE + budgets)


# ---------------------------------------------------------------------- the policy section

def test_budgets_section_parses() -> None:
    p = policy("""\
budgets:
  weights: {output: 5, cache_read: 0.1}
  window_seconds: 2
  per_key: {requests_per_minute: 60}
  tenants:
    team-a: {tokens_per_minute: 1000, tokens_per_day: 50000, on_redis_error: closed}
    team-b: {tokens_per_day: 10, dry_run: true}
""")
    b = p.budgets
    assert b is not None and b.weights == (1.0, 5.0, 0.1, 1.0) and b.window_seconds == 2
    assert b.per_key == Budget(requests_per_minute=60)
    assert b.tenants["team-a"] == Budget(tokens_per_minute=1000, tokens_per_day=50000, on_redis_error="closed")
    assert b.tenants["team-b"] == Budget(tokens_per_day=10, dry_run=True)
    assert policy("").budgets is None
    assert p.shadow is None


@pytest.mark.parametrize("section, line, problem", [
    ("budgets: {per_key: {}}", 1, "sets no limit"),
    ("budgets: {per_key: {requests_per_minute: 0}}", 1, "between 1 and"),
    ("budgets: {per_key: {requests_per_minute: 1000000000001}}", 1, "between 1 and"),
    ("budgets: {per_key: {requests_per_minute: '5'}}", 1, "must be an integer"),
    ("budgets: {per_key: {tokens_per_hour: 5}}", 1, "unknown field 'tokens_per_hour'"),
    ("budgets: {per_key: {tokens_per_day: 5, on_redis_error: maybe}}", 1, "must be open or closed"),
    ("budgets: {per_key: {tokens_per_day: 5, dry_run: 'yes'}}", 1, "must be true or false"),
    ("budgets: {window_seconds: 0, per_key: {tokens_per_day: 5}}", 1, "between 1 and 60"),
    ("budgets: {window_seconds: 61, per_key: {tokens_per_day: 5}}", 1, "between 1 and 60"),
    ("budgets: {weights: {output: -1}}", 1, "from 0 to 1000"),
    ("budgets: {weights: {output: 1001}}", 1, "from 0 to 1000"),
    ("budgets: {weights: {reasoning: 1}}", 1, "unknown field 'reasoning'"),
    ("budgets: {tenants: {'bad tenant': {tokens_per_day: 5}}}", 1, "tenant must be"),
    ("budgets:\n  tenants:\n    team-a: {tokens_per_day: 5}\n    team-a: {tokens_per_day: 6}", 4, "duplicate key"),
    ("budgets: [1]", 1, "must be a mapping"),
])
def test_invalid_budgets(section: str, line: int, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy(section)
    assert problem in str(info.value)
    assert info.value.line == BASE.count("\n") + line


def test_too_many_budget_tenants_is_refused(monkeypatch) -> None:
    monkeypatch.setattr("ext_authz.policy.MAX_BUDGET_TENANTS", 3)
    tenants = "".join(f"    t{i}: {{tokens_per_day: 5}}\n" for i in range(4))
    with pytest.raises(PolicyError, match="more than 3 entries"):
        policy("budgets:\n  tenants:\n" + tenants)
    policy("budgets:\n  tenants:\n" + "".join(f"    t{i}: {{tokens_per_day: 5}}\n" for i in range(3)))


# ---------------------------------------------------------------------- the pure rule

W = 10  # a 10-second window; `now` 1005.5 is inside bucket 100, which ends at 1010
NOW = 1005.5
DAY_BUCKET = int(NOW // kb.DAY_SECONDS)


@pytest.mark.parametrize("budget, subject, now, reason, retry", [
    (Budget(requests_per_minute=3), Subject(100, DAY_BUCKET, minute_requests=2), NOW, "", 0),
    (Budget(requests_per_minute=3), Subject(100, DAY_BUCKET, minute_requests=2, pending=1), NOW, REASON_REQUESTS, 5),
    (Budget(requests_per_minute=3), Subject(99, DAY_BUCKET, minute_requests=9), NOW, "", 0),  # old window
    (Budget(tokens_per_minute=100), Subject(100, DAY_BUCKET, minute_tokens=99.9), NOW, "", 0),
    (Budget(tokens_per_minute=100), Subject(100, DAY_BUCKET, minute_tokens=100), NOW, REASON_TOKENS_MINUTE, 5),
    (Budget(tokens_per_minute=100), Subject(100, DAY_BUCKET, minute_tokens=500), 1009.9, REASON_TOKENS_MINUTE, 1),
    (Budget(tokens_per_minute=100), Subject(100, DAY_BUCKET, minute_tokens=500), 1010.0, "", 0),  # window over
    (Budget(tokens_per_day=100), Subject(100, DAY_BUCKET, day_tokens=100), NOW, REASON_TOKENS_DAY,
     kb.DAY_SECONDS - 1005),
    (Budget(tokens_per_day=100), Subject(100, DAY_BUCKET - 1, day_tokens=100), NOW, "", 0),  # yesterday
    (Budget(tokens_per_day=100, dry_run=True), Subject(100, DAY_BUCKET, day_tokens=100), NOW, REASON_TOKENS_DAY,
     kb.DAY_SECONDS - 1005),
])
def test_over_budget(budget, subject, now, reason, retry) -> None:
    verdict = over_budget(budget, subject, now, W)
    assert (verdict.reason, verdict.retry_after, verdict.dry_run) == (reason, retry, budget.dry_run and bool(reason))


@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:s3cret@redis.ns:6379/0", "redis://***@redis.ns:6379/0"),
    ("rediss://user:s3cret@redis.ns/1", "rediss://***@redis.ns/1"),
])
def test_redis_url_is_shown_without_its_password(url, shown) -> None:
    assert kb.redact_url(url) == shown
    assert kb.check_url(url) == url


@pytest.mark.parametrize("url", ["http://x", "127.0.0.1:6379", "", "redis"])
def test_bad_redis_urls(url) -> None:
    with pytest.raises(ValueError, match="must start with"):
        kb.check_url(url)


# ---------------------------------------------------------------------- against a real Redis

@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    redis_server.client().flushall()
    return redis_server.url


def write_usage(url: str, records: list[tuple]) -> None:
    """The translator's writer, as MessagesService.finish uses it: (tenant, key_id, usage[, request_id])."""
    async def run() -> None:
        metrics = build_metrics()
        recorder = UsageRecorder(url, metrics)
        await recorder.start()
        for record in records:
            recorder.record(*record)
        await recorder.flush()
        await recorder.aclose()
        assert metrics.registry.get_sample_value("keyrelay_translator_budget_usage_writes_total",
                                                 {"result": "written"}) >= 1
    asyncio.run(run())


def authorizer(pol, url: str | None, registry=None, **kw) -> tuple[Authorizer, BudgetTracker]:
    store = PolicyStore(pol)
    metrics = Metrics(registry or CollectorRegistry())
    tracker = BudgetTracker(url, lambda: store.policy.budgets, metrics, **kw)
    return Authorizer(store, metrics, budgets=tracker), tracker


def two_replicas(pol, url: str):
    """Two Authorizers with their own trackers on one Redis (two ext_authz processes), and a refresh of both."""
    (one, t1), (two, t2) = authorizer(pol, url), authorizer(pol, url)

    def refresh() -> None:
        t1.refresh()
        t2.refresh()
    refresh()
    return one, two, t2, refresh


def send(auth: Authorizer, key: str, route: str = "messages"):
    return auth.check(check_request({"x-api-key": key}, route=route))


def test_token_budget_from_translator_usage_denies_with_retry_after(redis_url) -> None:
    pol = policy("""\
budgets:
  weights: {output: 5}
  tenants:
    team-a: {tokens_per_minute: 1000}
""")
    auth, tracker = authorizer(pol, redis_url)
    assert tracker.refresh()
    assert send(auth, KEY_A).WhichOneof("http_response") == "ok_response"
    kid = key_digest(KEY_A)[:16]
    write_usage(redis_url, [("team-a", kid, Usage(input=400, output=100))])  # 400 + 5 * 100 = 900 < 1000
    tracker.refresh()
    assert send(auth, KEY_A).WhichOneof("http_response") == "ok_response"
    write_usage(redis_url, [("team-a", kid, Usage(output=20))])  # 900 + 100 = 1000: spent
    tracker.refresh()
    for key in (KEY_A, KEY_C):  # both keys of the tenant
        resp = send(auth, key)
        denied = resp.denied_response
        assert denied.status.code == 429
        body = json.loads(denied.body)
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        headers = {h.header.key: h.header.value for h in denied.headers}
        assert 1 <= int(headers["retry-after"]) <= 60
        assert resp.dynamic_metadata.fields["reason"].string_value == REASON_TOKENS_MINUTE
    assert send(auth, KEY_B).WhichOneof("http_response") == "ok_response"  # another tenant
    assert send(auth, KEY_A, route="count_tokens").WhichOneof("http_response") == "ok_response"  # not budgeted
    # What the translator wrote is the raw counts; the weights are the reader's.
    day = tracker._subjects[("tenant", "team-a")].day_bucket
    raw = redis_client(redis_url).hgetall(kb.window_key("tenant", "team-a", "d", day))
    assert {k.decode(): int(v) for k, v in raw.items()} == {"input": 400, "output": 120, "requests": 2}


def redis_client(url: str):
    import redis

    return redis.Redis.from_url(url)


def test_two_replicas_share_one_request_budget(redis_url) -> None:
    one, two, _, refresh = two_replicas(policy("budgets: {per_key: {requests_per_minute: 6}}"), redis_url)
    results = []
    for i in range(10):
        results.append(send(one if i % 2 else two, KEY_B).WhichOneof("http_response"))
        refresh()
    assert results.count("ok_response") == 6 and results[6:] == ["denied_response"] * 4


def test_requests_between_refreshes_are_counted_locally(redis_url) -> None:
    pol = policy("budgets: {per_key: {requests_per_minute: 3}}")
    auth, tracker = authorizer(pol, redis_url)
    tracker.refresh()
    answers = [send(auth, KEY_A).WhichOneof("http_response") for _ in range(5)]  # no refresh in between
    assert answers == ["ok_response"] * 3 + ["denied_response"] * 2
    tracker.refresh()  # flushed: Redis holds the 3 allowed requests
    other, t2 = authorizer(pol, redis_url)
    t2.refresh()
    # A subject this replica has not seen yet is unknown until its next refresh (the documented overshoot) ...
    assert send(other, KEY_A).WhichOneof("http_response") == "ok_response"
    t2.refresh()
    # ... then it is limited by what every replica counted.
    assert send(other, KEY_A).WhichOneof("http_response") == "denied_response"
    assert t2._subjects[("key", key_digest(KEY_A)[:16])].minute_requests == 4


def test_budget_recovers_when_the_window_ends(redis_url) -> None:
    pol = policy("budgets: {window_seconds: 1, per_key: {requests_per_minute: 1}}")
    auth, tracker = authorizer(pol, redis_url)
    tracker.refresh()
    # Start right after a window boundary (Redis' clock) so both requests fall in one window.
    while (time.time() + tracker._offset) % 1 > 0.3:
        time.sleep(0.02)
    assert send(auth, KEY_A).WhichOneof("http_response") == "ok_response"
    denied = send(auth, KEY_A)
    assert denied.WhichOneof("http_response") == "denied_response"
    assert {h.header.key: h.header.value for h in denied.denied_response.headers}["retry-after"] == "1"
    time.sleep(1.0)
    assert send(auth, KEY_A).WhichOneof("http_response") == "ok_response"  # no refresh needed to recover


def test_dry_run_budget_denies_nothing_and_counts(redis_url, caplog) -> None:
    registry = CollectorRegistry()
    pol = policy("budgets: {tenants: {team-b: {requests_per_minute: 1, dry_run: true}}}")
    auth, tracker = authorizer(pol, redis_url, registry)
    tracker.refresh()
    with caplog.at_level(logging.INFO, logger="ext_authz.check"):
        answers = [send(auth, KEY_B).WhichOneof("http_response") for _ in range(3)]
    assert answers == ["ok_response"] * 3
    assert registry.get_sample_value("keyrelay_ext_authz_dry_run_denials_total",
                                     {"reason": REASON_REQUESTS, "route": "messages"}) == 2
    lines = [r for r in caplog.records if r.getMessage() == "dry-run deny"]
    assert [(r.reason, r.tenant) for r in lines] == [(REASON_REQUESTS, "team-b")] * 2
    tracker.refresh()
    day = tracker._subjects[("tenant", "team-b")].day_bucket
    assert int(redis_client(redis_url).hget(kb.window_key("tenant", "team-b", "d", day), "requests")) == 3


@pytest.mark.parametrize("mode, answer, status", [("open", "ok_response", 0), ("closed", "denied_response", 503)])
def test_redis_down_follows_on_redis_error(mode, answer, status, caplog) -> None:
    server = RedisServer().start()
    registry = CollectorRegistry()
    pol = policy(f"budgets: {{per_key: {{requests_per_minute: 100, on_redis_error: {mode}}}}}")
    auth, tracker = authorizer(pol, server.url, registry, stale_seconds=0.2, socket_timeout=0.3)
    try:
        assert tracker.refresh()
        assert send(auth, KEY_A).WhichOneof("http_response") == "ok_response"
        server.kill()
        with caplog.at_level(logging.ERROR, logger="ext_authz.budgets"):
            assert not tracker.refresh()
            assert not tracker.refresh()
        time.sleep(0.25)
        resp = send(auth, KEY_A)
        assert resp.WhichOneof("http_response") == answer
        if status:
            assert resp.denied_response.status.code == status
            assert json.loads(resp.denied_response.body)["error"]["type"] == "api_error"
            assert resp.dynamic_metadata.fields["reason"].string_value == REASON_UNAVAILABLE
        else:
            assert registry.get_sample_value("keyrelay_ext_authz_budget_fail_open_total") == 1
        assert registry.get_sample_value("keyrelay_ext_authz_budget_store_up") == 0
        assert registry.get_sample_value("keyrelay_ext_authz_budget_store_errors_total") == 2
        assert len([r for r in caplog.records if "budget store unreachable" in r.getMessage()]) == 1  # once
        server.start()  # back on the same port: requests counted while it was down are flushed
        assert tracker.refresh()
        assert send(auth, KEY_A).WhichOneof("http_response") == "ok_response"
        tracker.refresh()
        s = tracker._subjects[("key", key_digest(KEY_A)[:16])]
        assert s.minute_requests == (3 if mode == "open" else 2)
    finally:
        tracker.close()
        server.stop()


def test_without_a_redis_url_budgets_follow_their_mode() -> None:
    pol = policy("budgets: {tenants: {team-a: {tokens_per_day: 5, on_redis_error: closed}}}")
    auth, tracker = authorizer(pol, None)
    assert not tracker.refresh()
    assert send(auth, KEY_A).denied_response.status.code == 503
    assert send(auth, KEY_B).WhichOneof("http_response") == "ok_response"  # team-b has no budget


def test_budgeted_tenants_are_known_before_their_first_request(redis_url) -> None:
    one, two, _, refresh = two_replicas(policy("budgets: {tenants: {team-a: {requests_per_minute: 2}}}"), redis_url)
    assert [send(one, KEY_A).WhichOneof("http_response") for _ in range(2)] == ["ok_response"] * 2
    refresh()
    assert send(two, KEY_C).WhichOneof("http_response") == "denied_response"  # never saw team-a before


def test_concurrent_requests_counted_from_allow_to_the_translators_end(redis_url) -> None:
    pol = policy("budgets: {tenants: {team-a: {concurrent_requests: 2}}, per_key: {requests_per_minute: 100}}")
    one, two, t2, refresh = two_replicas(pol, redis_url)

    def send_id(auth, key, rid):
        return auth.check(check_request({"x-api-key": key}, route="messages", request_id=rid)).WhichOneof(
            "http_response")

    assert [send_id(one, KEY_A, "rid-1"), send_id(one, KEY_C, "rid-2")] == ["ok_response"] * 2
    assert send_id(one, KEY_A, "rid-3") == "denied_response"  # counted locally before any refresh
    refresh()
    denied = two.check(check_request({"x-api-key": KEY_C}, route="messages", request_id="rid-4"))
    assert denied.denied_response.status.code == 429
    assert denied.dynamic_metadata.fields["reason"].string_value == "budget_concurrent_requests"
    assert {h.header.key: h.header.value for h in denied.denied_response.headers}["retry-after"] == "1"
    # The translator finishes rid-1 (and a request no replica added yet: rid-9, finished before the refresh).
    write_usage(redis_url, [("team-a", key_digest(KEY_A)[:16], Usage(input=5), "rid-1"),
                            ("team-a", None, None, "rid-9")])
    t2.refresh()
    assert send_id(two, KEY_A, "rid-9") == "ok_response"  # the refresh will not add rid-9: it already ended
    t2.refresh()
    assert t2._subjects[("tenant", "team-a")].inflight == 1  # rid-2 only
    client = redis_client(redis_url)
    assert {m.decode() for m in client.zrange("keyrelay:budget:tenant:team-a:inflight", 0, -1)} == {"rid-2"}
    # Ends of subjects without a concurrent budget (the keys here) leave nothing behind.
    assert not client.exists(f"keyrelay:budget:key:{key_digest(KEY_A)[:16]}:ended")
    assert not client.exists(f"keyrelay:budget:key:{key_digest(KEY_A)[:16]}:inflight")


def test_tracked_subjects_are_bounded(redis_url) -> None:
    pol = policy("budgets: {per_key: {requests_per_minute: 1}}")
    auth, tracker = authorizer(pol, redis_url, max_subjects=2)
    tracker.refresh()
    keys = [KEY_A, KEY_B, KEY_C]
    assert [send(auth, k).WhichOneof("http_response") for k in keys] == ["ok_response"] * 3
    assert len(tracker._subjects) == 2
    # The two tracked keys are limited; the third is not tracked while the table is full.
    assert [send(auth, k).WhichOneof("http_response") for k in keys] == \
        ["denied_response", "denied_response", "ok_response"]


def test_usage_writer_queue_is_bounded(redis_url) -> None:
    async def run() -> float:
        metrics = build_metrics()
        recorder = UsageRecorder(redis_url, metrics, max_pending=4)
        for _ in range(3):
            recorder.record("team-a", "0123456789abcdef", Usage(input=1))  # two records each
        recorder.record("bad tenant!", "not-a-key-id", Usage(input=1))  # neither id is valid: nothing queued
        return metrics.registry.get_sample_value("keyrelay_translator_budget_usage_writes_total",
                                                 {"result": "dropped"})
    assert asyncio.run(run()) == 2


def test_usage_writer_drops_and_counts_when_redis_is_down() -> None:
    async def run():
        metrics = build_metrics()
        recorder = UsageRecorder("redis://127.0.0.1:1/0", metrics, socket_timeout=0.2)
        await recorder.start()
        recorder.record("team-a", "0123456789abcdef", Usage(input=1))
        await recorder.flush()
        await recorder.aclose()
        return metrics.registry.get_sample_value("keyrelay_translator_budget_usage_writes_total",
                                                 {"result": "dropped"})
    assert asyncio.run(run()) == 2


# ---------------------------------------------------------------------- keyrelay-usage

def run_usage_tool(*args: str, env: dict | None = None):
    import subprocess

    from tests.support.procs import base_env, script

    return subprocess.run([script("keyrelay-usage"), *args], capture_output=True, text=True, timeout=60,
                          env=base_env(**(env or {})))


def test_usage_tool_prints_usage_and_remaining_budget(redis_url, tmp_path) -> None:
    pol_text = BASE + """\
budgets:
  weights: {output: 2}
  per_key: {requests_per_minute: 100}
  tenants:
    team-a: {tokens_per_minute: 1000, tokens_per_day: 5000}
    team-b: {requests_per_minute: 10, dry_run: true}
"""
    path = tmp_path / "policy.yaml"
    path.write_text(pol_text)
    pol = parse_policy(pol_text)
    auth, tracker = authorizer(pol, redis_url)
    tracker.refresh()
    for _ in range(3):
        send(auth, KEY_A)
    tracker.refresh()
    kid = key_digest(KEY_A)[:16]
    write_usage(redis_url, [("team-a", kid, Usage(input=100, output=50)), ("team-z", None, Usage(input=7))])
    result = run_usage_tool("--policy", str(path), env={kb.REDIS_URL_ENV: redis_url})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SCOPE", "ID", "REQ/WIN", "RPM", "REQ", "LEFT", "TOK/WIN", "TPM", "TOK", "LEFT",
                                "TOK/DAY", "TPD", "DAY", "LEFT", "IN", "FLIGHT", "MAX", "MODE"]
    rows = {line.split()[1]: line.split() for line in lines[1:-1]}
    # team-a: 3 requests, 100 + 2 * 50 = 200 weighted tokens of 1000 per window and 5000 per day
    assert rows["team-a"][:11] == ["tenant", "team-a", "3", "-", "-", "200", "1000", "800", "200", "5000", "4800"]
    assert rows["team-b"][2] == "0" and "dry-run," in rows["team-b"]
    assert rows["team-z"][:6] == ["tenant", "team-z", "0", "-", "-", "7"]  # counters, no budget
    assert kid not in result.stdout
    with_keys = run_usage_tool("--policy", str(path), "--keys", "--json", "--redis-url", redis_url)
    records = [json.loads(line) for line in with_keys.stdout.splitlines()]
    key_row = next(r for r in records if r["scope"] == "key")
    assert key_row["id"] == kid and key_row["requests_window"] == 3 and key_row["requests_left"] == 97


@pytest.mark.parametrize("args, env, code, message", [
    ((), {}, 2, "no Redis URL"),
    (("--redis-url", "http://x"), {}, 2, "must start with"),
    (("--redis-url", "redis://:s3cret@127.0.0.1:1/0"), {}, 1, "cannot read redis://***@127.0.0.1:1/0"),
])
def test_usage_tool_errors(args, env, code, message) -> None:
    result = run_usage_tool(*args, env=env)
    assert result.returncode == code and message in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


# ---------------------------------------------------------------------- policy diff (reload and review)

@pytest.mark.parametrize("old, new, effect_", [
    ("", "budgets: {per_key: {requests_per_minute: 5}}", "tightens"),
    ("budgets: {per_key: {requests_per_minute: 5}}", "", "loosens"),
    ("budgets: {per_key: {requests_per_minute: 5}}", "budgets: {per_key: {requests_per_minute: 6}}", "loosens"),
    ("budgets: {per_key: {requests_per_minute: 5}}", "budgets: {per_key: {requests_per_minute: 4}}", "tightens"),
    ("budgets: {per_key: {requests_per_minute: 5, tokens_per_day: 9}}", "budgets: {per_key: {requests_per_minute: 5}}",
     "loosens"),
    ("budgets: {per_key: {requests_per_minute: 5}}", "budgets: {per_key: {requests_per_minute: 5, dry_run: true}}",
     "loosens"),
    ("budgets: {per_key: {tokens_per_day: 5, dry_run: true}}", "budgets: {per_key: {tokens_per_day: 1, dry_run: true}}",
     "neutral"),
    ("budgets: {per_key: {tokens_per_day: 5, on_redis_error: closed}}", "budgets: {per_key: {tokens_per_day: 5}}",
     "loosens"),
    ("budgets: {per_key: {tokens_per_day: 5}}", "budgets: {weights: {output: 0.5}, per_key: {tokens_per_day: 5}}",
     "loosens"),
    ("budgets: {per_key: {tokens_per_day: 5}}", "budgets: {window_seconds: 10, per_key: {tokens_per_day: 5}}",
     "loosens"),
    ("budgets: {tenants: {team-a: {tokens_per_day: 5}}}", "budgets: {tenants: {team-a: {tokens_per_day: 4}}}",
     "tightens"),
])
def test_budget_changes_are_classified(old, new, effect_) -> None:
    from ext_authz.policy_diff import compare, effect

    changes = compare(policy(old), policy(new))
    assert changes and all(c.area == "budgets" for c in changes)
    assert effect(changes) == effect_


# ---------------------------------------------------------------------- configuration of both services

@pytest.mark.parametrize("argv, env, url, refresh", [
    ([], {}, None, 0.25),
    ([], {"KEYRELAY_REDIS_URL": "redis://:pw@r:6379/0"}, "redis://:pw@r:6379/0", 0.25),
    (["--redis-url", "redis://a:1/0"], {"KEYRELAY_REDIS_URL": "redis://b:2/0"}, "redis://a:1/0", 0.25),
    (["--budget-refresh-seconds", "0.05"], {}, None, 0.05),
    ([], {"KEYRELAY_BUDGET_REFRESH_SECONDS": "2"}, None, 2.0),
])
def test_ext_authz_budget_settings(argv, env, url, refresh) -> None:
    from ext_authz.settings import resolve_config

    cfg = resolve_config(argv, env)
    assert (cfg.redis_url, cfg.budget_refresh_seconds) == (url, refresh)
    assert "pw" not in repr(cfg)


@pytest.mark.parametrize("argv, problem", [
    (["--redis-url", "http://:s3cret@r/0"], "must start with redis://"),
    (["--budget-refresh-seconds", "0"], "between 0.01 and 10"),
    (["--budget-refresh-seconds", "11"], "between 0.01 and 10"),
])
def test_ext_authz_bad_budget_settings(argv, problem) -> None:
    from ext_authz.settings import resolve_config
    from ext_authz.settings import SettingsError

    with pytest.raises(SettingsError, match=problem) as info:
        resolve_config(argv, {})
    assert "s3cret" not in str(info.value)


def test_translator_redis_url_setting() -> None:
    from translator.settings import ConfigError, load_settings

    s = load_settings([], {"KEYRELAY_REDIS_URL": "redis://:s3cret@r:6379/0"})
    assert s.redis_url == "redis://:s3cret@r:6379/0"
    assert "s3cret" not in repr(s) and s.public_dict()["redis_url"] == "redis://***@r:6379/0"
    assert load_settings(["--redis-url", "redis://x:1/0"], {}).redis_url == "redis://x:1/0"
    assert load_settings([], {}).redis_url is None
    with pytest.raises(ConfigError, match="must start with") as info:
        load_settings([], {"KEYRELAY_REDIS_URL": "http://:s3cret@r"})
    assert "s3cret" not in str(info.value)


# ---------------------------------------------------------------------- the real service process

def test_service_with_two_workers_enforces_one_budget_and_reports_the_store(redis_server, redis_url,
                                                                             tmp_path) -> None:
    """keyrelay-ext-authz --workers 2 over real gRPC: each worker has its own tracker; Redis joins them. The
    budget is spent after exactly its limit once the workers refreshed, whichever worker answers; a hot reload
    that raises the limit is applied (after the quiet period) and the store gauge is exported."""
    from .helpers import running_service

    path = tmp_path / "policy.yaml"
    path.write_text(BASE + "budgets: {tenants: {team-b: {requests_per_minute: 4}}}\n")
    env = {kb.REDIS_URL_ENV: redis_url, "KEYRELAY_BUDGET_REFRESH_SECONDS": "0.05"}
    with running_service(path, env=env, workers=2, extra_args=["--loosen-quiet-seconds", "0"]) as svc:
        answers = []
        for _ in range(8):
            answers.append(svc.check({"x-api-key": KEY_B}, route="messages").WhichOneof("http_response"))
            time.sleep(0.3)  # several refreshes: every worker has seen the others' requests
        assert answers == ["ok_response"] * 4 + ["denied_response"] * 4
        assert svc.metric("keyrelay_ext_authz_budget_store_up") == 2  # one series per worker
        assert svc.metric("keyrelay_ext_authz_decisions_total", result="deny",
                          reason="budget_requests_per_minute") == 4
        path.write_text(BASE + "budgets: {tenants: {team-b: {requests_per_minute: 100}}}\n")
        deadline = time.monotonic() + 10
        while svc.check({"x-api-key": KEY_B}, route="messages").WhichOneof("http_response") != "ok_response":
            assert time.monotonic() < deadline, "the raised limit was not applied"
            time.sleep(0.1)
