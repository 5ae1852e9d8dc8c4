"""Identity extraction and decisions, table-driven, including hostile input."""

from __future__ import annotations

import pytest

from ext_authz.decide import KEY_ID_LENGTH, decide, key_digest
from ext_authz.extract import RequestHeaders, extract_key, headers_from_header_map, headers_from_map
from ext_authz.policy import builtin_policy, parse_policy

from .helpers import check_request

KEY = "sk-test-alpha-0123456789"
OTHER = "sk-test-bravo-9876543210"
REVOKED = "sk-test-revoked-00000000"
TEAM_KEY = "sk-test-team-key-1111111"

POLICY = parse_policy(f"""
version: 1
passthrough: true
require_key: true
key_sources: [x-api-key, authorization]
conflicting_keys: reject
key_format: '^sk-[A-Za-z0-9._-]{{8,256}}$'
revoked:
  - sha256: {key_digest(REVOKED)}
routes:
  root: {{require_key: false}}
  health: {{require_key: false, passthrough: false}}
  lenient: {{conflicting_keys: first, key_sources: [authorization, x-api-key], key_format: null}}
""", "test-policy.yaml")

ALLOWLIST_POLICY = parse_policy(f"""
version: 1
allowlist:
  - sha256: {key_digest(TEAM_KEY)}
    tenant: team-a
  - sha256: {key_digest(REVOKED)}
    tenant: team-r
revoked:
  - sha256: {key_digest(REVOKED)}
""", "allow.yaml")


def H(api_key=None, authorization=None) -> RequestHeaders:  # noqa: N802
    wrap = lambda v: () if v is None else (v if isinstance(v, tuple) else (v,))  # noqa: E731
    return RequestHeaders(api_key=wrap(api_key), authorization=wrap(authorization))


CASES = [
    # name, policy, route, headers, allowed, reason, status
    ("x-api-key", POLICY, "messages", H(KEY), True, "passthrough", 200),
    ("bearer", POLICY, "messages", H(authorization=f"Bearer {KEY}"), True, "passthrough", 200),
    ("bearer lower-case scheme", POLICY, "messages", H(authorization=f"bearer {KEY}"), True, "passthrough", 200),
    ("bearer upper-case scheme", POLICY, "messages", H(authorization=f"BEARER {KEY}"), True, "passthrough", 200),
    ("bearer extra spaces", POLICY, "messages", H(authorization=f"Bearer   {KEY}  "), True, "passthrough", 200),
    ("both, same value", POLICY, "messages", H(KEY, f"Bearer {KEY}"), True, "passthrough", 200),
    ("both, different", POLICY, "messages", H(KEY, f"Bearer {OTHER}"), False, "conflicting_keys", 400),
    ("both, different, first wins", POLICY, "lenient", H(KEY, f"Bearer {OTHER}"), True, "passthrough", 200),
    ("no key", POLICY, "messages", H(), False, "missing_key", 401),
    ("no key, default route", POLICY, "default", H(), False, "missing_key", 401),
    ("no key, unknown route uses defaults", POLICY, "whatever", H(), False, "missing_key", 401),
    ("no key on root", POLICY, "root", H(), True, "no_key", 200),
    ("key on health, passthrough off", POLICY, "health", H(KEY), True, "passthrough_off", 200),
    ("revoked", POLICY, "messages", H(REVOKED), False, "revoked", 403),
    ("revoked on an open route", POLICY, "root", H(REVOKED), False, "revoked", 403),
    ("bad format", POLICY, "messages", H("not-a-key-format"), False, "key_format", 400),
    ("format off on route", POLICY, "lenient", H(authorization="Bearer anything-goes"), True, "passthrough", 200),
    ("empty x-api-key", POLICY, "messages", H(""), False, "malformed_key", 400),
    ("blank x-api-key", POLICY, "messages", H("   "), False, "malformed_key", 400),
    ("empty bearer", POLICY, "messages", H(authorization="Bearer"), False, "malformed_key", 400),
    ("bearer with spaces only", POLICY, "messages", H(authorization="Bearer    "), False, "malformed_key", 400),
    ("basic scheme", POLICY, "messages", H(authorization="Basic dXNlcjpwYXNz"), False, "malformed_key", 400),
    ("token without scheme", POLICY, "messages", H(authorization=KEY), False, "malformed_key", 400),
    ("comma (joined repeats)", POLICY, "messages", H(f"{KEY},{OTHER}"), False, "malformed_key", 400),
    ("repeated header (raw)", POLICY, "messages", H((KEY, KEY)), False, "malformed_key", 400),
    ("CRLF injection", POLICY, "messages", H(f"{KEY}\r\nx-authz-tenant: admin"), False, "malformed_key", 400),
    ("NUL byte", POLICY, "messages", H(f"{KEY}\x00"), False, "malformed_key", 400),
    ("tab inside", POLICY, "messages", H("sk-a\tb-0123456789"), False, "malformed_key", 400),
    ("space inside bearer token", POLICY, "messages", H(authorization=f"Bearer {KEY} extra"), False,
     "malformed_key", 400),
    ("unicode lookalike", POLICY, "messages", H("sk-tеst-0123456789"), False, "malformed_key", 400),
    ("emoji", POLICY, "messages", H("sk-🔑-0123456789"), False, "malformed_key", 400),
    ("invalid utf-8 (surrogate escaped)", POLICY, "messages", H("sk-\udcff-0123456789"), False,
     "malformed_key", 400),
    ("huge value", POLICY, "messages", H("sk-" + "a" * 100_000), False, "malformed_key", 400),
    ("huge bearer", POLICY, "messages", H(authorization="Bearer " + "a" * 100_000), False, "malformed_key", 400),
    ("malformed bearer next to good x-api-key", POLICY, "messages", H(KEY, "Basic abc"), False,
     "malformed_key", 400),
    ("allowlisted", ALLOWLIST_POLICY, "messages", H(TEAM_KEY), True, "passthrough", 200),
    ("not allowlisted", ALLOWLIST_POLICY, "messages", H(KEY), False, "not_allowlisted", 403),
    ("revoked wins over allowlist", ALLOWLIST_POLICY, "messages", H(REVOKED), False, "revoked", 403),
    ("builtin: any well-formed key", builtin_policy(), "messages", H("whatever-key"), True, "passthrough", 200),
    ("builtin: root open", builtin_policy(), "root", H(), True, "no_key", 200),
]


@pytest.mark.parametrize("name,policy,route,headers,allowed,reason,status", CASES, ids=[c[0] for c in CASES])
def test_decisions(name, policy, route, headers, allowed, reason, status) -> None:
    d = decide(policy, route, headers)
    assert (d.allowed, d.reason, d.status) == (allowed, reason, status)
    assert d.route == route
    if not allowed:
        assert d.message and d.error_type
        for secret in (KEY, OTHER, REVOKED, TEAM_KEY, "dXNlcjpwYXNz"):
            assert secret not in d.message
    # The Decision's repr never shows the key.
    for secret in (KEY, OTHER, REVOKED, TEAM_KEY):
        assert secret not in repr(d)


def test_allow_carries_identity() -> None:
    d = decide(ALLOWLIST_POLICY, "messages", H(authorization=f"Bearer {TEAM_KEY}"))
    assert d.key_id == key_digest(TEAM_KEY)[:KEY_ID_LENGTH] and len(d.key_id) == 16
    assert d.tenant == "team-a" and d.credential == "passthrough" and d.forward_key == TEAM_KEY


def test_passthrough_off_validates_but_does_not_forward() -> None:
    d = decide(POLICY, "health", H(KEY))
    assert d.credential == "fallback" and d.forward_key is None and d.key_id


def test_no_key_fallback_has_no_identity() -> None:
    d = decide(POLICY, "root", H())
    assert d.credential == "fallback" and d.key_id == "" and d.forward_key is None


def test_first_mode_uses_first_source_in_policy_order() -> None:
    d = decide(POLICY, "lenient", H(KEY, f"Bearer {OTHER}"))
    assert d.forward_key == OTHER  # lenient lists authorization first


def test_key_sources_limit_what_is_read() -> None:
    policy = parse_policy("version: 1\nkey_sources: [x-api-key]\n", "p")
    assert decide(policy, "messages", H(authorization=f"Bearer {KEY}")).reason == "missing_key"
    # A conflicting bearer is ignored when it is not a source.
    assert decide(policy, "messages", H(KEY, f"Bearer {OTHER}")).forward_key == KEY


def test_headers_from_map_and_header_map_agree() -> None:
    headers = {"x-api-key": KEY, "authorization": f"Bearer {KEY}", "x-authz-tenant": "evil", "x-authz-foo": "1",
               "content-type": "application/json"}
    from_map = headers_from_map(check_request(headers).attributes.request.http.headers)
    from_raw = headers_from_header_map(check_request(headers, raw=True).attributes.request.http.header_map.headers)
    assert (from_map.api_key, from_map.authorization) == (from_raw.api_key, from_raw.authorization)
    assert sorted(from_map.authz_headers) == sorted(from_raw.authz_headers)
    assert set(from_map.authz_headers) == {"x-authz-tenant", "x-authz-foo"}


def test_header_map_keeps_repeats_apart_and_marks_invalid_utf8() -> None:
    req = check_request([("X-Api-Key", KEY), ("x-api-key", OTHER), ("authorization", b"Bearer sk-\xff\xfe-123456789")],
                        raw=True)
    view = headers_from_header_map(req.attributes.request.http.header_map.headers)
    assert view.api_key == (KEY, OTHER)
    assert extract_key(view, POLICY.default).reason == "malformed_key"
    only_auth = RequestHeaders(authorization=view.authorization)
    assert "non-ASCII" in extract_key(only_auth, POLICY.default).message


@pytest.mark.parametrize("value,fragment", [
    ("", "is empty"),
    ("sk-" + "x" * 2000, "longer than 1024"),
    ("sk-é-123", "non-ASCII"),
    ("sk-\x7f-123", "control characters"),
    ("sk-a,sk-b", "comma"),
])
def test_messages_are_clear(value: str, fragment: str) -> None:
    found = extract_key(H(value), POLICY.default)
    assert found.reason == "malformed_key" and fragment in found.message and "x-api-key" in found.message
