"""How uvicorn serves the translator: the options both the console script and the test server use, and an
HTTP protocol that sends a response's head together with its first body bytes.

Why the protocol subclass: an ASGI response is two messages (`http.response.start`, then the body), and
uvicorn writes each one to the socket as it comes, so every non-streaming answer cost two `write` system
calls (two TCP segments, two wake-ups of the client). On loopback under load py-spy put about a fifth of the
translator's CPU per tiny request in uvicorn's `send`, nearly all of it those writes. `HeadCoalescingTransport`
holds the response head (a write starting with `HTTP/`) until the next write on the connection and sends both
in one call; if no body follows in the same event-loop iteration (a stream whose first event is still being
produced), the head goes out on its own at the end of the iteration. Nothing else changes: every other write
goes straight through, in order, and closing the transport sends a held head first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadCoalescingTransport:
    """Wraps an asyncio transport: a response head waits for the following write (at most one loop
    iteration), other writes pass through; every other attribute is the wrapped transport's."""

    __slots__ = ("_transport", "_loop", "_head")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data[:5] == b"HTTP/":
            self._head = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `HeadCoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadCoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


def uvicorn_options(shutdown_grace_s: float = 100.0) -> dict[str, Any]:
    """uvicorn.Config options of a serving translator: httptools + uvloop, no access log (the app logs one
    line per request itself), no server header, no websockets, lifespan on. uvicorn waits for the requests in
    flight 5 s longer than the streams' grace (`shutdown_grace_s`), so that a stream ended at the grace still
    gets its error event out before the server gives up on it."""
    return dict(log_level="warning", access_log=False, lifespan="on",
                timeout_graceful_shutdown=shutdown_grace_s + 5,
                server_header=False, date_header=True, proxy_headers=False, http=HttpProtocol, loop="uvloop",
                ws="none")
