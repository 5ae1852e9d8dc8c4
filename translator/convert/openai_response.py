"""OpenAI chat completion response -> Anthropic Messages response (pure; see docs/conversion.md)."""

from __future__ import annotations

import json
from typing import Any, Mapping

from pydantic_core import from_json

from translator.convert.call_ids import client_id_for_call
from translator.ids import new_message_id, new_tool_use_id
from translator.usage import Usage, from_openai

__all__ = [
    "openai_to_anthropic",
    "map_finish_reason",
    "map_usage",
    "parse_tool_arguments",
    "tool_use_block",
    "anthropic_message",
    "SYNTHETIC_SIGNATURE",
    "is_synthetic_signature",
]

# Signature given to thinking blocks made from an OpenAI-style backend's reasoning text. Anthropic SDKs expect
# a signature on every thinking block; this one marks the block as not signed by Anthropic. Such blocks come
# back in later turns: the OpenAI conversion drops or maps them, and an Anthropic backend would reject the
# signature, so an Anthropic passthrough must drop blocks for which `is_synthetic_signature` is true.
SYNTHETIC_SIGNATURE = "keyrelay-unsigned"

_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
    "end_turn": "end_turn",
    "max_tokens": "max_tokens",
    "tool_use": "tool_use",
    "stop_sequence": "stop_sequence",
}


def is_synthetic_signature(signature: str | None) -> bool:
    """A signature this translator made (the unsigned marker, or a Responses reasoning item's carrier, see
    responses_request.reasoning_signature): never Anthropic's, so never sent to Anthropic."""
    return isinstance(signature, str) and signature.startswith("keyrelay-")


def map_finish_reason(finish_reason: str | None, *, has_tool_calls: bool) -> str:
    """OpenAI finish_reason -> Anthropic stop_reason.

    Some backends (Gemini, Ollama, several vLLM models) say "stop" when they return tool calls: any response
    that carries tool calls ends with tool_use unless it was cut by the length limit.
    """
    reason = _FINISH.get(finish_reason or "stop", "end_turn")
    if has_tool_calls and reason in ("end_turn", "stop_sequence"):
        return "tool_use"
    return reason


def matched_stop_sequence(
    choice: dict[str, Any], text: str, stop_sequences: list[str] | None
) -> tuple[str | None, str]:
    """The stop sequence that ended the output, if the backend tells: vLLM (and LiteLLM over it) report it as
    `choice.stop_reason`; a backend that leaves the sequence at the end of the text shows it there (it is then
    removed, as Anthropic does). Plain OpenAI strips it and says only "stop": that stays end_turn."""
    if not stop_sequences:
        return None, text
    sr = choice.get("stop_reason")
    if isinstance(sr, str) and sr in stop_sequences:
        return sr, text
    for seq in stop_sequences:
        if seq and text.endswith(seq):
            return seq, text[: -len(seq)]
    return None, text


_NO_USAGE = Usage()


def map_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI usage -> Anthropic usage (translator.usage: OpenAI's prompt_tokens include cache reads and writes,
    Anthropic's input_tokens exclude both)."""
    return (from_openai(usage) or _NO_USAGE).to_anthropic()


def _repair_truncated(raw: str) -> Any:
    """Parse JSON that was cut off (a length-limited response): complete values are kept, an unfinished string
    value is dropped rather than cut (a half path or half command is worse than a missing one)."""
    return from_json(raw, allow_partial=True)


def parse_tool_arguments(raw: Any) -> dict[str, Any]:
    """Tool call `arguments` -> the tool_use `input` object.

    - "" or None -> {}
    - a JSON object -> that object; a JSON string holding a JSON object (double-encoded) -> the inner object
    - truncated JSON -> what a partial parse keeps (complete members only)
    - anything else (not JSON, or JSON that is not an object) -> {"_raw_arguments": raw}, so the text reaches the
      client and the tool's input validation reports it to the model instead of silently running with {}.
    """
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return {"_raw_arguments": json.dumps(raw, ensure_ascii=False)}
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        try:
            value = _repair_truncated(raw)
        except ValueError:
            return {"_raw_arguments": raw}
        if isinstance(value, dict):
            return value
        return {"_raw_arguments": raw}
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            inner = None
        if isinstance(inner, dict):
            return inner
    if isinstance(value, dict):
        return value
    return {"_raw_arguments": raw}


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some backends answer with content parts
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def _thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    # LiteLLM (for Anthropic/Bedrock/Vertex Claude backends) passes Anthropic's own signed blocks through.
    for tb in message.get("thinking_blocks") or ():
        if not isinstance(tb, dict):
            continue
        if tb.get("type") == "redacted_thinking" and tb.get("data"):
            blocks.append({"type": "redacted_thinking", "data": tb["data"]})
        elif tb.get("type") == "thinking" and tb.get("thinking"):
            blocks.append(
                {
                    "type": "thinking",
                    "thinking": tb["thinking"],
                    "signature": tb.get("signature") or SYNTHETIC_SIGNATURE,
                }
            )
    if blocks:
        return blocks
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": SYNTHETIC_SIGNATURE})
    return blocks


def tool_use_block(client_id: str | None, name: Any, arguments: Any,
                   tool_names: Mapping[str, str] | None) -> dict[str, Any]:
    """A complete tool_use block: a generated id when the backend gave none, the name the client sent (a
    shortened backend name mapped back), the input from `parse_tool_arguments`."""
    name = name if isinstance(name, str) else ""
    if tool_names:
        name = tool_names.get(name, name)
    return {"type": "tool_use", "id": client_id or new_tool_use_id(), "name": name,
            "input": parse_tool_arguments(arguments)}


def anthropic_message(content: list[dict[str, Any]], *, model: str, stop_reason: str, stop_sequence: str | None,
                      usage: dict[str, int], message_id: str | None) -> dict[str, Any]:
    return {
        "id": message_id or new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }


_PARSE: Any = object()  # `usage` not given: read from the response


def openai_to_anthropic(
    resp: dict[str, Any],
    *,
    model: str,
    stop_sequences: list[str] | None = None,
    message_id: str | None = None,
    tool_names: Mapping[str, str] | None = None,
    usage: Usage | None = _PARSE,
) -> dict[str, Any]:
    """The Anthropic message for an OpenAI chat completion `resp`; `model` is the name the client asked for.
    `tool_names` maps shortened backend function names back (`openai_request.tool_name_map`). `usage`: the
    response's usage as `translator.usage.from_openai` read it, when the caller has it already (it counts the
    same numbers); read from `resp` otherwise."""
    choices = resp.get("choices") or []
    choice = choices[0] if choices else {}
    message = choice.get("message") or {}

    content: list[dict[str, Any]] = _thinking_blocks(message)
    text = _content_text(message.get("content"))
    refusal = message.get("refusal")
    calls = message.get("tool_calls") or []
    legacy = message.get("function_call")
    if not calls and isinstance(legacy, dict) and legacy.get("name"):
        calls = [{"id": None, "function": legacy}]

    stop_sequence, text = matched_stop_sequence(choice, text, stop_sequences)
    if text:
        content.append({"type": "text", "text": text})
    if refusal and not text:
        content.append({"type": "text", "text": str(refusal)})
    for call in calls:
        fn = call.get("function") or {}
        cid = client_id_for_call(call["id"], call) if call.get("id") else None
        content.append(tool_use_block(cid, fn.get("name"), fn.get("arguments"), tool_names))

    stop_reason = map_finish_reason(choice.get("finish_reason"), has_tool_calls=bool(calls))
    if refusal and not text and not calls:
        stop_reason = "refusal"
    if stop_sequence is not None and stop_reason == "end_turn":
        stop_reason = "stop_sequence"
    else:
        stop_sequence = None

    if usage is _PARSE:
        usage = from_openai(resp.get("usage"))
    return anthropic_message(content, model=model, stop_reason=stop_reason, stop_sequence=stop_sequence,
                             usage=(usage or _NO_USAGE).to_anthropic(), message_id=message_id)
