"""Pydantic v2 models of the Anthropic Messages API request, as Claude Code and the anthropic SDK send it.

Policy for what we do not model (see docs/conversion.md):
- Unknown top-level fields (context_management, output_config, service_tier, container, mcp_servers, ...) are
  accepted and dropped: `MessagesRequest.dropped_fields()` names them so the server can log them. Never a 422.
- Unknown fields inside blocks, tools, metadata, ... are ignored (extra="ignore").
- Unknown content block types are accepted as `UnknownBlock` (type kept, everything else kept as extra) and the
  converter drops them with a note. The same holds for unknown image/document source types.
- Real errors (missing model/messages/max_tokens, wrong types, a role we do not know) are validation errors that
  the server answers with 400 invalid_request_error; `describe_validation_error` renders them without echoing
  any input value (a request body can carry secrets).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from translator.errors import ApiError

_IGNORE = ConfigDict(extra="ignore")


class _Model(BaseModel):
    model_config = _IGNORE


class CacheControl(_Model):
    type: str = "ephemeral"
    ttl: str | None = None


# --------------------------------------------------------------------------------------------- sources


class Base64Source(_Model):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(_Model):
    type: Literal["url"]
    url: str


class TextSource(_Model):
    """Plain-text document source (`media_type` is text/plain)."""

    type: Literal["text"]
    media_type: str = "text/plain"
    data: str


class ContentSource(_Model):
    """Document source made of content blocks (text and images); only text is used downstream."""

    type: Literal["content"]
    content: Union[str, list["ContentBlock"]]


class UnknownSource(BaseModel):
    """Any other source type (file ids of the Files API, ...): kept so validation passes; dropped downstream."""

    model_config = ConfigDict(extra="allow")
    type: str


_KNOWN_IMAGE_SOURCES = frozenset({"base64", "url"})
_KNOWN_DOCUMENT_SOURCES = frozenset({"base64", "url", "text", "content"})


def _source_tag(known: frozenset[str]):
    def tag(value: Any) -> str:
        t = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return "source:" + (t if t in known else "unknown")

    return tag


ImageSource = Annotated[
    Union[
        Annotated[Base64Source, Tag("source:base64")],
        Annotated[URLSource, Tag("source:url")],
        Annotated[UnknownSource, Tag("source:unknown")],
    ],
    Discriminator(_source_tag(_KNOWN_IMAGE_SOURCES)),
]

DocumentSource = Annotated[
    Union[
        Annotated[Base64Source, Tag("source:base64")],
        Annotated[URLSource, Tag("source:url")],
        Annotated[TextSource, Tag("source:text")],
        Annotated[ContentSource, Tag("source:content")],
        Annotated[UnknownSource, Tag("source:unknown")],
    ],
    Discriminator(_source_tag(_KNOWN_DOCUMENT_SOURCES)),
]


# --------------------------------------------------------------------------------------------- blocks


class TextBlock(_Model):
    type: Literal["text"] = "text"
    text: str
    cache_control: CacheControl | None = None


# Counts the image blocks of one validation when set (translator.request_body's image cap): a validator that
# runs only for image blocks, so a request without images pays nothing for the count.
IMAGE_COUNT: ContextVar[list[int] | None] = ContextVar("image_count", default=None)


class ImageBlock(_Model):
    type: Literal["image"] = "image"
    source: ImageSource
    cache_control: CacheControl | None = None

    @model_validator(mode="after")
    def _count(self) -> "ImageBlock":
        count = IMAGE_COUNT.get()
        if count is not None:
            count[0] += 1
        return self


class DocumentBlock(_Model):
    type: Literal["document"] = "document"
    source: DocumentSource
    title: str | None = None
    context: str | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(_Model):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    cache_control: CacheControl | None = None


class ToolResultBlock(_Model):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: Union[str, list["ContentBlock"], None] = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(_Model):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Model):
    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: str


class ServerToolBlock(BaseModel):
    """Blocks produced by Anthropic-run server tools (web search, web fetch, code execution, MCP connector, ...).

    They only make sense to Anthropic itself: a non-Anthropic backend neither ran those tools nor can read
    their encrypted results, so the converter drops them with a note (docs/conversion.md).
    """

    model_config = ConfigDict(extra="allow")
    type: str


class UnknownBlock(BaseModel):
    """A content block type this translator does not know: accepted, dropped by the converter with a note."""

    model_config = ConfigDict(extra="allow")
    type: str


SERVER_TOOL_BLOCK_TYPES = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)

_KNOWN_BLOCKS = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)


# Block type -> the tag of its model (one lookup per content block of every request).
_BLOCK_TAGS = {**{t: "block:server_tool" for t in SERVER_TOOL_BLOCK_TYPES}, **{t: "block:" + t for t in _KNOWN_BLOCKS}}


def _block_tag(value: Any) -> str:
    t = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return _BLOCK_TAGS.get(t, "block:unknown") if isinstance(t, str) else "block:unknown"


ContentBlock = Annotated[
    Union[
        Annotated[TextBlock, Tag("block:text")],
        Annotated[ImageBlock, Tag("block:image")],
        Annotated[DocumentBlock, Tag("block:document")],
        Annotated[ToolUseBlock, Tag("block:tool_use")],
        Annotated[ToolResultBlock, Tag("block:tool_result")],
        Annotated[ThinkingBlock, Tag("block:thinking")],
        Annotated[RedactedThinkingBlock, Tag("block:redacted_thinking")],
        Annotated[ServerToolBlock, Tag("block:server_tool")],
        Annotated[UnknownBlock, Tag("block:unknown")],
    ],
    Discriminator(_block_tag),
]

ContentSource.model_rebuild()
ToolResultBlock.model_rebuild()


# --------------------------------------------------------------------------------------------- request


class Message(_Model):
    role: Literal["user", "assistant", "system"]
    content: Union[str, list[ContentBlock]]


class Tool(_Model):
    """A tool. Custom tools have no `type` (or type "custom") and an `input_schema`.

    Anthropic-defined tools carry a versioned type (`web_search_20250305`, `bash_20250124`,
    `text_editor_20250728`, `computer_20250124`, `code_execution_20250825`, `web_fetch_20250910`, ...): they are
    run by Anthropic or have schemas only Anthropic knows, so non-Anthropic backends get none of them (dropped
    with a note).
    """

    name: str
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    cache_control: CacheControl | None = None
    # Web search server tool options (mapped to the Responses API's web_search tool; ignored elsewhere).
    allowed_domains: list[str] | None = None
    blocked_domains: list[str] | None = None
    user_location: dict[str, Any] | None = None

    @property
    def is_custom(self) -> bool:
        return (self.type is None or self.type == "custom") and self.input_schema is not None


class ToolChoice(_Model):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _tool_needs_name(self) -> "ToolChoice":
        if self.type == "tool" and not self.name:
            raise ValueError('tool_choice of type "tool" needs a name')
        return self


class ThinkingConfig(_Model):
    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: int | None = Field(default=None, ge=0)


class Metadata(_Model):
    user_id: str | None = None


class _RequestBase(BaseModel):
    # Top level keeps unknown fields (extra="allow") only so that `dropped_fields()` can name them for a log
    # line; the converters never read them.
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message]
    system: Union[str, list[ContentBlock], None] = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None

    def dropped_fields(self) -> list[str]:
        """Names (never values) of top-level fields this translator does not use."""
        return sorted(self.model_extra or ())


# Stop sequences are searched in every streamed text piece (the translator finds them itself, see
# docs/conversion.md): their number and length bound that work per piece. Crossing either is a 400.
MAX_STOP_SEQUENCES = 32
MAX_STOP_SEQUENCE_CHARS = 256


class MessagesRequest(_RequestBase):
    """POST /v1/messages body."""

    max_tokens: int = Field(ge=1)
    metadata: Metadata | None = None
    stop_sequences: list[Annotated[str, Field(max_length=MAX_STOP_SEQUENCE_CHARS)]] | None = Field(
        default=None, max_length=MAX_STOP_SEQUENCES)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)


class CountTokensRequest(_RequestBase):
    """POST /v1/messages/count_tokens body (no max_tokens)."""


# --------------------------------------------------------------------------------------------- errors


def _loc_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        s = str(item)
        # Drop union/discriminator tags pydantic inserts into locations ("str", "list[...]", tag names, ...):
        # they describe our model, not the client's JSON.
        if "[" in s or "-" in s or ":" in s or s in _LOC_NOISE:
            continue
        parts.append(("." if parts else "") + s)
    return "".join(parts) or "body"


_LOC_NOISE = frozenset({"str", "list", "dict", "int", "float", "bool", "none"})


def validate_or_400(model: type[BaseModel], data: dict) -> Any:
    """`model.model_validate(data)`; a validation failure is a 400 invalid_request_error naming the fields."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request_error", describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError, *, limit: int = 5) -> str:
    """One short human line for a 400, naming the fields that failed and why; input values are never echoed."""
    found: dict[str, str] = {}
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        path = _loc_path(tuple(err.get("loc", ())))
        if path in found:
            continue
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            msg = "field required"
        found[path] = msg
    # A union (string or list of blocks) reports one error per branch; when a deeper path explains the
    # failure, the shallow "should be a valid string" line is noise.
    seen = {
        p: m
        for p, m in found.items()
        if not any(q != p and (q.startswith(p + ".") or q.startswith(p + "[")) for q in found)
    }
    items = [f"{p}: {m}" for p, m in list(seen.items())[:limit]]
    more = len(seen) - limit
    text = "; ".join(items)
    if more > 0:
        text += f" (and {more} more)"
    return text[:1000]
