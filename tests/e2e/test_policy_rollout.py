"""Through real Envoy + ext_authz + translator: request correlation (the x-request-id Envoy set is the
`request_id` of the ext_authz denial, the decision log and the Envoy access-log line), and a dry-run rule rolled
out on live traffic (the request is allowed, the would-be denial is logged and counted by reason and route)."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import anthropic
import pytest

from tests.e2e.conftest import (KEY_ALPHA, KEY_BRAVO, KEY_REVOKED, Envoy, key_id, marker, start_envoy,
                                start_ext_authz, write_policy)
from tests.support.procs import Proc

pytestmark = pytest.mark.e2e
MSG = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def rollout(translator: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Envoy, Proc]]:
    """The session policy plus a dry-run `key_format` only alpha-style keys pass, and a decision log of
    everything (how a team rolls out a tighter key format)."""
    tmp = tmp_path_factory.mktemp("rollout")
    policy = write_policy(tmp / "policy.yaml",
                          dry_run={"key_format": r"^sk-e2e-alpha-[a-z0-9-]+$"}, decision_log={"mode": "all"})
    authz = start_ext_authz(policy, name="ext_authz_rollout", REQUIRE_PASSTHROUGH_KEY="true")
    envoy = start_envoy("envoy_rollout", ext_authz_port=authz.port, translator_port=translator.port, tmp=tmp)
    yield envoy, authz
    envoy.stop()
    authz.stop()


def authz_lines(proc: Proc, msg: str, request_id: str, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [entry for entry in (json.loads(line) for line in list(proc.lines) if line.startswith("{"))
                 if entry.get("msg") == msg and entry.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def metric(proc: Proc, name: str, **labels: str) -> float:
    ready = next(line for line in proc.lines if line.startswith("ready:"))
    http_addr = ready.rsplit(" ", 1)[1]
    with urllib.request.urlopen(f"http://{http_addr}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def test_a_denial_shares_request_id_with_the_access_log(rollout, up) -> None:
    envoy, authz = rollout
    ua = marker()
    with pytest.raises(anthropic.PermissionDeniedError):
        envoy.client(KEY_REVOKED).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                                                  extra_headers={"user-agent": ua})
    assert up.requests == []
    entry = envoy.log_entry(lambda e: e.get("user_agent") == ua)
    request_id = entry["request_id"]
    assert entry["status"] == 403 and entry["authz_reason"] == "revoked" and len(request_id) == 36
    [deny] = authz_lines(authz, "deny", request_id)
    assert deny["reason"] == "revoked" and deny["key_id"] == key_id(KEY_REVOKED) == entry["key_id"]
    [decision] = authz_lines(authz, "decision", request_id)
    assert decision["result"] == "deny" and decision["route"] == "messages"
    assert decision["policy"] == hashlib.sha256(Path(authz.argv[-1]).read_bytes()).hexdigest()[:12]


def test_dry_run_rule_allows_logs_and_counts(rollout, up) -> None:
    envoy, authz = rollout
    before = metric(authz, "keyrelay_ext_authz_dry_run_denials_total", reason="key_format", route="messages")
    ua = marker()
    reply = envoy.client(bearer=KEY_BRAVO).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                                                           extra_headers={"user-agent": ua})
    assert reply.content[0].text == "Hello!"
    assert [r.api_key for r in up.requests] == [KEY_BRAVO]          # allowed, with the caller's own key
    entry = envoy.log_entry(lambda e: e.get("user_agent") == ua)
    assert entry["status"] == 200 and entry["key_id"] == key_id(KEY_BRAVO)
    [dry] = authz_lines(authz, "dry-run deny", entry["request_id"])
    assert dry["reason"] == "key_format" and dry["route"] == "messages" and dry["key_id"] == key_id(KEY_BRAVO)
    [decision] = authz_lines(authz, "decision", entry["request_id"])
    assert decision["result"] == "allow" and decision["dry_run"] is True
    assert decision["dry_run_reason"] == "key_format" and decision["key_id"] == key_id(KEY_BRAVO)
    assert metric(authz, "keyrelay_ext_authz_dry_run_denials_total", reason="key_format",
                  route="messages") == before + 1

    # A key the new format accepts: allowed, no dry-run line, the decision log says so.
    ua = marker()
    envoy.client(KEY_ALPHA).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                                            extra_headers={"user-agent": ua})
    entry = envoy.log_entry(lambda e: e.get("user_agent") == ua)
    [decision] = authz_lines(authz, "decision", entry["request_id"])
    assert decision["dry_run"] is False and authz_lines(authz, "dry-run deny", entry["request_id"], 0.2) == []
    assert KEY_ALPHA not in authz.output and KEY_BRAVO not in authz.output
