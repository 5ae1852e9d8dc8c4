"""The demo upstream: deterministic replies (pure planning, table-driven) and its HTTP side over real sockets."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from keyrelay_stack.demo_upstream import DEMO_TEXT, DemoUpstreamThread, Plan, fingerprint, plan_reply

BASH = {"type": "function", "function": {"name": "Bash", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
    "required": ["command"]}}}
READ = {"type": "function", "function": {"name": "Read", "parameters": {
    "type": "object", "properties": {"file_path": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["file_path", "limit"]}}}


def user(text, *, reminder=False):
    if reminder:
        return {"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                                            {"type": "text", "text": text}]}
    return {"role": "user", "content": text}


PLANS = [
    # (name, body, expected tool name or None, expected args or text fragment)
    ("plain-text", {"messages": [user("hello")]}, None, "You said: hello"),
    ("no-messages", {"messages": []}, None, DEMO_TEXT),
    ("tools-but-not-asked", {"messages": [user("hello")], "tools": [BASH]}, None, "You said: hello"),
    ("named-tool-without-word-tool", {"messages": [user("Bash it")], "tools": [BASH]}, None, "You said"),
    ("bash-with-snippet", {"messages": [user("use the Bash tool to run `ls -la`", reminder=True)],
                           "tools": [READ, BASH]}, "Bash", {"command": "ls -la"}),
    ("case-insensitive", {"messages": [user("please use the bash tool: `pwd`")], "tools": [BASH]},
     "Bash", {"command": "pwd"}),
    ("schema-defaults", {"messages": [user("use the Read tool")], "tools": [BASH, READ]},
     "Read", {"file_path": "demo", "limit": 1}),
    ("claude-code-shape", {"messages": [
        {"role": "user", "content": "<system-reminder>\nuse the Read tool `x`\n</system-reminder>\n"
                                    "use the Bash tool to run `ls`"},
        {"role": "system", "content": "# Environment: use the Read tool"}], "tools": [READ, BASH]},
     "Bash", {"command": "ls"}),
    ("tool-word-only-in-reminder", {"messages": [
        {"role": "user", "content": "<system-reminder>use the Bash tool</system-reminder>hello"}],
        "tools": [BASH]}, None, "You said: hello"),
    ("tool-not-offered", {"messages": [user("use the Grep tool")], "tools": [BASH]}, None, "You said"),
    ("after-tool-result", {"messages": [
        user("use the Bash tool to run `ls`"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "file_a\nfile_b"}], "tools": [BASH]},
     None, "the tool Bash returned: file_a file_b"),
]


@pytest.mark.parametrize("name,body,tool,expected", PLANS, ids=[p[0] for p in PLANS])
def test_plan_reply(name, body, tool, expected):
    plan = plan_reply(body)
    assert plan == plan_reply(json.loads(json.dumps(body)))  # deterministic
    if tool is None:
        assert not plan.is_tool_call and expected in plan.text
    else:
        assert plan.tool_name == tool and plan.tool_args == expected
        assert plan.call_id.startswith("call_demo_")


def test_fingerprint_is_sha256_prefix():
    import hashlib

    assert fingerprint("sk-x") == hashlib.sha256(b"sk-x").hexdigest()[:16]
    assert len(fingerprint("sk-y")) == 16 and fingerprint("sk-x") != fingerprint("sk-y")


@pytest.fixture(scope="module")
def demo():
    lines: list[str] = []
    with DemoUpstreamThread(log=lines.append) as d:
        d.lines = lines
        yield d


def test_completion_and_models(demo):
    with httpx.Client(base_url=demo.url) as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [user("hi")]},
                   headers={"authorization": "Bearer sk-demo-secret-key-0001"})
        assert r.status_code == 200
        doc = r.json()
        assert doc["choices"][0]["message"]["content"].endswith("You said: hi")
        assert doc["usage"]["total_tokens"] > 0
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["keyrelay-demo-big", "keyrelay-demo-small"]
        assert c.post("/v1/chat/completions", content=b"{not json").status_code == 400
        assert c.get("/nope").status_code == 404
        assert c.head("/").status_code == 200
    assert fingerprint("sk-demo-secret-key-0001") in "\n".join(demo.lines)
    assert "sk-demo-secret-key-0001" not in "\n".join(demo.lines)


def test_streamed_tool_call_reassembles(demo):
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "tools": [BASH],
            "messages": [user("use the Bash tool to run `echo hi`")]}
    with httpx.Client(base_url=demo.url) as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"] == "text/event-stream"
    frames = [f[6:] for f in r.text.split("\n\n") if f.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    args = "".join(tc["function"].get("arguments", "") for c in chunks if c["choices"]
                   for tc in c["choices"][0]["delta"].get("tool_calls", []))
    assert json.loads(args) == {"command": "echo hi"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_keep_alive_and_pipelining(demo):
    import socket

    body = json.dumps({"model": "m", "messages": [user("hi")]}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection(("127.0.0.1", demo.port)) as s:
        s.sendall(req * 3)
        data = b""
        s.settimeout(5)
        while data.count(b"HTTP/1.1 200") < 3:
            data += s.recv(65536)
    assert data.count(b"chatcmpl-keyrelay-demo") == 3


def test_module_entry_point_prints_ready_line_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "keyrelay_stack.demo_upstream", "--port", "0", "--quiet"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready: demo upstream on http://127.0.0.1:")
        url = line.split(" on ", 1)[1].strip()
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_plan_describe():
    assert Plan(text="x").describe() == "text"
    assert Plan(tool_name="Bash", tool_args={"command": "ls"}).describe() == "tool_call(Bash)"
