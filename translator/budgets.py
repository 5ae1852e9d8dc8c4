"""Adds each finished request's token usage to the budget counters in Redis (schema: keyrelay_budgets), which
ext_authz reads to enforce the policy's budgets (docs/usage.md#budgets).

Off the response path and bounded: `record` (called from MessagesService.finish) only appends to a queue of at
most MAX_PENDING records, and a background task writes whatever is queued in one script call per batch of up to
BATCH subjects. A full queue or a failed write drops the records (counted in
keyrelay_translator_budget_usage_writes{result="dropped"}, the outage logged once): budgets then undercount
rather than slow down or fail a response. Raw token counts are written; ext_authz applies the policy's weights,
so the translator needs no policy.

The tenant and key fingerprint come from the x-authz-tenant and x-authz-key-id headers ext_authz sets (Envoy
removes client-sent copies); anything not shaped like what ext_authz writes is not recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import keyrelay_budgets as kb
from translator.usage import Usage

log = logging.getLogger("keyrelay.translator.budgets")

MAX_PENDING = 10_000  # usage records queued for Redis; more are dropped (and counted)
BATCH = 500           # subjects per script call
CLOSE_TIMEOUT = 2.0   # seconds the last flush may take at shutdown


class UsageRecorder:
    def __init__(self, redis_url: str, metrics, *, max_pending: int = MAX_PENDING,
                 socket_timeout: float = kb.DEFAULT_SOCKET_TIMEOUT) -> None:
        self.redis_url = redis_url
        self.metrics = metrics
        self.max_pending = max_pending
        self.socket_timeout = socket_timeout
        self._queue: deque[tuple[str, str, tuple[int, int, int, int], str]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._client = None
        self._script = None
        self._down = False

    def record(self, tenant: str | None, key_id: str | None, usage: Usage | None, request_id: str | None = None) -> None:
        """Queue one finished request for its tenant and its key (each only when ext_authz set it): its usage,
        and its end (for concurrent_requests budgets; `request_id` is the x-request-id ext_authz saw)."""
        counts = (usage.input, usage.output, usage.cache_read, usage.cache_write) if usage is not None else (0, 0, 0, 0)
        rid = request_id if kb.trackable_request_id(request_id) else ""
        if not any(counts) and not rid:
            return
        for scope, ident in (("tenant", tenant), ("key", key_id)):
            if not kb.valid_id(scope, ident):
                continue
            if len(self._queue) >= self.max_pending:
                self.metrics.budget_usage.labels("dropped").inc()
                continue
            self._queue.append((scope, ident, counts, rid))  # type: ignore[arg-type]
        self._wake.set()

    async def start(self) -> None:
        import redis.asyncio as aredis  # imported only when a Redis URL is configured

        self._client = aredis.Redis.from_url(self.redis_url, socket_timeout=self.socket_timeout,
                                             socket_connect_timeout=self.socket_timeout)
        self._script = self._client.register_script(kb.ADD_USAGE)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued now, summed per subject."""
        if not self._queue:
            return
        sums: dict[tuple[str, str], list[int]] = {}
        ended: dict[tuple[str, str], list[str]] = {}
        taken = 0
        while self._queue:
            scope, ident, counts, rid = self._queue.popleft()
            taken += 1
            acc = sums.setdefault((scope, ident), [0, 0, 0, 0])
            for i, n in enumerate(counts):
                acc[i] += n
            ids = ended.setdefault((scope, ident), [])
            if rid:
                ids.append(rid)
        items = list(sums.items())
        try:
            for i in range(0, len(items), BATCH):
                args: list = []
                for subject, acc in items[i:i + BATCH]:
                    args += [*subject, *acc, len(ended[subject]), *ended[subject]]
                await self._script(keys=[kb.WINDOW_KEY], args=args)
        except Exception as exc:  # noqa: BLE001 - any store failure: drop, count, log once
            self.metrics.budget_usage.labels("dropped").inc(taken)
            if not self._down:
                self._down = True
                log.error("budget store unreachable; usage is not counted against budgets until it is back "
                          "(%s, %s)", kb.redact_url(self.redis_url), type(exc).__name__)
            return
        self.metrics.budget_usage.labels("written").inc(taken)
        if self._down:
            self._down = False
            log.warning("budget store reachable again (%s)", kb.redact_url(self.redis_url))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        try:
            await asyncio.wait_for(self.flush(), CLOSE_TIMEOUT)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - shutting down anyway
            pass
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # noqa: BLE001
                pass
