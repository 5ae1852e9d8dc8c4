"""Dry-run (shadow) rules: what the `dry_run:` section would deny, table-driven on the pure decision, and the
Authorizer answering allow while logging and counting the would-be denial."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from ext_authz.decide import decide, key_digest
from ext_authz.extract import RequestHeaders
from ext_authz.metrics import Metrics
from ext_authz.policy import PolicyError, parse_policy
from ext_authz.reload import PolicyStore
from ext_authz.server import Authorizer
from ext_authz.settings import EnvOverrides, apply_overrides

from .helpers import check_request

KEY = "sk-dry-alpha-0123456789"
TEAM = "sk-dry-team-0123456789"
OLD_STYLE = "legacy_key_0123456789"

BASE = f"""\
version: 1
require_key: false
key_format: '^[A-Za-z0-9_-]{{8,64}}$'
routes:
  health: {{require_key: false, passthrough: false}}
"""


def policy(dry_run: str, base: str = BASE):
    return parse_policy(base + "dry_run:\n" + "".join(f"  {line}\n" for line in dry_run.splitlines()), "p.yaml")


def H(api_key=None, authorization=None) -> RequestHeaders:  # noqa: N802
    return RequestHeaders(api_key=() if api_key is None else (api_key,),
                          authorization=() if authorization is None else (authorization,))


REQUIRE = policy("require_key: true")
FORMAT = policy("key_format: '^sk-[A-Za-z0-9-]{8,64}$'")
ALLOW = policy(f"allowlist:\n  - {{sha256: {key_digest(TEAM)}, tenant: team-a}}")
REVOKE = policy(f"revoked:\n  - {{sha256: {key_digest(KEY)}, note: leaked}}")
ROUTE_ONLY = policy("routes:\n  messages: {require_key: true, key_sources: [x-api-key]}")
HEALTH_TOO = policy("require_key: true\nroutes:\n  health: {require_key: true}")

CASES = [
    # name, policy, route, headers, live reason (allowed), would-be dry-run denial ("" = none)
    ("require_key rollout: no key", REQUIRE, "messages", H(), "no_key", "missing_key"),
    ("require_key rollout: with key", REQUIRE, "messages", H(KEY), "passthrough", ""),
    ("require_key: live route override still wins", REQUIRE, "health", H(), "no_key", ""),
    ("require_key: dry_run.routes win over the live route", HEALTH_TOO, "health", H(), "no_key", "missing_key"),
    ("tighter key_format: old style key", FORMAT, "messages", H(OLD_STYLE), "passthrough", "key_format"),
    ("tighter key_format: new style key", FORMAT, "messages", H(KEY), "passthrough", ""),
    ("new allowlist: listed key", ALLOW, "messages", H(TEAM), "passthrough", ""),
    ("new allowlist: unlisted key", ALLOW, "messages", H(KEY), "passthrough", "not_allowlisted"),
    ("new allowlist: no key on an open route", ALLOW, "messages", H(), "no_key", ""),
    ("revocation preview", REVOKE, "messages", H(KEY), "passthrough", "revoked"),
    ("revocation preview: other key", REVOKE, "messages", H(TEAM), "passthrough", ""),
    ("route-only rule on its route", ROUTE_ONLY, "messages", H(authorization=f"Bearer {KEY}"), "passthrough",
     "missing_key"),
    ("route-only rule elsewhere", ROUTE_ONLY, "models", H(authorization=f"Bearer {KEY}"), "passthrough", ""),
]


@pytest.mark.parametrize("name,pol,route,headers,live_reason,dry_reason", CASES, ids=[c[0] for c in CASES])
def test_dry_run_decisions(name, pol, route, headers, live_reason, dry_reason) -> None:
    live = decide(pol, route, headers)
    assert live.allowed and live.reason == live_reason       # the live policy alone decides the answer
    shadow = decide(pol.shadow, route, headers)
    assert ("" if shadow.allowed else shadow.reason) == dry_reason


def test_no_dry_run_section_means_no_shadow() -> None:
    assert parse_policy(BASE).shadow is None
    assert parse_policy(BASE + "dry_run:\n").shadow is None


def test_environment_overrides_reach_the_shadow() -> None:
    """REQUIRE_PASSTHROUGH_KEY / PASSTHROUGH_API_KEY change the live defaults; the shadow is rebuilt on them."""
    pol = apply_overrides(FORMAT, EnvOverrides(require_key=True))
    assert pol.default.require_key and pol.shadow.default.require_key
    assert pol.shadow.default.key_format.pattern == "^sk-[A-Za-z0-9-]{8,64}$"
    assert decide(pol.shadow, "messages", H()).reason == "missing_key"


BAD = [
    ("passthrough: false", 2, "unknown field 'passthrough' in dry_run"),
    ("require_key: sometimes", 2, "dry_run.require_key must be true or false"),
    ("key_format: '(['", 2, "dry_run.key_format is not a valid regular expression"),
    ("routes:\n  default: {require_key: true}", 3, "not dry_run.routes.default"),
    ("routes:\n  messages: {tenant: x}", 3, "unknown field 'tenant' in dry_run.routes.messages"),
    ("allowlist:\n  - sha256: sk-plaintext-key", 3, "sha256 must be 64 hexadecimal characters"),
    ("revoked: nope", 2, "dry_run.revoked must be a list"),
]


@pytest.mark.parametrize("section,offset,problem", BAD, ids=[b[2] for b in BAD])
def test_invalid_dry_run_sections(section: str, offset: int, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy(section)
    assert info.value.line == BASE.count("\n") + offset and problem in str(info.value)
    assert "sk-plaintext-key" not in str(info.value)


def test_authorizer_allows_and_logs_and_counts_the_would_be_denial(caplog) -> None:
    registry = CollectorRegistry()
    authorizer = Authorizer(PolicyStore(FORMAT), Metrics(registry))
    with caplog.at_level(logging.INFO, logger="ext_authz.check"):
        resp = authorizer.check(check_request({"x-api-key": OLD_STYLE}, route="messages", request_id="rid-dry-1"))
        ok = authorizer.check(check_request({"x-api-key": KEY}, route="messages", request_id="rid-dry-2"))
    assert resp.WhichOneof("http_response") == "ok_response" and resp.status.code == 0
    assert ok.WhichOneof("http_response") == "ok_response"
    assert registry.get_sample_value("keyrelay_ext_authz_dry_run_denials_total",
                                     {"reason": "key_format", "route": "messages"}) == 1
    assert registry.get_sample_value("keyrelay_ext_authz_decisions_total",
                                     {"result": "allow", "reason": "passthrough", "route": "messages"}) == 2
    lines = [r for r in caplog.records if r.getMessage() == "dry-run deny"]
    assert len(lines) == 1
    assert (lines[0].reason, lines[0].route, lines[0].request_id) == ("key_format", "messages", "rid-dry-1")
    assert lines[0].key_id == key_digest(OLD_STYLE)[:16]
    assert OLD_STYLE not in json.dumps([r.__dict__ for r in caplog.records], default=str)


def test_a_live_denial_is_not_also_a_dry_run_denial() -> None:
    registry = CollectorRegistry()
    pol = policy("key_format: '^sk-.*$'", base=BASE.replace("require_key: false", "require_key: true"))
    authorizer = Authorizer(PolicyStore(pol), Metrics(registry))
    resp = authorizer.check(check_request({}, route="messages"))
    assert resp.denied_response.status.code == 401
    assert registry.get_sample_value("keyrelay_ext_authz_dry_run_denials_total",
                                     {"reason": "missing_key", "route": "messages"}) is None
