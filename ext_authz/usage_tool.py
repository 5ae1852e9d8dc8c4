"""`keyrelay-usage`: per-tenant (and, with --keys, per-key) usage of the current window and day, read from the
budget counters in Redis, with the policy's limits and what is left of them, as a table (or JSON lines).

    keyrelay-usage --policy policy.yaml [--redis-url redis://...] [--keys] [--json]

Rows: every tenant with a budget in the policy, plus every tenant (and key, with --keys) that has counters in
the current window or day, at most MAX_ROWS. Tokens are weighted with the policy's weights (all 1 without a
policy). The Redis URL comes from --redis-url or KEYRELAY_REDIS_URL and is never printed with its password.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import keyrelay_budgets as kb
from keyrelay_stack.version import add_version_flag

from .budgets import weighted
from .policy import Budget, Budgets, PolicyError, load_policy

PROG = "keyrelay-usage"
MAX_ROWS = 1000  # subjects listed at most (the rest are counted in a last line)
SCAN_COUNT = 500


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Usage and remaining budget per tenant, from Redis.")
    p.add_argument("--policy", help="the policy file (limits and weights; default: no limits, weights 1)")
    p.add_argument("--redis-url", help=f"the budget Redis ({kb.REDIS_URL_ENV})")
    p.add_argument("--keys", action="store_true", help="also list keys (by fingerprint) with counters")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    return add_version_flag(p)


def _subjects(client, scope: str, suffix: str, limit: int) -> set[str]:
    """Ids of `scope` that have a hash ending in `suffix` (the current window or day), at most `limit`."""
    found: set[str] = set()
    prefix = f"{kb.KEY_PREFIX}:{scope}:"
    for raw in client.scan_iter(match=f"{prefix}*{suffix}", count=SCAN_COUNT):
        key = raw.decode()
        found.add(key[len(prefix):-len(suffix)])
        if len(found) >= limit:
            break
    return found


def collect(client, budgets: Budgets | None, keys: bool) -> tuple[list[dict], int]:
    """Rows for every subject (see the module text) and how many were left out."""
    sec, usec = client.time()
    now = sec + usec / 1e6
    window = budgets.window_seconds if budgets else int(client.get(kb.WINDOW_KEY) or kb.DEFAULT_WINDOW_SECONDS)
    mb, db = int(now // window), int(now // kb.DAY_SECONDS)
    weights = budgets.weights if budgets else (1.0,) * len(kb.TOKEN_FIELDS)
    idents: list[tuple[str, str]] = [("tenant", t) for t in (budgets.tenants if budgets else {})]
    for scope in ("tenant", "key") if keys else ("tenant",):
        seen = set()
        for suffix in (f":m:{mb}", f":d:{db}"):
            seen |= _subjects(client, scope, suffix, MAX_ROWS + 1)
        idents += sorted((scope, i) for i in seen if (scope, i) not in idents)
    left_out = max(0, len(idents) - MAX_ROWS)
    idents = idents[:MAX_ROWS]
    pipe = client.pipeline(transaction=False)
    for scope, ident in idents:
        pipe.hmget(kb.window_key(scope, ident, "m", mb), *kb.FIELDS)
        pipe.hmget(kb.window_key(scope, ident, "d", db), *kb.FIELDS)
        pipe.zcount(f"{kb.KEY_PREFIX}:{scope}:{ident}:inflight", now, "+inf")
    replies = pipe.execute()
    rows = []
    for n, (scope, ident) in enumerate(idents):
        minute, day, inflight = replies[3 * n:3 * n + 3]
        budget = (budgets.tenants.get(ident) if scope == "tenant" else budgets.per_key) if budgets else None
        rows.append(row(scope, ident, minute, day, weights, budget, window, now, inflight))
    return rows, left_out


def row(scope: str, ident: str, minute: list, day: list, weights, budget: Budget | None, window: int,
        now: float, inflight: int = 0) -> dict:
    b = budget or Budget()
    out = {"scope": scope, "id": ident, "window_seconds": window,
           "requests_window": int(minute[0] or 0), "tokens_window": round(weighted(minute[1:], weights)),
           "tokens_day": round(weighted(day[1:], weights)), "requests_day": int(day[0] or 0),
           "requests_per_minute": b.requests_per_minute, "tokens_per_minute": b.tokens_per_minute,
           "tokens_per_day": b.tokens_per_day, "in_flight": int(inflight),
           "concurrent_requests": b.concurrent_requests,
           "mode": "" if budget is None else ("dry-run" if b.dry_run else "enforced") + f", {b.on_redis_error}",
           "window_resets_in": max(1, int((now // window + 1) * window - now + 0.999))}
    for used, limit, name in ((out["requests_window"], b.requests_per_minute, "requests_left"),
                              (out["tokens_window"], b.tokens_per_minute, "tokens_window_left"),
                              (out["tokens_day"], b.tokens_per_day, "tokens_day_left")):
        out[name] = None if limit is None else max(0, limit - used)
    return out


COLUMNS = (("SCOPE", "scope"), ("ID", "id"), ("REQ/WIN", "requests_window"), ("RPM", "requests_per_minute"),
           ("REQ LEFT", "requests_left"), ("TOK/WIN", "tokens_window"), ("TPM", "tokens_per_minute"),
           ("TOK LEFT", "tokens_window_left"), ("TOK/DAY", "tokens_day"), ("TPD", "tokens_per_day"),
           ("DAY LEFT", "tokens_day_left"), ("IN FLIGHT", "in_flight"), ("MAX", "concurrent_requests"),
           ("MODE", "mode"))


def table(rows: list[dict]) -> str:
    cells = [[h for h, _ in COLUMNS]] + [["-" if r[k] is None or r[k] == "" else str(r[k]) for _, k in COLUMNS]
                                         for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = args.redis_url or os.environ.get(kb.REDIS_URL_ENV)
    try:
        if not url:
            raise ValueError(f"no Redis URL: pass --redis-url or set {kb.REDIS_URL_ENV}")
        kb.check_url(url)
        budgets = load_policy(args.policy).budgets if args.policy else None
    except (ValueError, PolicyError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        rows, left_out = collect(client, budgets, args.keys)
    except redis.RedisError as exc:
        print(f"{PROG}: cannot read {kb.redact_url(url)}: {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.json:
        for r in rows:
            print(json.dumps(r, separators=(",", ":")))
    else:
        print(table(rows))
        if rows:
            print(f"window: {rows[0]['window_seconds']} s, resets in {rows[0]['window_resets_in']} s; "
                  "day: UTC; tokens weighted with the policy's weights")
    if left_out:
        print(f"... {left_out} more not listed (at most {MAX_ROWS})", file=sys.stderr)
    return 0
