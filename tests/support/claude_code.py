"""Run the real Claude Code CLI non-interactively against a base URL (the translator, or Envoy in front of it).

    from tests.support import claude_code
    claude = claude_code.require()                  # installs on first use; pytest.skip without node/npm
    result = claude_code.run("Show me /tmp/x.txt", base_url=url, api_key="sk-...", cwd=tmp_path)
    assert result.ok and "expected" in result.text

The CLI is installed with npm into <repo>/.cache/claude-code at a pinned version (the npm package ships a
native binary per platform; installing needs only the npm registry). It runs with a temporary HOME,
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 and no other Anthropic settings from the caller's environment, so
the only traffic it makes goes to `base_url`. As root `--dangerously-skip-permissions` is refused by the CLI,
so tools are pre-approved with `--allowedTools` instead (default: Bash and Read).

`tool_round_trip(...)` builds a ScriptedUpstream `default` that speaks OpenAI chat completions: it answers
the first agent request with one Bash tool call and, once the tool result comes back, with a final text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tests.support.procs import REPO
from tests.support.upstream import (Recorded, Reply, openai_completion, openai_stream_text,
                                    openai_stream_tool_call, openai_tool_call)

VERSION = "2.1.332"  # `npm view @anthropic-ai/claude-code version` when pinned
PACKAGE = "@anthropic-ai/claude-code"
INSTALL_DIR = REPO / ".cache" / "claude-code"
_install_lock = threading.Lock()


class ClaudeCodeUnavailable(RuntimeError):
    """node/npm are missing, or the install failed (the message says which)."""


def binary_path(install_dir: Path = INSTALL_DIR) -> Path:
    return install_dir / "node_modules" / ".bin" / "claude"


def installed_version(install_dir: Path = INSTALL_DIR) -> str | None:
    pkg = install_dir / "node_modules" / "@anthropic-ai" / "claude-code" / "package.json"
    try:
        return json.loads(pkg.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def install(version: str = VERSION, install_dir: Path = INSTALL_DIR, timeout: float = 300) -> Path:
    """Install the pinned CLI (no-op when that version is already there); returns the `claude` path."""
    with _install_lock:
        claude = binary_path(install_dir)
        if claude.exists() and installed_version(install_dir) == version:
            return claude
        npm = shutil.which("npm")
        if not npm or not shutil.which("node"):
            raise ClaudeCodeUnavailable("node and npm are needed to install Claude Code (not found on PATH)")
        install_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([npm, "install", "--prefix", str(install_dir), "--no-audit", "--no-fund",
                               "--loglevel=error", f"{PACKAGE}@{version}"],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not claude.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ClaudeCodeUnavailable(f"npm install {PACKAGE}@{version} failed: {tail[0]}")
        return claude


def require(version: str = VERSION) -> Path:
    """For tests: the installed CLI, or pytest.skip with the reason when node/npm are absent."""
    import pytest

    try:
        return install(version)
    except ClaudeCodeUnavailable as exc:
        if "not found on PATH" in str(exc):
            pytest.skip(str(exc))
        raise


@dataclass
class ClaudeResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    result: dict | None = None  # the final `result` object (json and stream-json output formats)
    events: list[dict] = field(default_factory=list)  # every JSON line (stream-json)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.result is not None and not self.result.get("is_error")

    @property
    def text(self) -> str:
        return str((self.result or {}).get("result", ""))

    def describe(self) -> str:
        return f"claude exited {self.returncode}\nstdout: {self.stdout[-3000:]}\nstderr: {self.stderr[-3000:]}"


def clean_env(base_url: str, *, api_key: str | None = None, auth_token: str | None = None, home: str,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    """The CLI's whole environment: nothing from the caller's Anthropic/proxy settings leaks in."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "ANTHROPIC_BASE_URL": base_url,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CONFIG_DIR": os.path.join(home, ".claude"),
    }
    if api_key is not None:
        env["ANTHROPIC_API_KEY"] = api_key
    if auth_token is not None:
        env["ANTHROPIC_AUTH_TOKEN"] = auth_token
    env.update(extra or {})
    return env


def run(prompt: str, *, base_url: str, api_key: str | None = None, auth_token: str | None = None,
        cwd: str | os.PathLike, allowed_tools: Sequence[str] = ("Bash", "Read"), model: str | None = None,
        output_format: str = "json", timeout: float = 120, extra_args: Sequence[str] = (),
        extra_env: dict[str, str] | None = None, claude: Path | None = None) -> ClaudeResult:
    """Run `claude -p <prompt>` once and parse its output. `api_key` arrives as x-api-key,
    `auth_token` as Authorization: Bearer."""
    claude = claude or install()
    argv = [str(claude), "-p", prompt, "--output-format", output_format]
    if output_format == "stream-json":
        argv.append("--verbose")  # the CLI requires it for stream-json in print mode
    if allowed_tools:
        argv += ["--allowedTools", ",".join(allowed_tools)]
    if model:
        argv += ["--model", model]
    argv += list(extra_args)
    with tempfile.TemporaryDirectory(prefix="claude-home-") as home:
        env = clean_env(base_url, api_key=api_key, auth_token=auth_token, home=home, extra=extra_env)
        proc = subprocess.run(argv, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    res = ClaudeResult(argv=argv, returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        res.events.append(obj)
        if obj.get("type") == "result":
            res.result = obj
    return res


# ------------------------------------------------------------------ scripted upstream behaviour


def _last_role(body: dict) -> str | None:
    msgs = body.get("messages") or []
    return msgs[-1].get("role") if msgs and isinstance(msgs[-1], dict) else None


def tool_round_trip(command: str, final_text: str, *, tool: str = "Bash",
                    tool_input: dict[str, Any] | None = None) -> Callable[[Recorded], Reply]:
    """An OpenAI-format upstream script for one agent turn with one tool call: a request whose last message
    is a tool result gets `final_text`; a request offering `tool` gets a call of it; anything else (title
    generation, probes) gets a short text. Streams when the request streams."""
    args = tool_input if tool_input is not None else {"command": command, "description": "run the command"}

    def reply(rec: Recorded) -> Reply:
        body = rec.body if isinstance(rec.body, dict) else {}
        stream = bool(body.get("stream"))
        if _last_role(body) == "tool":
            return openai_stream_text([final_text[: len(final_text) // 2], final_text[len(final_text) // 2:]]) \
                if stream else openai_completion(final_text)
        names = [t.get("function", {}).get("name") for t in body.get("tools") or []]
        if tool in names:
            if stream:
                return openai_stream_tool_call("call_keyrelay_1", tool, args)
            return openai_completion(None, finish_reason="tool_calls",
                                     tool_calls=[openai_tool_call("call_keyrelay_1", tool, args)])
        return openai_stream_text(["ok"]) if stream else openai_completion("ok")

    return reply


def gemini_tool_round_trip(command: str, final_text: str, *, tool: str = "Bash") -> Callable[[Recorded], Reply]:
    """`tool_round_trip` for an upstream speaking Gemini's generateContent format (LiteLLM's `gemini/` provider
    pointed at the ScriptedUpstream): a request whose last turn carries a functionResponse gets `final_text`,
    a request declaring `tool` gets a functionCall of it, anything else a short text."""
    from tests.support.upstream import gemini_response, gemini_stream

    def reply(rec: Recorded) -> Reply:
        body = rec.body if isinstance(rec.body, dict) else {}
        stream = "streamGenerateContent" in rec.path
        contents = body.get("contents") or []
        last_parts = (contents[-1].get("parts") or []) if contents else []
        if any("functionResponse" in p or "function_response" in p for p in last_parts):
            return gemini_stream([final_text]) if stream else gemini_response(final_text)
        decls = [d.get("name") for t in body.get("tools") or []
                 for d in (t.get("functionDeclarations") or t.get("function_declarations") or [])]
        if tool in decls:
            call = (tool, {"command": command, "description": "run the command"})
            return gemini_stream([], function_call=call) if stream else gemini_response(None, function_call=call)
        return gemini_stream(["ok"]) if stream else gemini_response("ok")

    return reply


def anthropic_tool_round_trip(command: str, final_text: str, *, tool: str = "Bash") -> Callable[[Recorded], Reply]:
    """`tool_round_trip` for an upstream speaking the Anthropic Messages format (the translator's passthrough)."""
    from tests.support.upstream import anthropic_message, anthropic_stream, anthropic_stream_text

    def reply(rec: Recorded) -> Reply:
        body = rec.body if isinstance(rec.body, dict) else {}
        stream = bool(body.get("stream"))
        msgs = body.get("messages") or []
        last = msgs[-1].get("content") if msgs else None
        if isinstance(last, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last):
            return anthropic_stream_text(final_text) if stream else anthropic_message(final_text)
        if tool in [t.get("name") for t in body.get("tools") or []]:
            start = {"type": "message_start", "message": {
                "id": "msg_scripted", "type": "message", "role": "assistant", "model": body.get("model", "m"),
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 1}}}
            args = json.dumps({"command": command, "description": "run the command"})
            return anthropic_stream([
                ("message_start", start),
                ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                    "type": "tool_use", "id": "toolu_keyrelay_1", "name": tool, "input": {}}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "input_json_delta", "partial_json": args}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                                      "stop_sequence": None},
                                   "usage": {"output_tokens": 12}}),
                ("message_stop", {"type": "message_stop"})])
        return anthropic_stream_text("ok") if stream else anthropic_message("ok")

    return reply
