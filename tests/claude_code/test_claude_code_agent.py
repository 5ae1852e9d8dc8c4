"""The real Claude Code CLI completing a task that needs three tool calls in sequence (Read, then Edit, then
Bash) through the translator, against scripted upstreams speaking each wire format as documented:

- OpenAI chat completions (the native path),
- the OpenAI Responses API (gpt-5-codex): every turn answers with a reasoning item (encrypted content); each
  later request must carry all earlier reasoning items back, in place,
- Gemini generateContent via LiteLLM (gemini-3): every function call is signed; the upstream answers 400 (as
  Gemini 3 does) unless each earlier call comes back with its real signature.

What the upstream received is asserted on every agent turn: the key, the tool results so far (Read's result
holds the file, Bash's holds the edited program's output), and the format-specific state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from tests.support import claude_code
from tests.support import responses_wire as w
from tests.support.upstream import (Recorded, Reply, ScriptedUpstream, openai_completion, openai_stream_text,
                                    openai_stream_tool_call, openai_tool_call)
from tests.translator.server import TranslatorServer, translator_settings

pytestmark = pytest.mark.claude_code

KEY = "sk-claude-code-agent-0001"
ORIGINAL = 'print("hello from keyrelay")\n'
EDITED_OUTPUT = "goodbye from keyrelay"
FINAL = "Done: greet.py now prints goodbye from keyrelay."
TOOLS = ("Read", "Edit", "Bash")


@dataclass
class Task:
    dir: Path

    @property
    def file(self) -> Path:
        return self.dir / "greet.py"

    def steps(self) -> list[tuple[str, dict]]:
        return [
            ("Read", {"file_path": str(self.file)}),
            ("Edit", {"file_path": str(self.file), "old_string": "hello", "new_string": "goodbye"}),
            ("Bash", {"command": f"python3 {self.file}", "description": "Run the edited script"}),
        ]


@dataclass
class Agent:
    """The agent turns an upstream saw: (step number, the request) for requests offering the three tools."""

    turns: list[tuple[int, Recorded]] = field(default_factory=list)
    others: list[Recorded] = field(default_factory=list)
    rejected: int = 0  # requests the upstream answered 400


@pytest.fixture(scope="module")
def claude():
    return claude_code.require()


def _run(claude, tmp_path: Path, script: Callable[[Recorded], Reply], env: dict[str, str]):
    task = Task(tmp_path)
    task.file.write_text(ORIGINAL)
    with ScriptedUpstream(default=script) as up:
        srv = TranslatorServer(translator_settings(**env(up.url))).start()
        try:
            result = claude_code.run(
                f"Read {task.file}, replace hello with goodbye in it, then run it with python3.",
                base_url=srv.url, api_key=KEY, cwd=tmp_path, claude=claude, allowed_tools=TOOLS, timeout=180)
        finally:
            srv.stop()
    assert result.ok, result.describe()
    assert FINAL in result.text
    assert task.file.read_text() == ORIGINAL.replace("hello", "goodbye")  # Edit really ran
    return task, up


def _check_results(step: int, results: list[str], task: Task) -> None:
    """The tool results an agent turn carries: one per earlier step, each the real tool's output."""
    assert len(results) == step
    if step >= 1:
        assert "hello from keyrelay" in results[0]  # Read returned the file
    if step >= 2:
        assert str(task.file) in results[1] or "updated" in results[1].lower()  # Edit's confirmation
    if step >= 3:
        assert EDITED_OUTPUT in results[2]  # Bash ran the edited program


# ----------------------------------------------------------------------------------------- chat completions


def chat_script(task: Task, agent: Agent) -> Callable[[Recorded], Reply]:
    def reply(rec: Recorded) -> Reply:
        body = rec.body if isinstance(rec.body, dict) else {}
        stream = bool(body.get("stream"))
        names = {t.get("function", {}).get("name") for t in body.get("tools") or []}
        if not set(TOOLS) <= names:
            agent.others.append(rec)
            return openai_stream_text(["ok"]) if stream else openai_completion("ok")
        step = sum(1 for m in body["messages"] if m.get("role") == "tool")
        agent.turns.append((step, rec))
        if step == len(task.steps()):
            return openai_stream_text([FINAL[:20], FINAL[20:]]) if stream else openai_completion(FINAL)
        name, args = task.steps()[step]
        cid = f"call_step_{step}"
        if stream:
            return openai_stream_tool_call(cid, name, args, text=f"Step {step + 1}.", split=5)
        return openai_completion(None, finish_reason="tool_calls", tool_calls=[openai_tool_call(cid, name, args)])

    return reply


def test_claude_code_three_tools_over_chat_completions(claude, tmp_path):
    agent = Agent()
    task = Task(tmp_path)
    _, up = _run(claude, tmp_path, chat_script(task, agent), lambda url: {"OPENAI_BASE_URL": url + "/v1"})
    assert sorted(s for s, _ in agent.turns)[-4:] == [0, 1, 2, 3]
    for step, rec in agent.turns:
        assert rec.api_key == KEY and rec.path == "/v1/chat/completions"
        msgs = rec.body["messages"]
        tool_msgs = [m for m in msgs if m.get("role") == "tool"]
        assert [m["tool_call_id"] for m in tool_msgs] == [f"call_step_{i}" for i in range(step)]
        calls = [c for m in msgs if m.get("role") == "assistant" for c in m.get("tool_calls") or ()]
        assert [c["function"]["name"] for c in calls] == list(TOOLS[:step])
        _check_results(step, [json.dumps(m["content"]) for m in tool_msgs], task)
    assert all(r.api_key == KEY for r in up.requests)


# ----------------------------------------------------------------------------------------- Responses API


def responses_script(task: Task, agent: Agent) -> Callable[[Recorded], Reply]:
    def reply(rec: Recorded) -> Reply:
        body = rec.body if isinstance(rec.body, dict) else {}
        stream = bool(body.get("stream"))
        names = {t.get("name") for t in body.get("tools") or [] if t.get("type") == "function"}
        if not set(TOOLS) <= names:
            agent.others.append(rec)
            out = [w.message("msg_side", "ok")]
        else:
            step = sum(1 for i in body["input"] if i.get("type") == "function_call_output")
            agent.turns.append((step, rec))
            out = [w.reasoning(f"rs_{step}", [f"Step {step + 1} of the plan."], f"gAAAA-encrypted-{step}")]
            if step == len(task.steps()):
                out.append(w.message(f"msg_{step}", FINAL))
            else:
                name, args = task.steps()[step]
                out.append(w.function_call(f"fc_{step}", f"call_step_{step}", name, json.dumps(args)))
        usage = w.usage(900, 40, cached=600, reasoning_tokens=20)
        if stream:
            return w.stream_reply(w.stream_events(out, usage_=usage, pieces=4))
        return Reply(json_body=w.response(out, usage_=usage))

    return reply


def test_claude_code_three_tools_over_the_responses_api_with_reasoning_carried(claude, tmp_path):
    agent = Agent()
    task = Task(tmp_path)
    env = lambda url: {"OPENAI_BASE_URL": url + "/v1", "BIG_MODEL": "gpt-5-codex", "SMALL_MODEL": "gpt-5-codex"}
    _, up = _run(claude, tmp_path, responses_script(task, agent), env)
    assert sorted(s for s, _ in agent.turns)[-4:] == [0, 1, 2, 3]
    for step, rec in agent.turns:
        assert rec.api_key == KEY and rec.path == "/v1/responses"
        b = rec.body
        assert b["model"] == "gpt-5-codex" and b["store"] is False
        assert b["include"] == ["reasoning.encrypted_content"]
        items = b["input"]
        # Every earlier turn's reasoning item is back, with its encrypted content, right before that turn's call.
        reasoning = [i for i in items if i.get("type") == "reasoning"]
        assert [(r["id"], r["encrypted_content"]) for r in reasoning] == [(f"rs_{i}", f"gAAAA-encrypted-{i}") for i in range(step)]
        for i in range(step):
            at = items.index(reasoning[i])
            following = next(x for x in items[at + 1:] if x.get("type") == "function_call")
            assert following["call_id"] == f"call_step_{i}" and following["name"] == TOOLS[i]
        outputs = [i for i in items if i.get("type") == "function_call_output"]
        assert [o["call_id"] for o in outputs] == [f"call_step_{i}" for i in range(step)]
        _check_results(step, [json.dumps(o["output"]) for o in outputs], task)
    assert all(r.api_key == KEY for r in up.requests)


# ----------------------------------------------------------------------------------------- Gemini via LiteLLM


def _fc(part: dict) -> dict | None:
    return part.get("functionCall") or part.get("function_call")


def _fr(part: dict) -> dict | None:
    return part.get("functionResponse") or part.get("function_response")


def gemini_script(task: Task, agent: Agent) -> Callable[[Recorded], Reply]:
    signatures = {name: f"CiQB{name}/signed+turn=={i}" for i, name in enumerate(TOOLS)}

    def reply(rec: Recorded) -> Reply:
        body = rec.body if isinstance(rec.body, dict) else {}
        stream = "streamGenerateContent" in rec.path
        contents = body.get("contents") or []
        for c in contents:  # Gemini 3: a function call of an earlier turn without its signature is a 400
            for p in c.get("parts") or ():
                fc = _fc(p)
                if fc and (p.get("thoughtSignature") or p.get("thought_signature")) != signatures.get(fc["name"]):
                    agent.rejected += 1
                    return Reply(status=400, json_body={"error": {
                        "code": 400, "status": "INVALID_ARGUMENT",
                        "message": f"Function call is missing a thought_signature in functionCall parts ({fc['name']})"}})
        decls = {d.get("name") for t in body.get("tools") or []
                 for d in (t.get("functionDeclarations") or t.get("function_declarations") or [])}
        if not set(TOOLS) <= decls:
            agent.others.append(rec)
            parts = [{"text": "ok"}]
        else:
            step = sum(1 for c in contents for p in c.get("parts") or () if _fr(p))
            agent.turns.append((step, rec))
            if step == len(task.steps()):
                parts = [{"text": FINAL}]
            else:
                name, args = task.steps()[step]
                parts = [{"functionCall": {"name": name, "args": args}, "thoughtSignature": signatures[name]}]
        usage = {"promptTokenCount": 50, "candidatesTokenCount": 5, "totalTokenCount": 55}
        if not stream:
            return Reply(json_body={"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP",
                                                    "index": 0}], "usageMetadata": usage, "modelVersion": "gemini-3-pro-preview"})
        frame = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                 "usageMetadata": usage, "modelVersion": "gemini-3-pro-preview"}
        return Reply(sse=[f"data: {json.dumps(frame)}"], headers={"content-type": "text/event-stream"})

    reply.signatures = signatures  # type: ignore[attr-defined]
    return reply


def test_claude_code_three_tools_over_gemini_via_litellm_with_signatures(claude, tmp_path):
    agent = Agent()
    task = Task(tmp_path)
    script = gemini_script(task, agent)
    env = lambda url: {"PREFERRED_PROVIDER": "google", "GEMINI_BASE_URL": url,
                       "BIG_MODEL": "gemini-3-pro-preview", "SMALL_MODEL": "gemini-3-pro-preview"}
    _, up = _run(claude, tmp_path, script, env)
    assert sorted(s for s, _ in agent.turns)[-4:] == [0, 1, 2, 3]
    assert agent.rejected == 0  # no request lost a signature on the way
    for step, rec in agent.turns:
        assert rec.headers["x-goog-api-key"] == KEY
        parts = [p for c in rec.body["contents"] for p in c.get("parts") or ()]
        calls = [(_fc(p)["name"], p.get("thoughtSignature") or p.get("thought_signature")) for p in parts if _fc(p)]
        assert calls == [(n, script.signatures[n]) for n in TOOLS[:step]]  # the real signatures came back
        responses = [_fr(p) for p in parts if _fr(p)]
        assert [r["name"] for r in responses] == list(TOOLS[:step])
        _check_results(step, [json.dumps(r["response"]) for r in responses], task)
