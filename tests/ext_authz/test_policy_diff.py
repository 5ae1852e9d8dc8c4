"""The pure policy comparison behind the reload's quiet period and `keyrelay-policy diff`: every aspect, both
directions, table-driven."""

from __future__ import annotations

import pytest

from ext_authz.policy import parse_policy
from ext_authz.policy_diff import LOOSENS, NEUTRAL, NONE, TIGHTENS, classify, compare

A, B = "a" * 64, "b" * 64
BASE = f"""\
version: 1
key_format: '^sk-.+$'
allowlist:
  - {{sha256: {A}, tenant: team-a}}
revoked: [{{sha256: {B}}}]
routes:
  root: {{require_key: false}}
"""


def with_(*pairs: tuple[str, str]) -> str:
    text = BASE
    for old, new in pairs:
        assert old in text
        text = text.replace(old, new, 1)
    return text


TOP = "version: 1\n"
CASES = [
    ("nothing", BASE, NONE),
    ("comment only", BASE + "# note\n", NONE),
    ("require_key off", with_((TOP, TOP + "require_key: false\n")), LOOSENS),
    ("passthrough off", with_((TOP, TOP + "passthrough: false\n")), LOOSENS),
    ("conflicting keys first", with_((TOP, TOP + "conflicting_keys: first\n")), LOOSENS),
    ("longer keys", with_((TOP, TOP + "max_key_length: 4096\n")), LOOSENS),
    ("shorter keys", with_((TOP, TOP + "max_key_length: 100\n")), TIGHTENS),
    ("one key source", with_((TOP, TOP + "key_sources: [authorization]\n")), TIGHTENS),
    ("sources reordered", with_((TOP, TOP + "key_sources: [authorization, x-api-key]\n")), LOOSENS),
    ("key_format removed", with_(("key_format: '^sk-.+$'\n", "")), LOOSENS),
    ("key_format changed", with_(("'^sk-.+$'", "'^sk-[a-z]+$'")), LOOSENS),
    ("key allowed", with_(("revoked:", f"  - {{sha256: {'c' * 64}, tenant: t}}\nrevoked:")), LOOSENS),
    ("key no longer allowed", with_((f"  - {{sha256: {A}, tenant: team-a}}\n", "")), TIGHTENS),
    ("tenant changed", with_(("tenant: team-a", "tenant: team-b")), LOOSENS),
    ("allowlist removed", with_(("allowlist:\n", "allowlist_gone:\n")).replace(
        f"allowlist_gone:\n  - {{sha256: {A}, tenant: team-a}}\n", ""), LOOSENS),
    ("revocation gone", with_((f"revoked: [{{sha256: {B}}}]", "revoked: []")), LOOSENS),
    ("revocation half-written", with_((f"revoked: [{{sha256: {B}}}]", "revoked:")).split("routes:")[0], LOOSENS),
    ("key revoked", with_(("revoked: [", f"revoked: [{{sha256: {'c' * 64}}}, ")), TIGHTENS),
    ("route override loosened", with_(("root: {require_key: false}", "root: {require_key: false}\n"
                                       "  messages: {key_format: null}")), LOOSENS),
    ("route override tightened", with_(("root: {require_key: false}", "root: {require_key: true}")), TIGHTENS),
    ("route override removed", with_(("routes:\n  root: {require_key: false}\n", "")), TIGHTENS),
    ("tighten and loosen together", with_(("tenant: team-a", "tenant: team-b"),
                                          (TOP, TOP + "max_key_length: 100\n")), LOOSENS),
    ("dry-run added", BASE + "dry_run: {require_key: true, key_format: null}\n", NEUTRAL),
    ("decision log on", BASE + "decision_log: {mode: all}\n", NEUTRAL),
]


@pytest.mark.parametrize("name,new,expected", CASES, ids=[c[0] for c in CASES])
def test_classify(name: str, new: str, expected: str) -> None:
    old = parse_policy(BASE)
    assert classify(old, parse_policy(new)) == expected
    if expected in (TIGHTENS, LOOSENS):  # the reverse edit goes the other way (or stays loosening)
        back = classify(parse_policy(new), old)
        assert back in (LOOSENS,) if expected == TIGHTENS else back in (TIGHTENS, LOOSENS)


def test_a_route_change_inherited_from_the_defaults_is_reported_once() -> None:
    old = parse_policy(BASE)
    new = parse_policy(with_((TOP, TOP + "require_key: false\n")))
    assert [c.what for c in compare(old, new)] == ["defaults.require_key: true -> false"]


def test_dry_run_changes_are_described_but_neutral() -> None:
    old = parse_policy(BASE + "dry_run: {max_key_length: 200}\n")
    new = parse_policy(BASE + "dry_run: {max_key_length: 100, require_key: true}\n")
    changes = compare(old, new)
    assert [c.what for c in changes] == ["dry_run: defaults.max_key_length: 200 -> 100 (would tighten)"]
    assert {c.effect for c in changes} == {NEUTRAL}
