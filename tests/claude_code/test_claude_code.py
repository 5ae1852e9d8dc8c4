"""The real Claude Code CLI against the translator, with a scripted OpenAI upstream that first asks for one
Bash tool call and then answers. Claude Code must run the tool, send its result back and print the answer."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.support import claude_code
from tests.support.upstream import ScriptedUpstream
from tests.translator.server import TranslatorServer, translator_settings

pytestmark = pytest.mark.claude_code

KEY = "sk-claude-code-user-0001"


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class Observe:
    """ASGI wrapper recording what reached the translator (observation only; the app is unchanged)."""

    def __init__(self, app) -> None:
        self.app = app
        self.seen: list[Seen] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        parts: list[bytes] = []

        async def recv():
            msg = await receive()
            if msg["type"] == "http.request":
                parts.append(msg.get("body", b""))
            return msg

        try:
            await self.app(scope, recv, send)
        finally:
            self.seen.append(Seen(scope["method"], scope["path"], scope["query_string"].decode(),
                                  {k.decode().lower(): v.decode() for k, v in scope["headers"]}, b"".join(parts)))


@pytest.fixture(scope="module")
def claude():
    return claude_code.require()


@pytest.mark.parametrize("credential", ["api_key", "auth_token"])
def test_claude_code_runs_a_tool_through_the_translator(claude, tmp_path, credential):
    """ANTHROPIC_API_KEY arrives as x-api-key (direct use); ANTHROPIC_AUTH_TOKEN as Authorization: Bearer
    (the header contract behind Envoy)."""
    marker = "keyrelay-marker-7f3a"
    (tmp_path / "note.txt").write_text(marker + "\n")
    final = "The note says keyrelay-marker-7f3a. Done."
    observed: list[Observe] = []

    def wrap(app):
        observed.append(Observe(app))
        return observed[0]

    with ScriptedUpstream(default=claude_code.tool_round_trip(f"cat {tmp_path / 'note.txt'}", final)) as up:
        srv = TranslatorServer(translator_settings(OPENAI_BASE_URL=up.url + "/v1"), wrap=wrap).start()
        try:
            result = claude_code.run(f"Show me the content of {tmp_path / 'note.txt'}", base_url=srv.url,
                                     cwd=tmp_path, claude=claude, **{credential: KEY})
        finally:
            srv.stop()

    assert result.ok, result.describe()
    assert final in result.text
    assert result.result["num_turns"] >= 2

    seen = observed[0].seen
    posts = [s for s in seen if s.method == "POST" and s.path == "/v1/messages"]
    assert posts, [(s.method, s.path) for s in seen]
    assert all(s.query == "beta=true" for s in posts)
    if credential == "api_key":
        assert all(s.headers.get("x-api-key") == KEY for s in posts)
    else:
        assert all(s.headers.get("authorization") == f"Bearer {KEY}" for s in posts)
    assert all("anthropic-version" in s.headers for s in posts)
    bodies = [json.loads(s.body) for s in posts]
    assert all(b.get("stream") is True for b in bodies)
    assert any(len(b.get("tools") or []) > 5 for b in bodies)

    # Upstream: the key on every request; the second agent request carries the tool's real output.
    assert up.requests and all(k == KEY for k in up.keys)
    tool_msgs = [m for r in up.requests for m in r.body["messages"] if m.get("role") == "tool"]
    assert tool_msgs and tool_msgs[0]["tool_call_id"] == "call_keyrelay_1"
    assert marker in json.dumps(tool_msgs[0]["content"])  # Bash really ran `cat`


def test_claude_code_through_the_litellm_gemini_path(claude, tmp_path):
    """The same round trip with PREFERRED_PROVIDER=google: Claude Code's real request (all its tools and
    their schemas) goes through LiteLLM to a loopback upstream speaking Gemini's format."""
    marker = "keyrelay-gemini-marker-51c2"
    (tmp_path / "note.txt").write_text(marker + "\n")
    final = "Gemini read it: keyrelay-gemini-marker-51c2."
    with ScriptedUpstream(default=claude_code.gemini_tool_round_trip(f"cat {tmp_path / 'note.txt'}", final)) as up:
        srv = TranslatorServer(translator_settings(PREFERRED_PROVIDER="google", GEMINI_BASE_URL=up.url)).start()
        try:
            result = claude_code.run(f"Show me the content of {tmp_path / 'note.txt'}", base_url=srv.url,
                                     api_key=KEY, cwd=tmp_path, claude=claude)
        finally:
            srv.stop()
    assert result.ok, result.describe()
    assert final in result.text
    assert up.requests and all(r.headers.get("x-goog-api-key") == KEY for r in up.requests)
    responses = [p for r in up.requests for c in r.body.get("contents", []) for p in c.get("parts", [])
                 if "functionResponse" in p or "function_response" in p]
    assert responses and marker in json.dumps(responses[0])


def test_claude_code_through_the_anthropic_passthrough(claude, tmp_path):
    """PREFERRED_PROVIDER=anthropic: Claude Code's body goes upstream unconverted, key as x-api-key."""
    marker = "keyrelay-anthropic-marker-9d0e"
    (tmp_path / "note.txt").write_text(marker + "\n")
    final = "Anthropic read it: keyrelay-anthropic-marker-9d0e."
    script_ = claude_code.anthropic_tool_round_trip(f"cat {tmp_path / 'note.txt'}", final)
    with ScriptedUpstream(default=script_) as up:
        srv = TranslatorServer(translator_settings(PREFERRED_PROVIDER="anthropic", ANTHROPIC_BASE_URL=up.url)).start()
        try:
            result = claude_code.run(f"Show me the content of {tmp_path / 'note.txt'}", base_url=srv.url,
                                     auth_token=KEY, cwd=tmp_path, claude=claude)
        finally:
            srv.stop()
    assert result.ok, result.describe()
    assert final in result.text
    assert up.requests and all(r.headers.get("x-api-key") == KEY and "authorization" not in r.headers
                               for r in up.requests)
    assert all("claude-code-20250219" in r.headers.get("anthropic-beta", "") for r in up.requests)
    assert all("context_management" in r.body for r in up.requests)  # unconverted
    results = [b for r in up.requests for m in r.body["messages"] if isinstance(m["content"], list)
               for b in m["content"] if b.get("type") == "tool_result"]
    assert results and marker in json.dumps(results[0])
