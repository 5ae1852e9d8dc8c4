"""ext_authz down or hanging: Envoy fails closed with 503 (Anthropic shape) within its ext_authz timeout, and
nothing reaches the translator or the upstream."""

from __future__ import annotations

import signal
import time

import anthropic
import pytest

from tests.e2e.conftest import (KEY_ALPHA, HangingServer, authz_timeout_s, free_port, marker, start_envoy,
                                start_ext_authz)

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "hello"}]
SLACK_S = 1.5  # scheduling slack on a loaded 2-core machine


def _call_503(envoy, up) -> float:
    ua = marker()
    start = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as info:
        envoy.client(KEY_ALPHA, timeout=20).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG,
                                                            extra_headers={"user-agent": ua})
    elapsed = time.monotonic() - start
    err = info.value
    assert err.status_code == 503
    assert err.response.headers["content-type"].startswith("application/json")
    body = err.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "authorization" in body["error"]["message"]
    assert up.requests == []
    entry = envoy.log_entry(lambda e: e.get("user_agent") == ua)
    assert entry["flags"] == "UAEX" and entry["details"] == "ext_authz_error" and entry["upstream_host"] is None
    return elapsed


@pytest.fixture(scope="module")
def envoy_without_authz(translator, e2e_tmp):
    envoy = start_envoy("envoy_no_authz", ext_authz_port=free_port(), translator_port=translator.port, tmp=e2e_tmp)
    yield envoy
    envoy.stop()


@pytest.fixture(scope="module")
def hanging():
    server = HangingServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def envoy_hanging_authz(translator, hanging, e2e_tmp):
    envoy = start_envoy("envoy_hanging_authz", ext_authz_port=hanging.port, translator_port=translator.port,
                        tmp=e2e_tmp)
    yield envoy
    envoy.stop()


def test_authz_never_started_is_503_at_once(envoy_without_authz, up):
    assert _call_503(envoy_without_authz, up) < authz_timeout_s() + SLACK_S


def test_authz_hanging_is_503_after_the_timeout(envoy_hanging_authz, hanging, up):
    elapsed = _call_503(envoy_hanging_authz, up)
    assert hanging.accepted, "Envoy never connected to the hanging server"
    timeout = authz_timeout_s()
    assert timeout * 0.9 <= elapsed < timeout + SLACK_S


def test_envoy_liveness_does_not_depend_on_authz(envoy_hanging_authz):
    import httpx

    assert httpx.get(envoy_hanging_authz.url + "/envoy-healthz", timeout=5).status_code == 200


def test_authz_killed_is_503_and_recovers_when_back(translator, policy_file, up, e2e_tmp):
    authz = start_ext_authz(policy_file, name="ext_authz_killed", REQUIRE_PASSTHROUGH_KEY="true")
    envoy = start_envoy("envoy_killed_authz", ext_authz_port=authz.port, translator_port=translator.port,
                        tmp=e2e_tmp)
    try:
        envoy.client(KEY_ALPHA).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
        assert up.keys == [KEY_ALPHA]
        up.reset()
        authz.stop(signal.SIGKILL)
        assert _call_503(envoy, up) < authz_timeout_s() + SLACK_S
        # Back on the same port: Envoy reconnects by itself.
        authz = start_ext_authz(policy_file, name="ext_authz_restarted", grpc_port=authz.port,
                                REQUIRE_PASSTHROUGH_KEY="true")
        envoy.client(KEY_ALPHA).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
        assert up.keys == [KEY_ALPHA]
    finally:
        envoy.stop()
        authz.stop()


def test_translator_down_is_a_distinct_503(stack, up, e2e_tmp):
    """Authorized, but nothing listens where the translator should: Envoy's own 503, in the Anthropic shape and
    with a message that tells it apart from an authorization outage."""
    envoy = start_envoy("envoy_no_translator", ext_authz_port=stack.ext_authz.port, translator_port=free_port(),
                        tmp=e2e_tmp)
    try:
        with pytest.raises(anthropic.APIStatusError) as info:
            envoy.client(KEY_ALPHA).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    finally:
        envoy.stop()
    err = info.value
    assert err.status_code == 503
    body = err.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["error"]["message"].startswith("upstream service unavailable")
    assert up.requests == []
