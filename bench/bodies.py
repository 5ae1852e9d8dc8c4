"""Request bodies for the benchmark.

- tiny: one user message.
- claude_code: the shape Claude Code sends (about 70 KB: ~24 tools with real-looking JSON schemas, `system` as
  text blocks with cache_control, a 30-turn history with tool_use / tool_result, thinking, metadata, max_tokens
  64000). Taken from tests/translator/fixtures/claude_code_request.json when present, generated here otherwise.

`openai_equivalent` gives the OpenAI chat-completions body of the same conversation, for hitting the upstream
directly (path a); the translator's own converter is used when importable so both paths carry the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from bench.procs import REPO

FIXTURE = REPO / "tests" / "translator" / "fixtures" / "claude_code_request.json"
MODEL = "claude-sonnet-4-5-20250929"

TOOL_NAMES = [
    ("Task", "Launch a new agent to handle complex, multi-step tasks autonomously."),
    ("Bash", "Executes a given bash command in a persistent shell session with optional timeout."),
    ("Glob", "Fast file pattern matching tool that works with any codebase size."),
    ("Grep", "A powerful search tool built on ripgrep. Supports full regex syntax."),
    ("ExitPlanMode", "Use this tool when you are in plan mode and have finished presenting your plan."),
    ("Read", "Reads a file from the local filesystem. You can access any file directly by using this tool."),
    ("Edit", "Performs exact string replacements in files."),
    ("Write", "Writes a file to the local filesystem. This tool will overwrite the existing file."),
    ("NotebookEdit", "Completely replaces the contents of a specific cell in a Jupyter notebook."),
    ("WebFetch", "Fetches content from a specified URL and processes it using an AI model."),
    ("TodoWrite", "Use this tool to create and manage a structured task list for your current coding session."),
    ("WebSearch", "Allows Claude to search the web and use the results to inform responses."),
    ("BashOutput", "Retrieves output from a running or completed background bash shell."),
    ("KillShell", "Kills a running background bash shell by its ID."),
    ("SlashCommand", "Execute a slash command within the main conversation."),
    ("MultiEdit", "Makes multiple edits to a single file in one operation."),
    ("LS", "Lists files and directories in a given path."),
    ("NotebookRead", "Reads a Jupyter notebook and returns all of the cells with their outputs."),
    ("mcp__ide__getDiagnostics", "Get language diagnostics from VS Code."),
    ("mcp__ide__executeCode", "Execute python code in the Jupyter kernel for the current notebook file."),
    ("AskUserQuestion", "Ask the user a question with a fixed set of options."),
    ("Skill", "Execute a skill within the main conversation."),
    ("ListMcpResources", "List available resources from configured MCP servers."),
    ("ReadMcpResource", "Reads a specific resource from an MCP server, identified by server name and URI."),
]

LOREM = ("When the user asks for a change, read the relevant files first, keep edits minimal and consistent with "
         "the surrounding code, run the project's tests, and report what changed and why. Never invent file paths. ")


def _schema(i: int, name: str) -> dict[str, Any]:
    props: dict[str, Any] = {
        "file_path": {"type": "string", "description": "The absolute path to the file to operate on (must be "
                                                        "absolute, not relative)."},
        "command": {"type": "string", "description": "The command to execute, quoted where paths have spaces."},
        "timeout": {"type": "number", "description": "Optional timeout in milliseconds (max 600000)"},
        "pattern": {"type": "string", "description": "The regular expression pattern to search for in contents"},
        "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"],
                        "description": "Output mode: content shows matching lines, files_with_matches shows paths."},
        "todos": {"type": "array", "description": "The updated todo list", "items": {
            "type": "object", "additionalProperties": False, "required": ["content", "status", "activeForm"],
            "properties": {"content": {"type": "string", "minLength": 1},
                           "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                           "activeForm": {"type": "string", "minLength": 1}}}},
        "edits": {"type": "array", "minItems": 1, "description": "Array of edit operations to perform sequentially",
                  "items": {"type": "object", "additionalProperties": False, "required": ["old_string", "new_string"],
                            "properties": {"old_string": {"type": "string", "description": "The text to replace"},
                                           "new_string": {"type": "string", "description": "The replacement text"},
                                           "replace_all": {"type": "boolean", "default": False}}}},
    }
    keys = list(props)
    chosen = {k: props[k] for k in keys[i % 3: i % 3 + 4]}
    return {"type": "object", "properties": chosen, "required": [next(iter(chosen))], "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#"}


def generate_claude_code_body(target_bytes: int = 70_000) -> dict[str, Any]:
    tools = []
    for i, (name, desc) in enumerate(TOOL_NAMES):
        tools.append({"name": name, "description": (desc + " " + LOREM * 3).strip(), "input_schema": _schema(i, name)})
    system = [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
         "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": ("You are an interactive CLI tool that helps users with software engineering "
                                  "tasks. " + LOREM * 40), "cache_control": {"type": "ephemeral"}},
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>As you answer the user's questions, you can use the following "
                                 "context: " + LOREM * 4 + "</system-reminder>"},
        {"type": "text", "text": "Fix the failing test in tests/test_parser.py and explain the cause.",
         "cache_control": {"type": "ephemeral"}}]}]
    turn = 0
    while turn < 30:
        tid = f"toolu_01{turn:04d}ABCDEFGHJKLMNPQRS"
        name = TOOL_NAMES[turn % len(TOOL_NAMES)][0]
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Let me look at step {turn} of the problem before changing anything."},
            {"type": "tool_use", "id": tid, "name": name,
             "input": {"file_path": f"/home/dev/project/src/module_{turn}.py", "command": f"pytest -q -k case_{turn}"}},
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tid, "content": [
                {"type": "text", "text": "\n".join(f"{n:>5}\tdef function_{turn}_{n}(value):  # returns value"
                                                   for n in range(1, 9))}]},
        ]})
        turn += 1
    messages.append({"role": "system", "content": "The user switched to plan mode."})
    messages.append({"role": "user", "content": "Now apply the fix and run the tests again."})
    body = {
        "model": MODEL, "max_tokens": 64000, "system": system, "messages": messages, "tools": tools,
        "tool_choice": {"type": "auto"}, "thinking": {"type": "adaptive"}, "stream": False,
        "metadata": {"user_id": "user_bench_account__session_00000000-0000-0000-0000-000000000000"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"}, "temperature": 1,
    }
    # Pad the history with tool output until the body has the requested size (Claude Code's bodies grow so).
    pad = 0
    while len(json.dumps(body)) < target_bytes:
        body["messages"][2 + 2 * (pad % 30)]["content"][0]["content"][0]["text"] += "\n" + LOREM
        pad += 1
    return body


def tiny_body() -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": "Say hello."}]}


def claude_code_body() -> tuple[dict[str, Any], str]:
    if FIXTURE.exists():
        try:
            return json.loads(FIXTURE.read_text()), str(FIXTURE.relative_to(REPO))
        except ValueError:
            pass
    return generate_claude_code_body(), "bench/bodies.py (generated)"


def with_stream(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    out = dict(body)
    out["stream"] = stream
    return out


# ---------------------------------------------------------------- OpenAI-format equivalent for the direct path


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content or [])


def simple_openai_equivalent(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A plain conversion (system, text, tool_use -> tool_calls, tool_result -> tool messages, tools ->
    functions), used only when the translator's converter is not importable."""
    msgs: list[dict[str, Any]] = []
    if body.get("system"):
        msgs.append({"role": "system", "content": _text_of(body["system"])})
    for m in body["messages"]:
        content = m["content"]
        if isinstance(content, str):
            msgs.append({"role": m["role"], "content": content})
            continue
        texts = [b["text"] for b in content if b.get("type") == "text"]
        calls = [{"id": b["id"], "type": "function",
                  "function": {"name": b["name"], "arguments": json.dumps(b["input"])}}
                 for b in content if b.get("type") == "tool_use"]
        for b in content:
            if b.get("type") == "tool_result":
                msgs.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": _text_of(b["content"])})
        if texts or calls:
            msg: dict[str, Any] = {"role": m["role"], "content": "\n".join(texts) or None}
            if calls:
                msg["tool_calls"] = calls
            msgs.append(msg)
    out: dict[str, Any] = {"model": model, "messages": msgs, "max_tokens": min(body.get("max_tokens", 1024), 16384)}
    if body.get("tools"):
        out["tools"] = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                                          "parameters": t["input_schema"]}} for t in body["tools"]]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def openai_equivalent(body: dict[str, Any], model: str) -> tuple[dict[str, Any], str]:
    try:
        from translator.convert.openai_request import BackendCaps, anthropic_to_openai  # type: ignore
        from translator.schemas.anthropic import MessagesRequest  # type: ignore
        req = MessagesRequest.model_validate(body)
        return anthropic_to_openai(req, model=model, caps=BackendCaps()), "translator.convert.openai_request"
    except Exception:  # noqa: BLE001 - converter not there yet (or a different signature): plain conversion
        return simple_openai_equivalent(body, model), "bench/bodies.py simple conversion"
