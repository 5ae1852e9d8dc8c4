"""OpenAI Responses API response -> Anthropic Messages response (pure; docs/conversion.md, "Responses API")."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from translator.convert.call_ids import client_call_id
from translator.convert.openai_response import SYNTHETIC_SIGNATURE, anthropic_message, tool_use_block
from translator.convert.responses_request import reasoning_signature
from translator.errors import scrub

__all__ = ["responses_to_anthropic", "map_responses_usage", "chat_usage", "chat_finish_reason", "responses_error",
           "reasoning_block", "stop_reason_of"]

# Responses error codes (response.error.code / the `error` stream event) -> (HTTP status, Anthropic type)
_ERRORS = {
    "rate_limit_exceeded": (429, "rate_limit_error"),
    "insufficient_quota": (429, "rate_limit_error"),
    "server_error": (500, "api_error"),
    "overloaded": (529, "overloaded_error"),
    "server_is_overloaded": (529, "overloaded_error"),
    "slow_down": (529, "overloaded_error"),
    "invalid_prompt": (400, "invalid_request_error"),
    "context_length_exceeded": (400, "invalid_request_error"),
    "invalid_request_error": (400, "invalid_request_error"),
    "vector_store_timeout": (504, "api_error"),
}


def responses_error(error: Any, secrets: Iterable[str | None] = ()) -> tuple[int, str, str]:
    """(status, Anthropic error type, message) for a Responses `error` object (a failed response, or the
    `error` stream event); unknown codes are a 502 api_error (the upstream failed, not the client). The
    upstream's message is quoted without `secrets` or anything key-shaped."""
    code = message = None
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
    status, kind = _ERRORS.get(code if isinstance(code, str) else "", (502, "api_error"))
    text = f"upstream responses API error{f' ({code})' if isinstance(code, str) else ''}"
    if isinstance(message, str) and message:
        text += ": " + scrub(" ".join(message.split()), secrets)[:500]
    return status, kind, text


def map_responses_usage(usage: Any) -> dict[str, int]:
    """Responses usage -> Anthropic usage. input_tokens include cached tokens (Anthropic's exclude them);
    output_tokens include reasoning tokens on both sides."""
    if not isinstance(usage, Mapping):
        return {"input_tokens": 0, "output_tokens": 0}
    details = usage.get("input_tokens_details") or {}
    cached = details.get("cached_tokens") or 0 if isinstance(details, Mapping) else 0
    out = {
        "input_tokens": max(0, (usage.get("input_tokens") or 0) - cached),
        "output_tokens": usage.get("output_tokens") or 0,
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """Responses usage in the chat-completions shape (what the stream converter and the usage accounting
    read): input/output tokens, cached input, cache writes, reasoning tokens."""
    if not isinstance(usage, Mapping):
        return None
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    out_details = usage.get("output_tokens_details")
    out_details = out_details if isinstance(out_details, Mapping) else {}
    return {
        "prompt_tokens": usage.get("input_tokens") or 0,
        "completion_tokens": usage.get("output_tokens") or 0,
        "prompt_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0,
                                  "cache_write_tokens": details.get("cache_write_tokens") or 0},
        "completion_tokens_details": {"reasoning_tokens": out_details.get("reasoning_tokens") or 0},
    }


def chat_finish_reason(resp: Mapping[str, Any]) -> str | None:
    """The chat-completions finish reason a Responses object amounts to (for logs and metrics)."""
    status = resp.get("status")
    if status == "incomplete":
        details = resp.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        return "content_filter" if reason == "content_filter" else "length"
    if status != "completed":
        return None
    calls = any(isinstance(i, Mapping) and i.get("type") == "function_call" for i in resp.get("output") or ())
    return "tool_calls" if calls else "stop"


def reasoning_block(item: Mapping[str, Any]) -> dict[str, Any]:
    """A reasoning output item as a thinking block: the summary as text, the encrypted content (with the item
    id) as the signature, so the next turn can send the item back."""
    texts = [s.get("text") or "" for s in item.get("summary") or () if isinstance(s, Mapping)]
    enc = item.get("encrypted_content")
    sig = reasoning_signature(str(item.get("id") or ""), enc) if isinstance(enc, str) and enc else SYNTHETIC_SIGNATURE
    return {"type": "thinking", "thinking": "\n\n".join(t for t in texts if t), "signature": sig}


def stop_reason_of(status: str | None, incomplete: Any, has_tool_calls: bool, refused: bool) -> str:
    if status == "incomplete":
        reason = incomplete.get("reason") if isinstance(incomplete, Mapping) else None
        return "refusal" if reason == "content_filter" else "max_tokens"
    if has_tool_calls:
        return "tool_use"
    return "refusal" if refused else "end_turn"


def responses_to_anthropic(
    resp: Mapping[str, Any],
    *,
    model: str,
    stop_sequences: list[str] | None = None,
    message_id: str | None = None,
    tool_names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Anthropic message for a Responses API response object (status completed or incomplete; a failed
    one is the caller's error, see `responses_error`). `model` is the name the client asked for."""
    content: list[dict[str, Any]] = []
    refused = False
    calls = 0
    stop_sequence = None
    for item in resp.get("output") or ():
        if not isinstance(item, Mapping) or stop_sequence is not None:
            continue
        kind = item.get("type")
        if kind == "reasoning":
            content.append(reasoning_block(item))
        elif kind == "message":
            text_parts = []
            for part in item.get("content") or ():
                if not isinstance(part, Mapping):
                    continue
                if part.get("type") == "output_text" and part.get("text"):
                    text_parts.append(part["text"])
                elif part.get("type") == "refusal" and part.get("refusal"):
                    refused = True
                    text_parts.append(part["refusal"])
            text = "".join(text_parts)
            for seq in stop_sequences or ():
                at = text.find(seq) if seq else -1
                if at != -1:  # the text is cut each time: the earliest sequence wins
                    text, stop_sequence = text[:at], seq
            if text:
                content.append({"type": "text", "text": text})
        elif kind == "function_call":
            cid = item.get("call_id")
            cid = client_call_id(cid) if isinstance(cid, str) and cid else None
            content.append(tool_use_block(cid, item.get("name"), item.get("arguments"), tool_names))
            calls += 1
        # web_search_call and other hosted-tool items: the model's message carries what they found
    if stop_sequence is not None:
        stop_reason = "stop_sequence"
    else:
        stop_reason = stop_reason_of(resp.get("status"), resp.get("incomplete_details"), calls > 0, refused)
    return anthropic_message(content, model=model, stop_reason=stop_reason, stop_sequence=stop_sequence,
                             usage=map_responses_usage(resp.get("usage")), message_id=message_id)
