"""The real Claude Code CLI pointed at Envoy with a personal key: it completes a prompt that needs one tool
call, and the upstream sees that personal key on every request."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import KEY_CLAUDE_CODE, key_id
from tests.support import claude_code

pytestmark = [pytest.mark.e2e, pytest.mark.claude_code]


def _authorized(envoy) -> list[dict]:
    return [e for e in envoy.access_log()
            if e.get("route") == "messages" and e.get("key_id") == key_id(KEY_CLAUDE_CODE)]


@pytest.fixture(scope="module")
def claude():
    return claude_code.require()


@pytest.mark.parametrize("credential", ["api_key", "auth_token"])
def test_claude_code_through_envoy_with_a_personal_key(claude, stack, up, tmp_path, credential):
    """ANTHROPIC_API_KEY arrives at Envoy as x-api-key, ANTHROPIC_AUTH_TOKEN as Authorization: Bearer; either
    way ext_authz forwards it and the upstream bills that key."""
    marker = "keyrelay-e2e-marker-41c9"
    note = tmp_path / "note.txt"
    note.write_text(marker + "\n")
    final = f"The note says {marker}. Done."
    up.default = claude_code.tool_round_trip(f"cat {note}", final)
    time.sleep(0.3)  # earlier access-log lines are flushed (every 200 ms) before counting
    before = len(_authorized(stack.envoy))
    try:
        result = claude_code.run(f"Show me the content of {note}", base_url=stack.envoy.url, cwd=tmp_path,
                                 claude=claude, **{credential: KEY_CLAUDE_CODE})
    finally:
        up.default = None
    assert result.ok, result.describe()
    assert final in result.text
    assert result.result["num_turns"] >= 2

    # Upstream: the personal key on every request, and the tool's real output came back.
    assert len(up.requests) >= 2
    assert up.keys == [KEY_CLAUDE_CODE] * len(up.requests)
    assert all("x-api-key" not in r.headers for r in up.requests)
    tool_msgs = [m for r in up.requests for m in r.body["messages"] if m.get("role") == "tool"]
    assert tool_msgs and marker in json.dumps(tool_msgs[0]["content"])

    # Envoy: every API call was authorized on that key (probes like HEAD / need none).
    expected = len([r for r in up.requests if r.path.endswith("/chat/completions")])
    deadline = time.monotonic() + 5  # the access log is flushed every 200 ms
    while True:
        mine = _authorized(stack.envoy)[before:]
        if len(mine) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(mine) == expected
    assert all(e["status"] == 200 and e["credential"] == "passthrough" for e in mine)
    assert all((e["user_agent"] or "").startswith("claude-cli/") for e in mine)


def test_claude_code_demo_conversation_on_keyrelay_stack(claude, tmp_path):
    """`make run` with no provider: the printed settings let Claude Code hold a demo conversation with one tool
    call answered by the built-in demo upstream."""
    from keyrelay_stack.cli import DEMO_KEY
    from tests.e2e.test_stack_cli import start_stack

    (tmp_path / "demo-file.txt").write_text("x\n")
    proc, port = start_stack()
    try:
        base_url = next(line.split("=", 1)[1] for line in proc.lines
                        if line.strip().startswith("export ANTHROPIC_BASE_URL="))
        result = claude_code.run("use the Bash tool to run `ls`", base_url=base_url, api_key=DEMO_KEY,
                                 cwd=tmp_path, claude=claude)
    finally:
        assert proc.stop() == 0
    assert base_url == f"http://127.0.0.1:{port}"
    assert result.ok, result.describe()
    assert result.text.startswith("keyrelay demo upstream: the tool Bash returned:")
    assert "demo-file.txt" in result.text  # Bash really ran `ls` in the working directory
    demo_lines = [line for line in proc.lines if line.startswith("[demo] ") and "POST" in line]
    assert any("reply=tool_call(Bash)" in line for line in demo_lines)
