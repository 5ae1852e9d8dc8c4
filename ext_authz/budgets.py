"""Budget enforcement on the Check path (docs/ext_authz.md#budgets, docs/usage.md#budgets).

The Check path never waits for Redis. `BudgetTracker` keeps, per budgeted subject (a tenant with a budget of
its own, and every key when the policy has `budgets.per_key`), the counters of the current minute window and
UTC day as of the last refresh, plus the requests this process allowed since then. A background thread
refreshes every `refresh_seconds` (the `--budget-refresh-seconds` setting, default 0.25): one Lua script call
(keyrelay_budgets.REFRESH) adds the local requests and reads every subject's counters back. `check` is pure
arithmetic on that cache.

What the cache costs in accuracy (the overshoot): a budget is seen spent at most one refresh plus one Redis
round trip after it was, so each replica may allow the requests arriving in that time; request counts allowed
locally between refreshes are counted at once locally, but other replicas see them only after the next
refresh; tokens are added by the translator only when a response ends, so requests already in flight when a
token budget is spent still finish (a request in flight is never cut) and push the count past the limit.

Redis unreachable (a refresh failed or none succeeded for `stale_seconds`): each budget follows its
`on_redis_error`: `open` allows (requests are still counted locally and flushed once Redis is back), `closed`
denies with 503. The outage is logged once when it starts and once when it ends, and counted in metrics.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import keyrelay_budgets as kb

from .policy import Budget, Budgets

log = logging.getLogger("ext_authz.budgets")

DEFAULT_REFRESH_SECONDS = 0.25
# Keys tracked per process (beyond the policy's budgeted tenants, which are always tracked); a key beyond it is
# not budgeted until others go idle.
MAX_SUBJECTS = 20_000
# A subject not seen on the Check path for this long is dropped from the cache (re-read when it returns).
IDLE_SECONDS = 300.0
# Subjects per script call (the rest go in further calls of the same pipeline).
BATCH = 500
BUDGETED_ROUTE = "messages"

REASON_REQUESTS = "budget_requests_per_minute"
REASON_TOKENS_MINUTE = "budget_tokens_per_minute"
REASON_TOKENS_DAY = "budget_tokens_per_day"
REASON_CONCURRENT = "budget_concurrent_requests"
# Request ids per subject waiting for the next refresh; beyond it a request is still counted but not tracked.
MAX_STARTS = 10_000
REASON_UNAVAILABLE = "budget_unavailable"


@dataclass(slots=True)
class Subject:
    """One tenant's or key's counters as of the last refresh (weighted tokens), and the requests allowed here
    since (`pending`)."""

    minute_bucket: int = -1
    day_bucket: int = -1
    minute_requests: int = 0
    minute_tokens: float = 0.0
    day_tokens: float = 0.0
    pending: int = 0
    seen: float = 0.0  # monotonic time of the last Check that used it
    inflight: int = 0  # requests in flight across replicas, as of the last refresh
    starts: list[str] = field(default_factory=list)  # request ids allowed here since (concurrent budgets)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A budget's answer for one request: `reason` empty means allowed."""

    reason: str = ""
    retry_after: int = 0
    dry_run: bool = False


ALLOW = Verdict()


def weighted(values: list, weights: tuple[float, ...]) -> float:
    """Weighted tokens from a hash's token fields (FIELDS order after `requests`; None for absent)."""
    return sum(int(v or 0) * w for v, w in zip(values, weights))


def over_budget(budget: Budget, s: Subject, now: float, window: int) -> Verdict:
    """Whether `budget` is spent for subject `s` at Redis time `now` (pure). Counters of a window that has
    ended count as zero, so a budget recovers at the window's end without waiting for a refresh."""
    minute = int(now // window)
    same_minute = minute == s.minute_bucket
    if budget.requests_per_minute is not None:
        used = (s.minute_requests if same_minute else 0) + s.pending
        if used >= budget.requests_per_minute:
            return Verdict(REASON_REQUESTS, _retry(now, window), budget.dry_run)
    if budget.tokens_per_minute is not None and same_minute and s.minute_tokens >= budget.tokens_per_minute:
        return Verdict(REASON_TOKENS_MINUTE, _retry(now, window), budget.dry_run)
    if budget.tokens_per_day is not None and int(now // kb.DAY_SECONDS) == s.day_bucket \
            and s.day_tokens >= budget.tokens_per_day:
        return Verdict(REASON_TOKENS_DAY, _retry(now, kb.DAY_SECONDS), budget.dry_run)
    if budget.concurrent_requests is not None and s.inflight + len(s.starts) >= budget.concurrent_requests:
        return Verdict(REASON_CONCURRENT, 1, budget.dry_run)
    return ALLOW


def _retry(now: float, window: int) -> int:
    """Whole seconds until the window holding `now` ends (at least 1)."""
    return max(1, math.ceil((math.floor(now / window) + 1) * window - now))


class BudgetTracker:
    """The local view of the budgets (see the module text). Thread-safe: `check` runs on the Check threads,
    `refresh` on the background thread (or directly in tests)."""

    def __init__(self, redis_url: str | None, budgets: Callable[[], Budgets | None], metrics=None, *,
                 refresh_seconds: float = DEFAULT_REFRESH_SECONDS, stale_seconds: float | None = None,
                 socket_timeout: float = kb.DEFAULT_SOCKET_TIMEOUT, max_subjects: int = MAX_SUBJECTS) -> None:
        self.redis_url = redis_url
        self._budgets = budgets
        self.metrics = metrics
        self.refresh_seconds = refresh_seconds
        self.stale_seconds = stale_seconds if stale_seconds is not None else max(1.0, 4 * refresh_seconds)
        self.socket_timeout = socket_timeout
        self.max_subjects = max_subjects
        self._subjects: dict[tuple[str, str], Subject] = {}
        self._lock = threading.Lock()
        self._last_ok = -math.inf   # monotonic time of the last successful refresh
        self._offset = 0.0          # Redis clock minus local wall clock
        self._window = kb.DEFAULT_WINDOW_SECONDS
        self._client = None
        self._script = None
        self._down_logged = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the Check path

    def check(self, budgets: Budgets, tenant: str, key_id: str, request_id: str = "") -> tuple[Verdict, Verdict]:
        """(enforced verdict, dry-run verdict) for one allowed `messages` request. Counts the request locally
        unless it is denied (and, for a concurrent_requests budget, adds `request_id` to the in-flight set)."""
        pairs = []
        if tenant:
            b = budgets.tenants.get(tenant)
            if b is not None:
                pairs.append((("tenant", tenant), b))
        if key_id and budgets.per_key is not None:
            pairs.append((("key", key_id), budgets.per_key))
        if not pairs:
            return ALLOW, ALLOW
        mono = time.monotonic()
        healthy = mono - self._last_ok <= self.stale_seconds
        now = time.time() + self._offset
        window = budgets.window_seconds
        deny = dry = ALLOW
        subjects = []
        with self._lock:
            for ident, budget in pairs:
                s = self._subjects.get(ident)
                if s is None:
                    if len(self._subjects) >= self.max_subjects + len(budgets.tenants):
                        continue
                    s = self._subjects[ident] = Subject()
                s.seen = mono
                subjects.append((s, budget.concurrent_requests is not None))
                if not healthy:
                    if budget.on_redis_error == "closed":
                        verdict = Verdict(REASON_UNAVAILABLE, 1, budget.dry_run)
                    else:
                        continue
                else:
                    verdict = over_budget(budget, s, now, window)
                if not verdict.reason:
                    continue
                if verdict.dry_run:
                    dry = dry if dry.reason else verdict
                elif not deny.reason:
                    deny = verdict
            if not deny.reason:
                track = kb.trackable_request_id(request_id)
                for s, concurrent in subjects:
                    s.pending += 1
                    if concurrent and track and len(s.starts) < MAX_STARTS:
                        s.starts.append(request_id)
        if not healthy and not deny.reason and self.metrics is not None:
            self.metrics.budget_fail_open.inc()
        return deny, dry

    # ------------------------------------------------------------------ the background refresh

    def start(self, stop: threading.Event) -> None:
        """A first refresh now (bounded by the socket timeout), then one every refresh_seconds until `stop`."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, args=(stop,), name="ext_authz-budgets", daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.refresh_seconds):
            self.refresh()
        self.refresh()  # flush the requests counted since the last refresh
        self.close()

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._client = None

    def refresh(self) -> bool:
        """Flush local request counts and read every subject's counters. False when Redis did not answer."""
        budgets = self._budgets()
        if budgets is None:
            with self._lock:
                self._subjects.clear()
            return True
        if not self.redis_url:
            self._store_down("no Redis URL configured (--redis-url / KEYRELAY_REDIS_URL)")
            return False
        mono = time.monotonic()
        with self._lock:
            # Tenants with a budget are always tracked (so a replica knows them before their first request);
            # keys only while they are in use.
            for ident in [i for i, s in self._subjects.items() if mono - s.seen > IDLE_SECONDS
                          and (i[0] != "tenant" or i[1] not in budgets.tenants)]:
                del self._subjects[ident]
            for tenant in budgets.tenants:
                if ("tenant", tenant) not in self._subjects:
                    self._subjects[("tenant", tenant)] = Subject(seen=mono)
            taken = [(ident, s.pending, s.starts) for ident, s in self._subjects.items()]
            for _, s in self._subjects.items():
                s.pending, s.starts = 0, []
        try:
            replies = self._call(budgets, taken)
        except Exception as exc:  # noqa: BLE001 - any store failure is an outage, handled per budget
            with self._lock:  # give the counts back: they are flushed by the next refresh that works
                for ident, n, starts in taken:
                    s = self._subjects.get(ident)
                    if s is not None:
                        s.pending += n
                        s.starts[:0] = starts[:max(0, MAX_STARTS - len(s.starts))]
            self._store_down(f"{type(exc).__name__}: {exc}")
            return False
        local = time.time()
        with self._lock:
            for (ident, _, _), (sec, mb, db, values) in zip(taken, replies):
                s = self._subjects.get(ident)
                if s is None:
                    continue
                s.minute_bucket, s.day_bucket = mb, db
                s.minute_requests = int(values[0] or 0)
                s.minute_tokens = weighted(values[1:5], budgets.weights)
                s.day_tokens = weighted(values[6:10], budgets.weights)
                s.inflight = int(values[10] or 0)
            if replies:
                self._offset = replies[0][0] - local
        self._window = budgets.window_seconds
        self._last_ok = time.monotonic()
        if self.metrics is not None:
            self.metrics.budget_store_up.set(1)
        if self._down_logged:
            self._down_logged = False
            log.warning("budget store reachable again", extra={"redis": kb.redact_url(self.redis_url)})
        return True

    def _call(self, budgets: Budgets, taken: list) -> list[tuple[float, int, int, list]]:
        if self._client is None:
            import redis  # imported only when budgets are configured

            self._client = redis.Redis.from_url(self.redis_url, socket_timeout=self.socket_timeout,
                                                socket_connect_timeout=self.socket_timeout)
            self._script = self._client.register_script(kb.REFRESH)
        chunks = [taken[i:i + BATCH] for i in range(0, len(taken), BATCH)] or [[]]
        pipe = self._client.pipeline(transaction=False)
        for chunk in chunks:
            args: list = [budgets.window_seconds]
            for (scope, ident), n, starts in chunk:
                budget = budgets.tenants.get(ident) if scope == "tenant" else budgets.per_key
                concurrent = int(budget is not None and budget.concurrent_requests is not None)
                args += [scope, ident, n, concurrent, len(starts), *starts]
            self._script(keys=[kb.WINDOW_KEY], args=args, client=pipe)
        results = pipe.execute()
        out = []
        for result in results:
            sec = int(result[0]) + int(result[1]) / 1e6
            w = int(result[2])
            mb, db = int(sec // w), int(sec // kb.DAY_SECONDS)
            rest = result[3:]
            for i in range(0, len(rest), 11):
                out.append((sec, mb, db, rest[i:i + 11]))
        return out

    def _store_down(self, problem: str) -> None:
        if self.metrics is not None:
            self.metrics.budget_store_errors.inc()
            self.metrics.budget_store_up.set(0)
        if not self._down_logged:
            self._down_logged = True
            log.error("budget store unreachable; budgets follow their on_redis_error (open: allow, closed: 503)",
                      extra={"redis": kb.redact_url(self.redis_url) if self.redis_url else "",
                             "problem": problem.replace(self.redis_url or "\0", "<redis url>")[:300]})
