"""Keys end to end: what the upstream receives for each way a client sends its key, what is refused, and what
Envoy + ext_authz hand to the translator (the header contract of ARCHITECTURE.md)."""

from __future__ import annotations

import anthropic
import pytest

from tests.e2e.conftest import (KEY_ALPHA, KEY_BRAVO, KEY_MALFORMED, KEY_REVOKED, STATIC_ANTHROPIC_KEY,
                                STATIC_OPENAI_KEY, key_id, marker, sdk_client)

pytestmark = pytest.mark.e2e

FORGED = {"x-authz-key-id": "forged-key-id", "x-authz-credential": "passthrough", "x-authz-tenant": "evil-corp",
          "x-authz-extra": "forged"}
MSG = [{"role": "user", "content": "Say hello"}]

# model -> (upstream style, path the upstream must see)
UPSTREAMS = {
    "openai": ("claude-sonnet-4-5", "/v1/chat/completions"),
    "anthropic": ("anthropic/claude-test", "/v1/messages"),
}


def _status_error(call) -> anthropic.APIStatusError:
    with pytest.raises(anthropic.APIStatusError) as info:
        call()
    return info.value


def _assert_anthropic_error(err: anthropic.APIStatusError, status: int, error_type: str) -> None:
    assert err.status_code == status, err
    assert err.response.headers["content-type"].startswith("application/json")
    body = err.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize("style", sorted(UPSTREAMS))
@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
def test_personal_key_reaches_upstream_unchanged(stack, up, style, how):
    key = KEY_ALPHA if how == "x-api-key" else KEY_BRAVO
    model, path = UPSTREAMS[style]
    ua = marker()
    client = stack.envoy.client(key) if how == "x-api-key" else stack.envoy.client(bearer=key)
    reply = client.messages.create(model=model, max_tokens=64, messages=MSG,
                                   extra_headers={**FORGED, "user-agent": ua})
    assert reply.content[0].text == "Hello!"

    assert len(up.requests) == 1
    seen = up.requests[0]
    assert seen.path == path
    assert seen.api_key == key
    if style == "openai":
        assert seen.headers["authorization"] == f"Bearer {key}"
        assert "x-api-key" not in seen.headers  # the client's x-api-key never travels upstream
    else:
        assert seen.headers["x-api-key"] == key  # Anthropic's own credential header, set by the translator
        assert "authorization" not in seen.headers
    assert not [h for h in seen.headers if h.startswith("x-authz-")]

    entry = stack.envoy.log_entry(lambda e: e.get("user_agent") == ua)
    assert entry["status"] == 200 and entry["route"] == "messages"
    assert entry["key_id"] == key_id(key)
    assert entry["credential"] == "passthrough"


def test_require_key_and_no_key_is_401_and_upstream_untouched(stack, up):
    err = _status_error(lambda: stack.envoy.client().messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                                                      messages=MSG))
    _assert_anthropic_error(err, 401, "authentication_error")
    assert up.requests == []


@pytest.mark.parametrize("style,static", [("openai", STATIC_OPENAI_KEY), ("anthropic", STATIC_ANTHROPIC_KEY)])
def test_key_not_required_and_no_key_uses_static_key(fallback_stack, up, style, static):
    model, path = UPSTREAMS[style]
    ua = marker()
    reply = fallback_stack.envoy.client().messages.create(model=model, max_tokens=8, messages=MSG,
                                                          extra_headers={"user-agent": ua})
    assert reply.content[0].text == "Hello!"
    assert [(r.path, r.api_key) for r in up.requests] == [(path, static)]
    entry = fallback_stack.envoy.log_entry(lambda e: e.get("user_agent") == ua)
    assert entry["credential"] == "fallback" and entry["key_id"] is None and entry["status"] == 200


def test_key_not_required_but_sent_is_still_passed_through(fallback_stack, up):
    fallback_stack.envoy.client(KEY_ALPHA).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    assert up.keys == [KEY_ALPHA]


DENIALS = [
    # (name, x-api-key, bearer, status, error type)
    ("revoked", KEY_REVOKED, None, 403, "permission_error"),
    ("revoked-bearer", None, KEY_REVOKED, 403, "permission_error"),
    ("malformed", KEY_MALFORMED, None, 400, "invalid_request_error"),
    ("wrong-format", "sk-short", None, 400, "invalid_request_error"),
    ("conflicting", KEY_ALPHA, KEY_BRAVO, 400, "invalid_request_error"),
]


@pytest.mark.parametrize("name,key,bearer,status,error_type", DENIALS, ids=[d[0] for d in DENIALS])
def test_denials_have_anthropic_bodies_and_never_reach_upstream(stack, up, name, key, bearer, status, error_type):
    ua = marker()
    client = sdk_client(stack.envoy.url, key, bearer=bearer)
    err = _status_error(lambda: client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                                                       extra_headers={"user-agent": ua}))
    _assert_anthropic_error(err, status, error_type)
    assert up.requests == []
    entry = stack.envoy.log_entry(lambda e: e.get("user_agent") == ua)
    assert entry["status"] == status and entry["flags"] == "UAEX" and entry["authz_reason"]


def test_same_key_in_both_headers_is_not_a_conflict(stack, up):
    sdk_client(stack.envoy.url, KEY_ALPHA, bearer=KEY_ALPHA).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    assert up.keys == [KEY_ALPHA]


# ---------------------------------------------------------------- what the translator receives


def test_translator_receives_one_bearer_credential_and_true_identity(contract_envoy, recorder):
    contract_envoy.client(KEY_ALPHA).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                                                     extra_headers=FORGED)
    (seen,) = recorder.requests
    assert seen.headers["authorization"] == f"Bearer {KEY_ALPHA}"
    assert "x-api-key" not in seen.headers
    assert seen.headers["x-authz-key-id"] == key_id(KEY_ALPHA)
    assert seen.headers["x-authz-credential"] == "passthrough"
    assert "x-authz-tenant" not in seen.headers  # the policy knows no tenant for this key; the forged one is gone
    assert "x-authz-extra" not in seen.headers


def test_translator_receives_fallback_marker_without_any_credential(contract_envoy, recorder):
    contract_envoy.client().messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                                            extra_headers=FORGED)
    (seen,) = recorder.requests
    assert seen.headers["x-authz-credential"] == "fallback"
    assert "authorization" not in seen.headers and "x-api-key" not in seen.headers
    assert "x-authz-key-id" not in seen.headers and "x-authz-tenant" not in seen.headers
    assert "x-authz-extra" not in seen.headers


# ---------------------------------------------------------------- tenants (allowlist)


@pytest.fixture(scope="module")
def tenant_envoy(e2e_tmp, contract_recorder):
    import hashlib

    from tests.e2e.conftest import start_envoy, start_ext_authz, write_policy

    policy = write_policy(e2e_tmp / "tenant-policy.yaml",
                          allowlist=[{"sha256": hashlib.sha256(KEY_ALPHA.encode()).hexdigest(), "tenant": "team-a"}])
    authz = start_ext_authz(policy, name="ext_authz_tenant")
    envoy = start_envoy("envoy_tenant", ext_authz_port=authz.port, translator_port=contract_recorder.port,
                        tmp=e2e_tmp)
    yield envoy
    envoy.stop()
    authz.stop()


def test_allowlisted_key_carries_its_tenant_and_others_are_403(tenant_envoy, recorder):
    ua = marker()
    tenant_envoy.client(KEY_ALPHA).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                                                   extra_headers={**FORGED, "user-agent": ua})
    (seen,) = recorder.requests
    assert seen.headers["x-authz-tenant"] == "team-a"  # the policy's, not the forged one
    assert seen.headers["x-authz-key-id"] == key_id(KEY_ALPHA)
    entry = tenant_envoy.log_entry(lambda e: e.get("user_agent") == ua)
    assert (entry["tenant"], entry["key_id"], entry["credential"]) == ("team-a", key_id(KEY_ALPHA), "passthrough")

    recorder.reset()
    err = _status_error(lambda: tenant_envoy.client(KEY_BRAVO).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=MSG))
    _assert_anthropic_error(err, 403, "permission_error")
    assert recorder.requests == []
