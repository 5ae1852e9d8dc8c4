"""Token usage as the upstream reported it, in one typed shape (pure; docs/usage.md).

Every backend reports usage differently; `Usage` is what the translator counts and logs:

| kind          | OpenAI chat (and OpenAI-compatible gateways)           | LiteLLM `Usage` (model_dump)          | Anthropic Messages                     |
|---------------|--------------------------------------------------------|---------------------------------------|----------------------------------------|
| `input`       | prompt_tokens - cache reads - cache writes            | same                                  | input_tokens                           |
| `output`      | completion_tokens (reasoning included)                 | same                                  | output_tokens                          |
| `cache_read`  | prompt_tokens_details.cached_tokens                    | cache_read_input_tokens               | cache_read_input_tokens                |
| `cache_write` | (none)                                                 | cache_creation_input_tokens           | cache_creation_input_tokens (or the sum of `cache_creation`'s ephemeral parts) |
| `reasoning`   | completion_tokens_details.reasoning_tokens (a part of `output`) | same                         | (not reported separately)              |

So `input + cache_read + cache_write` is every prompt token and `output` every generated one, as in
Anthropic's own usage; `reasoning` is the part of `output` the model spent thinking, never added to it.

Streams: OpenAI-compatible streams report usage in their last chunk (`stream_options.include_usage`, which the
translator always asks for); Anthropic streams report input and cache tokens in `message_start` and the
(cumulative) output count in `message_delta`, whose fields override those of `message_start`.

When the upstream reported nothing, `estimate` counts about 4 characters per token and marks the result
`estimated`, so a dashboard can tell reported from guessed numbers.

Every number comes from an upstream: anything that is not a non-negative integer (a string, a bool, a negative
or non-finite number) counts as 0, and one value is capped at MAX_TOKENS, so a broken or hostile upstream cannot
inflate a tenant's counters without bound.
"""

from __future__ import annotations

from collections.abc import Mapping  # (typing.Mapping's isinstance goes through an extra Python layer)
from dataclasses import dataclass
from typing import Any

import orjson

# One request's count of one kind is capped here (far above any real context window or output).
MAX_TOKENS = 100_000_000
CHARS_PER_TOKEN = 4  # the usual rough rule for English text and code, for estimates only

KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")


@dataclass(frozen=True, slots=True)
class Usage:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0  # part of `output`, not in addition to it
    estimated: bool = False

    def counts(self) -> tuple[tuple[str, int], ...]:
        """(kind, tokens) for every kind in KINDS order."""
        return (("input", self.input), ("output", self.output), ("cache_read", self.cache_read),
                ("cache_write", self.cache_write), ("reasoning", self.reasoning))

    def as_dict(self) -> dict[str, int | bool]:
        """The log line's `tokens` object."""
        return {"input": self.input, "output": self.output, "cache_read": self.cache_read,
                "cache_write": self.cache_write, "reasoning": self.reasoning, "estimated": self.estimated}

    def to_anthropic(self) -> dict[str, int]:
        """Anthropic's usage object (cache fields only when not zero)."""
        out = {"input_tokens": self.input, "output_tokens": self.output}
        if self.cache_read:
            out["cache_read_input_tokens"] = self.cache_read
        if self.cache_write:
            out["cache_creation_input_tokens"] = self.cache_write
        return out


def _n(value: Any) -> int:
    """An upstream-reported count: a non-negative integer (integral floats accepted), capped; else 0."""
    if type(value) is int:
        return value if 0 <= value <= MAX_TOKENS else (MAX_TOKENS if value > 0 else 0)
    if type(value) is float and value.is_integer():
        return _n(int(value))
    return 0


_EMPTY: Mapping[str, Any] = {}


def _map(value: Any) -> Mapping[str, Any]:
    if type(value) is dict:  # parsed JSON: skip the (slower) ABC check
        return value
    if value is None:  # an absent field (the common case): no ABC check either
        return _EMPTY
    return value if isinstance(value, Mapping) else _EMPTY


def _as_mapping(usage: Any) -> Mapping[str, Any] | None:
    """A usage dict, or a LiteLLM/pydantic usage object dumped to one; None for anything else."""
    if type(usage) is dict or isinstance(usage, Mapping):
        return usage
    dump = getattr(usage, "model_dump", None)
    if callable(dump):
        try:
            dumped = dump(exclude_none=True)
        except Exception:  # noqa: BLE001 - a foreign object that cannot be dumped has no usage for us
            return None
        return dumped if isinstance(dumped, Mapping) else None
    return None


def from_openai(usage: Any) -> Usage | None:
    """OpenAI chat `usage` (also OpenAI-compatible gateways and LiteLLM `Usage` objects or their dumps);
    None when there is none (absent, not an object, or neither prompt nor completion count)."""
    u = _as_mapping(usage)
    if not u or ("prompt_tokens" not in u and "completion_tokens" not in u):
        return None
    get = u.get
    prompt = _n(get("prompt_tokens"))
    completion = _n(get("completion_tokens"))
    # The optional fields are read only when present (each `_n`/`_map` of an absent one is wasted work on
    # every request; an absent field counts 0 either way).
    pd = _map(get("prompt_tokens_details"))
    cd = _map(get("completion_tokens_details"))
    cache_read = cache_write = reasoning = 0
    if "cache_read_input_tokens" in u:
        cache_read = _n(get("cache_read_input_tokens"))
    if not cache_read and pd:
        cache_read = _n(pd.get("cached_tokens"))
    if "cache_creation_input_tokens" in u:
        cache_write = _n(get("cache_creation_input_tokens"))
    if not cache_write and pd:
        cache_write = _n(pd.get("cache_write_tokens")) or _n(pd.get("cache_creation_tokens"))
    if cd:
        reasoning = _n(cd.get("reasoning_tokens"))
    if not reasoning and "reasoning_tokens" in u:
        reasoning = _n(get("reasoning_tokens"))
    return Usage(input=max(0, prompt - cache_read - cache_write), output=completion, cache_read=cache_read,
                 cache_write=cache_write, reasoning=min(reasoning, completion))


def from_anthropic(usage: Any) -> Usage | None:
    """Anthropic Messages `usage`; None when there is none."""
    u = _as_mapping(usage)
    if not u or ("input_tokens" not in u and "output_tokens" not in u):
        return None
    cache_write = _n(u.get("cache_creation_input_tokens"))
    if not cache_write:
        parts = _map(u.get("cache_creation"))
        cache_write = min(MAX_TOKENS, _n(parts.get("ephemeral_5m_input_tokens"))
                          + _n(parts.get("ephemeral_1h_input_tokens")))
    return Usage(input=_n(u.get("input_tokens")), output=_n(u.get("output_tokens")),
                 cache_read=_n(u.get("cache_read_input_tokens")), cache_write=cache_write)


def merge_anthropic_stream(start: Any, delta: Any) -> Usage | None:
    """An Anthropic stream's usage: `message_start.message.usage` overridden by the fields `message_delta.usage`
    carries (its counts are cumulative); None when neither reported any."""
    s = _as_mapping(start) or {}
    d = _as_mapping(delta) or {}
    merged = {**s, **{k: v for k, v in d.items() if v is not None}}
    return from_anthropic(merged)


def sse_event_data(frames: bytes, event: bytes) -> dict | None:
    """The JSON `data` of the first `event: <event>` in SSE `frames` (complete events, `\\n` line ends), or
    None when there is none or it is not a JSON object. For the one or two events of a relayed Anthropic
    stream whose usage is read (message_start, message_delta), never per chunk."""
    at = frames.find(b"event: " + event + b"\n")
    if at < 0:
        return None
    end = frames.find(b"\n\n", at)
    block = frames[at:end if end >= 0 else len(frames)]
    data_at = block.find(b"\ndata:")
    if data_at < 0:
        return None
    line = block[data_at + 6:].split(b"\n", 1)[0]
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def estimate(input_chars: int, output_chars: int) -> Usage:
    """A rough count (about CHARS_PER_TOKEN characters per token) for an upstream that reported none."""
    return Usage(input=_n((max(0, input_chars) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN),
                 output=_n((max(0, output_chars) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN), estimated=True)


def anthropic_content_chars(message: Mapping[str, Any]) -> int:
    """Characters of generated content in an Anthropic message (text, thinking, tool input), for an estimate."""
    total = 0
    for block in message.get("content") or ():
        if not isinstance(block, Mapping):
            continue
        for name in ("text", "thinking"):
            value = block.get(name)
            if isinstance(value, str):
                total += len(value)
        if "input" in block:
            try:
                total += len(orjson.dumps(block["input"]))
            except TypeError:
                pass
    return total
