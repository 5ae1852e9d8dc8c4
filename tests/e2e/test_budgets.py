"""Budgets end to end: real Envoy, real ext_authz, real translator, a real redis-server and a scripted upstream
that reports usage. Two complete paths (Envoy -> ext_authz -> translator, twice) share one Redis, so every
budget here is shared by two ext_authz and two translator processes.

- tokens per minute: spent by the usage the translators add, then 429 rate_limit_error with retry-after, and
  allowed again once the window ends; a stream in flight when the budget is spent still finishes;
- requests per minute likewise, counted by both ext_authz processes;
- a dry-run budget denies nothing, and its would-be denials are counted;
- Redis killed under load: a fail-open budget keeps answering 200, a fail-closed one answers 503 api_error,
  and both work normally once Redis is back.

The policy's `window_seconds` shortens the minute window so that the tests do not wait a minute.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import anthropic
import pytest
import redis

import keyrelay_budgets as kb
from tests import dashboard
from tests.support.redis import RedisServer
from tests.support.upstream import ScriptedUpstream, openai_chunk, openai_completion, openai_stream, openai_usage_chunk

from .conftest import Envoy, key_id, start_envoy, start_ext_authz, start_translator, write_policy

pytestmark = pytest.mark.e2e

WINDOW = 4  # seconds: the policy's window_seconds
PROMPT, COMPLETION = 30, 10  # what the scripted upstream reports for every answer: 40 tokens
KEYS = {
    "tpm": "sk-e2e-budget-tpm-0001",
    "rpm": "sk-e2e-budget-rpm-0002",
    "dry": "sk-e2e-budget-dry-0003",
    "open": "sk-e2e-budget-open-0004",
    "closed": "sk-e2e-budget-closed-0005",
    "stream": "sk-e2e-budget-stream-0006",
    "conc": "sk-e2e-budget-conc-0007",
}
BUDGETS = {
    "weights": {"input": 1, "output": 1},
    "window_seconds": WINDOW,
    "tenants": {
        "team-tpm": {"tokens_per_minute": 200},          # 5 answers of 40 tokens
        "team-rpm": {"requests_per_minute": 4},
        "team-dry": {"requests_per_minute": 1, "dry_run": True},
        "team-open": {"tokens_per_day": 10 ** 9},        # on_redis_error: open (the default)
        "team-closed": {"tokens_per_day": 10 ** 9, "on_redis_error": "closed"},
        "team-stream": {"tokens_per_minute": 80},
        "team-conc": {"concurrent_requests": 1},
    },
}
REFRESH = "0.1"
USER = [{"role": "user", "content": "hello"}]
MODEL = "claude-sonnet-4-5"


class BudgetStacks:
    def __init__(self, redis_server: RedisServer, envoys: list[Envoy], authz: list, translators: list,
                 upstream: ScriptedUpstream) -> None:
        self.redis, self.envoys, self.authz, self.translators, self.upstream = (redis_server, envoys, authz,
                                                                                 translators, upstream)

    def redis_now(self) -> float:
        sec, usec = self.redis.client().time()
        return sec + usec / 1e6

    def at_window_start(self, within: float = 0.4) -> None:
        """Wait until Redis' clock is just past a window boundary, so a short sequence fits one window."""
        while self.redis_now() % WINDOW > within:
            time.sleep(0.05)

    def window(self, scope: str, ident: str, which: str = "m") -> dict[str, int]:
        now = self.redis_now()
        bucket = int(now // (WINDOW if which == "m" else kb.DAY_SECONDS))
        raw = self.redis.client().hgetall(kb.window_key(scope, ident, which, bucket))
        return {k.decode(): int(v) for k, v in raw.items()}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BudgetStacks]:
    tmp: Path = tmp_path_factory.mktemp("budgets")
    server = RedisServer().start()
    upstream = ScriptedUpstream(default=openai_completion(
        usage={"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION}))
    upstream.start()
    allowlist = [{"sha256": __import__("hashlib").sha256(k.encode()).hexdigest(), "tenant": f"team-{name}"}
                 for name, k in KEYS.items()]
    policy = write_policy(tmp / "policy.yaml", allowlist=allowlist, budgets=BUDGETS)
    env = {kb.REDIS_URL_ENV: server.url}
    started: list = []
    try:
        authz = [started.append(p) or p for p in (
            start_ext_authz(policy, name=f"ext_authz_budget_{i}", KEYRELAY_BUDGET_REFRESH_SECONDS=REFRESH, **env)
            for i in range(2))]
        translators = [started.append(p) or p for p in (start_translator(upstream.url, **env) for _ in range(2))]
        envoys = [started.append(e) or e for e in (
            start_envoy(f"envoy_budget_{i}", ext_authz_port=authz[i].port, translator_port=translators[i].port,
                        tmp=tmp, access_log=False) for i in range(2))]
        yield BudgetStacks(server, envoys, authz, translators, upstream)
    finally:
        for proc in reversed(started):
            proc.stop()
        upstream.close()
        server.stop()


def ask(envoy: Envoy, name: str):
    """One request with the key of `name`: the SDK's parsed message, or the APIStatusError it raised."""
    try:
        return envoy.client(KEYS[name]).messages.create(model=MODEL, max_tokens=16, messages=USER)
    except anthropic.APIStatusError as exc:
        return exc


def status(answer) -> int:
    return answer.status_code if isinstance(answer, anthropic.APIStatusError) else 200


def test_tokens_per_minute_shared_by_two_paths_then_429_then_recovers(stacks: BudgetStacks) -> None:
    stacks.at_window_start()
    answers = []
    for i in range(10):
        answers.append(ask(stacks.envoys[i % 2], "tpm"))  # alternate: two ext_authz, two translators
        if status(answers[-1]) == 429:
            break
        time.sleep(0.25)  # > refresh + write: each answer's usage is seen before the next request
    statuses = [status(a) for a in answers]
    assert statuses[-1] == 429 and statuses[:-1] == [200] * 5, statuses  # 5 x 40 = 200 tokens: spent
    denied = answers[-1]
    assert isinstance(denied, anthropic.RateLimitError)
    assert denied.response.json()["error"]["type"] == "rate_limit_error"
    retry = int(denied.response.headers["retry-after"])
    assert 1 <= retry <= WINDOW
    # Both translators added usage and both ext_authz counted requests: one shared counter.
    counts = stacks.window("tenant", "team-tpm")
    assert counts["input"] == 5 * PROMPT and counts["output"] == 5 * COMPLETION and counts["requests"] == 5
    assert status(ask(stacks.envoys[0], "tpm")) == 429 and status(ask(stacks.envoys[1], "tpm")) == 429
    time.sleep(retry + 0.2)
    assert status(ask(stacks.envoys[0], "tpm")) == 200  # the next window


def test_requests_per_minute_then_429_then_recovers(stacks: BudgetStacks) -> None:
    stacks.at_window_start()
    statuses = []
    for i in range(6):
        statuses.append(status(answer := ask(stacks.envoys[i % 2], "rpm")))
        time.sleep(0.2)
    assert statuses == [200] * 4 + [429] * 2, statuses
    assert isinstance(answer, anthropic.RateLimitError)
    retry = int(answer.response.headers["retry-after"])
    assert 1 <= retry <= WINDOW
    time.sleep(retry + 0.2)
    assert status(ask(stacks.envoys[1], "rpm")) == 200


def test_a_stream_in_flight_is_not_cut_when_its_budget_is_spent(stacks: BudgetStacks) -> None:
    stacks.at_window_start()
    stacks.upstream.push(openai_stream([openai_chunk({"role": "assistant", "content": ""}),
                                        *[openai_chunk({"content": f"part {i} "}) for i in range(8)],
                                        openai_chunk({}, finish_reason="stop"),
                                        openai_usage_chunk(PROMPT, COMPLETION)], frame_delay_s=0.15))
    texts: list[str] = []

    def stream() -> None:
        with stacks.envoys[0].client(KEYS["stream"]).messages.stream(model=MODEL, max_tokens=64,
                                                                     messages=USER) as s:
            texts.append(s.get_final_text())

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.3)  # the stream is open; now spend team-stream's budget (80 tokens) on the other path
    assert [status(ask(stacks.envoys[1], "stream")) for _ in range(2)] == [200, 200]
    time.sleep(0.3)
    assert status(ask(stacks.envoys[1], "stream")) == 429
    t.join(10)
    assert texts and texts[0] == "".join(f"part {i} " for i in range(8))  # finished, not cut


def test_concurrent_requests_limit_a_tenant_across_both_paths(stacks: BudgetStacks) -> None:
    stacks.upstream.push(openai_stream([openai_chunk({"role": "assistant", "content": ""}),
                                        *[openai_chunk({"content": "x"}) for _ in range(8)],
                                        openai_chunk({}, finish_reason="stop"),
                                        openai_usage_chunk(PROMPT, COMPLETION)], frame_delay_s=0.15))
    done: list[str] = []

    def stream() -> None:
        with stacks.envoys[0].client(KEYS["conc"]).messages.stream(model=MODEL, max_tokens=64, messages=USER) as s:
            done.append(s.get_final_text())

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.5)  # the stream is in flight and both ext_authz refreshed since
    busy = ask(stacks.envoys[1], "conc")
    assert status(busy) == 429 and busy.response.json()["error"]["type"] == "rate_limit_error"
    assert busy.response.headers["retry-after"] == "1"
    t.join(10)
    assert done == ["x" * 8]
    time.sleep(0.5)  # the translator recorded the end; the next refresh sees it
    assert status(ask(stacks.envoys[1], "conc")) == 200
    assert status(ask(stacks.envoys[0], "conc")) == 200  # sequential requests never overlap


def test_dry_run_budget_denies_nothing_and_counts(stacks: BudgetStacks) -> None:
    stacks.at_window_start()
    statuses = []
    for i in range(4):
        statuses.append(status(ask(stacks.envoys[i % 2], "dry")))
        time.sleep(0.2)
    assert statuses == [200] * 4
    assert stacks.window("tenant", "team-dry")["requests"] == 4
    would = 0.0
    for authz in stacks.authz:
        families = dashboard.fetch_metrics(f"http://127.0.0.1:{authz.http_port}/metrics")
        would += sum(v for (name, labels), v in _samples(families).items()
                     if name == "keyrelay_ext_authz_dry_run_denials_total"
                     and dict(labels).get("reason") == "budget_requests_per_minute")
    assert would == 3  # every request after the first would have been denied


def _samples(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_redis_killed_under_load_follows_each_budgets_mode(stacks: BudgetStacks) -> None:
    """Both budgets under steady load while Redis goes away and comes back. The phases are found from the
    answers themselves (no fixed time windows, which a loaded machine stretches): while Redis is down the
    fail-closed budget turns from 200 to 503 once and stays 503, the fail-open one never leaves 200; once
    Redis is back the fail-closed one turns to 200 and stays there."""
    results: dict[str, list[int]] = {"open": [], "closed": []}
    stop = threading.Event()

    def load(name: str, envoy: Envoy) -> None:
        while not stop.is_set():
            results[name].append(status(ask(envoy, name)))
            time.sleep(0.05)

    def wait_for_run(name: str, want: int, start: int, run: int = 6, timeout: float = 20.0) -> int:
        """The index in results[name] where `run` consecutive `want` answers after `start` end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tail = results[name][start:]
            for i in range(len(tail) - run + 1):
                if tail[i:i + run] == [want] * run:
                    return start + i + run
            time.sleep(0.05)
        raise AssertionError(f"{name}: no {run} consecutive {want} answers within {timeout} s: {results[name][start:]}")

    threads = [threading.Thread(target=load, args=(name, stacks.envoys[i])) for i, name in enumerate(results)]
    for t in threads:
        t.start()
    try:
        wait_for_run("open", 200, 0)
        wait_for_run("closed", 200, 0)
        killed = {n: len(r) for n, r in results.items()}
        stacks.redis.kill()
        down_end = wait_for_run("closed", 503, killed["closed"])  # stale after ~1 s plus the socket timeout
        time.sleep(0.5)
        back = {n: len(r) for n, r in results.items()}
        stacks.redis.start()
        wait_for_run("closed", 200, back["closed"])
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    before = {n: set(r[:killed[n]]) for n, r in results.items()}
    assert before == {"open": {200}, "closed": {200}}
    assert set(results["open"]) == {200}  # fail open: never denied, before, during and after the outage
    down = results["closed"][killed["closed"]:back["closed"]]
    first = down.index(503)
    assert set(down[:first]) <= {200} and set(down[first:]) == {503}  # 200 until stale, then 503 only
    assert down_end <= back["closed"]
    after = results["closed"][back["closed"]:]
    recovered = after.index(200)
    assert set(after[:recovered]) <= {503} and set(after[recovered:]) == {200}  # 503 until fresh, then 200 only
    assert status(ask(stacks.envoys[1], "closed")) == 200
    text = "\n".join(line for p in (*stacks.authz, *stacks.translators) for line in p.lines)
    assert text.count("budget store unreachable") <= 4  # logged once per process, not per request


def test_redis_password_is_used_and_never_logged(tmp_path: Path) -> None:
    """A Redis with a password: both services authenticate with the URL's password, and neither prints it, also
    not when Redis goes away."""
    secret = "s3cret-budget-pass-77"
    server = RedisServer(password=secret).start()
    upstream = ScriptedUpstream(default=openai_completion(
        usage={"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION}))
    upstream.start()
    digest = __import__("hashlib").sha256(KEYS["rpm"].encode()).hexdigest()
    policy = write_policy(tmp_path / "policy.yaml", allowlist=[{"sha256": digest, "tenant": "team-rpm"}],
                          budgets={"tenants": {"team-rpm": {"requests_per_minute": 2}}})
    env = {kb.REDIS_URL_ENV: server.url}
    procs: list = []
    try:
        authz = start_ext_authz(policy, name="ext_authz_budget_pw", KEYRELAY_BUDGET_REFRESH_SECONDS=REFRESH, **env)
        procs.append(authz)
        translator = start_translator(upstream.url, **env)
        procs.append(translator)
        envoy = start_envoy("envoy_budget_pw", ext_authz_port=authz.port, translator_port=translator.port,
                            tmp=tmp_path, access_log=False)
        procs.append(envoy)
        statuses = []
        for _ in range(3):
            statuses.append(status(ask(envoy, "rpm")))
            time.sleep(0.3)
        assert statuses == [200, 200, 429]  # counted in the password-protected Redis
        assert int(server.client().hget(
            kb.window_key("tenant", "team-rpm", "d", int(time.time() // kb.DAY_SECONDS)), "input")) == 2 * PROMPT
        server.kill()
        time.sleep(1.5)
        ask(envoy, "rpm")  # the translator's write fails too
        time.sleep(1.0)
        output = "\n".join(line for p in (authz, translator) for line in p.lines)
        assert output.count("budget store unreachable") >= 2 and "redis://***@127.0.0.1" in output
        assert secret not in output
    finally:
        for proc in reversed(procs):
            proc.stop()
        upstream.close()
        server.stop()
