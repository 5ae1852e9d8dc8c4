"""Policy loading: the example file, the built-in defaults, every error names file:line, env overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ext_authz.policy import PolicyError, builtin_policy, load_policy, parse_policy, with_defaults
from ext_authz.settings import EnvOverrides, SettingsError, apply_overrides, env_overrides

REPO = Path(__file__).resolve().parents[2]
D1 = "a" * 64
D2 = "b" * 64


def test_example_policy_loads() -> None:
    policy = load_policy(REPO / "examples" / "policy.yaml")
    assert policy.default.passthrough and policy.default.require_key
    assert policy.default.key_sources == ("x-api-key", "authorization")
    assert policy.default.key_format is not None and policy.default.key_format.fullmatch("sk-abcdefgh123")
    assert policy.for_route("root").require_key is False
    assert policy.for_route("health").passthrough is False
    assert policy.for_route("messages") is policy.default
    assert len(policy.revoked) == 1 and policy.allowlist is None
    assert len(policy.digest) == 64


def test_full_policy_merges_routes_over_defaults() -> None:
    policy = parse_policy(textwrap.dedent(f"""\
        version: 1
        passthrough: true
        require_key: true
        key_sources: [authorization, X-API-Key]
        conflicting_keys: first
        key_format: '^sk-.+$'
        max_key_length: 200
        allowlist:
          - sha256: {D1.upper()}
            tenant: team-a
          - {{sha256: {D2}, tenant: team-b, note: "laptop key"}}
        revoked: []
        routes:
          count_tokens: {{require_key: false}}
          health: {{passthrough: false, key_format: null}}
        """), "p.yaml")
    assert policy.allowlist == {D1: "team-a", D2: "team-b"}
    assert policy.revoked == frozenset()
    assert policy.default.key_sources == ("authorization", "x-api-key")
    ct = policy.for_route("count_tokens")
    assert ct.require_key is False and ct.conflicting_keys == "first" and ct.max_key_length == 200
    assert policy.for_route("health").key_format is None
    assert policy.for_route("health").passthrough is False


BAD = [
    ("", None, "empty"),
    ("version: 1\npassthrough: yes please\n", 2, "passthrough must be true or false"),
    ("version: 2\n", 1, "unsupported version 2"),
    ("passthrough: true\n", 1, "missing field 'version'"),
    ("version: 1\nrequire_kye: true\n", 2, "unknown field 'require_kye'"),
    ("version: 1\npassthrough: true\npassthrough: false\n", 3, "duplicate key 'passthrough'"),
    ("version: 1\nkey_sources: [x-api-key, cookie]\n", 2, "unknown key source 'cookie'"),
    ("version: 1\nkey_sources: []\n", 2, "at least one source"),
    ("version: 1\nkey_sources: [x-api-key, x-api-key]\n", 2, "listed twice"),
    ("version: 1\nconflicting_keys: merge\n", 2, "conflicting_keys must be one of"),
    ("version: 1\n\nkey_format: '^sk-(['\n", 3, "not a valid regular expression"),
    ("version: 1\nmax_key_length: 0\n", 2, "max_key_length must be between"),
    ("version: 1\nallowlist:\n  - sha256: nothex\n    tenant: a\n", 3, "64 hexadecimal"),
    ("version: 1\nallowlist:\n  - sha256: sk-live-secret-key\n", 3, "never the key itself"),
    (f"version: 1\nallowlist:\n  - sha256: {D1}\n", 3, "no tenant"),
    (f"version: 1\nallowlist:\n  - sha256: {D1}\n    tenant: 'bad tenant'\n", 4, "tenant must be"),
    (f"version: 1\nrevoked:\n  - sha256: {D1}\n  - sha256: {D1}\n", 4, "listed twice"),
    (f"version: 1\nrevoked:\n  - sha256: {D1}\n    tenant: x\n", 4, "unknown field 'tenant'"),
    ("version: 1\nrevoked: {sha256: x}\n", 2, "must be a list"),
    ("version: 1\nroutes:\n  messages:\n    passthru: false\n", 4, "unknown field 'passthru' in routes.messages"),
    ("version: 1\nroutes:\n  default: {require_key: false}\n", 3, "top-level fields"),
    ("version: 1\nroutes:\n  Bad Route: {}\n", 3, "route name"),
    ("version: 1\nroutes: [a]\n", 2, "routes must be a mapping"),
    ("version: 1\npassthrough: [true]\n", 2, "must be a single value"),
    ("version: 1\nkey_format: ['a']\n", 2, "must be a single value"),
    ("version: 1\n  bad: indent\n", 2, "invalid YAML"),
    ("- a\n- b\n", 1, "the policy must be a mapping"),
]


@pytest.mark.parametrize("text,line,problem", BAD)
def test_invalid_policies_name_file_line_and_problem(text: str, line: int | None, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "/etc/keyrelay/policy.yaml")
    err = info.value
    assert problem in str(err)
    assert err.line == line
    assert str(err).startswith("/etc/keyrelay/policy.yaml" + (f":{line}:" if line else ":"))
    assert "\n" not in str(err)


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "nope.yaml")


def test_builtin_policy_requires_and_forwards_keys() -> None:
    policy = builtin_policy()
    assert policy.default.passthrough and policy.default.require_key and policy.allowlist is None
    assert policy.for_route("root").require_key is False
    assert policy.for_route("health").passthrough is False


@pytest.mark.parametrize("env,expected", [
    ({}, EnvOverrides()),
    ({"PASSTHROUGH_API_KEY": "TRUE"}, EnvOverrides(passthrough=True)),
    ({"PASSTHROUGH_API_KEY": "false", "REQUIRE_PASSTHROUGH_KEY": "False"}, EnvOverrides(False, False)),
    ({"REQUIRE_PASSTHROUGH_KEY": " true "}, EnvOverrides(require_key=True)),
    ({"PASSTHROUGH_API_KEY": ""}, EnvOverrides()),
    ({"PASSTHROUGH_API_KEY": "1", "REQUIRE_PASSTHROUGH_KEY": "no"}, EnvOverrides(True, False)),  # the shared words
])
def test_env_overrides_parse(env: dict[str, str], expected: EnvOverrides) -> None:
    assert env_overrides(env) == expected


@pytest.mark.parametrize("value", ["truthy", "2", "y", "enabled"])
def test_env_overrides_reject_other_values(value: str) -> None:
    with pytest.raises(SettingsError, match="PASSTHROUGH_API_KEY must be true or false"):
        env_overrides({"PASSTHROUGH_API_KEY": value})


def test_env_overrides_beat_file_defaults_but_not_route_fields() -> None:
    policy = parse_policy("version: 1\npassthrough: true\nrequire_key: true\nroutes:\n"
                          "  health: {passthrough: false}\n  models: {}\n", "p.yaml")
    result = apply_overrides(policy, EnvOverrides(require_key=False))
    assert result.default.require_key is False
    assert result.for_route("models").require_key is False        # inherits the new default
    assert result.for_route("health").passthrough is False        # the route pinned it
    assert result.for_route("health").require_key is False


@pytest.mark.parametrize("policy_text,overrides", [
    ("version: 1\npassthrough: true\n", EnvOverrides(passthrough=False, require_key=True)),
    ("version: 1\npassthrough: false\n", EnvOverrides(require_key=True)),
])
def test_require_without_passthrough_is_an_error(policy_text: str, overrides: EnvOverrides) -> None:
    with pytest.raises(PolicyError, match="REQUIRE_PASSTHROUGH_KEY=true needs passthrough on"):
        apply_overrides(parse_policy(policy_text, "p.yaml"), overrides)


def test_file_may_require_a_key_without_passthrough() -> None:
    policy = apply_overrides(parse_policy("version: 1\npassthrough: false\nrequire_key: true\n", "p"), EnvOverrides())
    assert policy.default.require_key and not policy.default.passthrough


def test_with_defaults_keeps_other_fields() -> None:
    policy = parse_policy(f"version: 1\nrevoked: [{{sha256: {D1}}}]\n", "p")
    changed = with_defaults(policy, passthrough=False)
    assert changed.revoked == policy.revoked and changed.digest == policy.digest
