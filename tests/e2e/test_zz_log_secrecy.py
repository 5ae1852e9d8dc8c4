"""After a full run with known keys, no log of any process (Envoy, ext_authz, translator, keyrelay-stack and its
children) contains a key; the fingerprints are there instead. Runs last (file name) so it reads the output of
every process the session started, after stopping them all; it also drives every key path itself, so it is
meaningful on its own."""

from __future__ import annotations

import time

import anthropic
import pytest

from tests.e2e.conftest import (ALL_KEYS, ALL_PROCS, KEY_ALPHA, KEY_BRAVO, KEY_MALFORMED, KEY_REVOKED, key_id,
                                sdk_client)
from tests.support.upstream import openai_error, openai_stream_tool_call

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "hello"}]


def _drive_every_path(stack, fallback_stack, contract_envoy) -> None:
    url = stack.envoy.url
    sdk_client(url, KEY_ALPHA).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    sdk_client(url, bearer=KEY_BRAVO).messages.create(model="anthropic/claude-test", max_tokens=8, messages=MSG)
    stack.upstream.push(openai_stream_tool_call("call_1", "get_weather", {"city": "Paris"}))
    with sdk_client(url, KEY_ALPHA).messages.stream(model="claude-sonnet-4-5", max_tokens=8, messages=MSG) as s:
        s.get_final_message()
    for key, bearer in ((KEY_REVOKED, None), (KEY_MALFORMED, None), (KEY_ALPHA, KEY_BRAVO), (None, None)):
        with pytest.raises(anthropic.APIStatusError):
            sdk_client(url, key, bearer=bearer).messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                                                messages=MSG)
    # An upstream that echoes the key in its error (as OpenAI does for a wrong key).
    stack.upstream.push(openai_error(401, f"Incorrect API key provided: {KEY_BRAVO}", "invalid_api_key"))
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk_client(url, bearer=KEY_BRAVO).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    assert KEY_BRAVO not in info.value.response.text
    fallback_stack.envoy.client().messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)
    fallback_stack.envoy.client().messages.create(model="anthropic/claude-test", max_tokens=8, messages=MSG)
    contract_envoy.client(KEY_ALPHA).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MSG)


def test_no_process_log_contains_a_key(stack, fallback_stack, contract_envoy, up, recorder):
    _drive_every_path(stack, fallback_stack, contract_envoy)
    assert set(up.keys) >= {KEY_ALPHA, KEY_BRAVO}  # the keys really travelled (to the upstream only)
    time.sleep(0.6)  # Envoy flushes its access log every 200 ms, the translator its log lines every 250 ms
    # Stop every process (SIGTERM: graceful, so buffered and shutdown-time output is included). This is the
    # last test of the run; the session fixtures' own teardown then finds them stopped.
    for proc in ALL_PROCS:
        proc.stop()

    names = {p.name for p in ALL_PROCS}
    assert {"envoy", "ext_authz", "translator", "envoy_fallback", "ext_authz_fallback"} <= names
    leaks = [(proc.name, key) for proc in ALL_PROCS for key in ALL_KEYS if key in proc.output]
    assert leaks == []
    # Positive control: the same logs do carry the fingerprints.
    envoy_log = next(p for p in ALL_PROCS if p.name == "envoy").output
    assert key_id(KEY_ALPHA) in envoy_log and key_id(KEY_BRAVO) in envoy_log
    assert key_id(KEY_REVOKED) in next(p for p in ALL_PROCS if p.name == "ext_authz").output
    assert key_id(KEY_ALPHA) in next(p for p in ALL_PROCS if p.name == "translator").output
    # Nothing that looks like a key header made it into any log line either.
    for proc in ALL_PROCS:
        lowered = proc.output.lower()
        assert "bearer sk-" not in lowered and "x-api-key: sk-" not in lowered, proc.name
