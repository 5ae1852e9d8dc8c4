"""The per-request context: everything known about one request to the translator, from arrival to finish.

One `RequestContext` is created when a request arrives and travels through the orchestration
(`translator.service`), the backend that serves it (`translator.backends`) and the stream relay
(`translator.relay`). Whatever is learned on the way is attached to it (the resolved target, the credential's
fingerprint, the upstream's usage, timings, the number of streamed chunks, the error), and
`MessagesService.finish` turns it into the request's metrics and its one log line, exactly once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from translator.credentials import Credential
from translator.errors import ApiError
from translator.routing import Target
from translator.usage import Usage


@dataclass(slots=True, eq=False)
class RequestContext:
    route: str  # "messages" or "count_tokens": the metrics label
    method: str
    path: str
    request_id: str
    headers: dict[str, str]  # the client's request headers, lower-case names
    started: float = field(default_factory=time.perf_counter)
    # Known after parsing and routing.
    size: int = 0  # of the request body in bytes
    body: dict | None = None  # the request's JSON object as the client sent it
    request: Any = None  # the validated request (MessagesRequest / CountTokensRequest)
    target: Target | None = None
    cred: Credential | None = None
    stream: bool = False
    # Learned while serving.
    first_byte_s: float | None = None  # until the upstream's response head (or first chunk)
    first_token_s: float | None = None  # streams: from arrival to the first upstream chunk relayed
    chunks: int = 0  # upstream chunks (OpenAI-shaped) or events (Anthropic) relayed
    usage: Usage | None = None  # the token usage the upstream reported (translator.usage), when it did
    input_chars: int = 0  # the request body's size, for an estimate when the upstream reports no usage
    output_chars: int = 0  # generated characters seen, for the same estimate
    finish_reason: str | None = None  # the upstream's finish / stop reason, when known
    span: Any = None  # the request's tracing span (None when tracing is off)
    trace_headers: dict[str, str] | None = None  # W3C context for the upstream request (tracing on)
    status: int = 0  # the HTTP status answered
    error: ApiError | None = None  # the error answered (or sent as `event: error` in a stream)
    finished: bool = False

    @property
    def provider(self) -> str:
        return self.target.provider if self.target else ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
