"""Prometheus metrics. With --workers > 1 every worker writes prometheus_client multiprocess files and the
parent serves the aggregate (PROMETHEUS_MULTIPROC_DIR is set before the workers start)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "keyrelay_ext_authz"
# Check latency inside the service; Envoy adds the gRPC round trip.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(f"{PREFIX}_decisions", "Check decisions by result (allow/deny/error), reason and route",
                                 ["result", "reason", "route"], registry=registry)
        self.check_seconds = Histogram(f"{PREFIX}_check_duration_seconds", "Time to decide one Check",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.internal_errors = Counter(f"{PREFIX}_internal_errors",
                                       "Checks that failed inside the service and were denied (fail closed)",
                                       registry=registry)
        self.reloads = Counter(f"{PREFIX}_policy_reloads", "Policy file (re)loads by result (success/error)",
                               ["result"], registry=registry)
        self.reload_errors = Counter(f"{PREFIX}_policy_reload_errors",
                                     "Invalid policy files seen on reload (the last good policy stays)",
                                     registry=registry)
        self.policy_info = Gauge(f"{PREFIX}_policy_info", "1 for the live policy, by content digest prefix",
                                 ["digest", "source"], registry=registry, multiprocess_mode="liveall")
        self.policy_loaded = Gauge(f"{PREFIX}_policy_loaded_timestamp_seconds",
                                   "Unix time the live policy was loaded", registry=registry,
                                   multiprocess_mode="liveall")
        self.dry_run_denials = Counter(f"{PREFIX}_dry_run_denials",
                                       "Allowed requests a dry_run rule of the policy would have denied, by reason "
                                       "and route", ["reason", "route"], registry=registry)
        self.budget_store_up = Gauge(f"{PREFIX}_budget_store_up",
                                     "1 while the last budget refresh from Redis worked, 0 while it fails",
                                     registry=registry, multiprocess_mode="liveall")
        self.budget_store_errors = Counter(f"{PREFIX}_budget_store_errors",
                                           "Budget refreshes that failed (Redis unreachable, timed out or erred)",
                                           registry=registry)
        self.budget_fail_open = Counter(f"{PREFIX}_budget_fail_open",
                                        "Budgeted requests allowed unchecked while Redis was unreachable "
                                        "(on_redis_error: open)", registry=registry)
        self._children: dict[tuple[str, str, str], Counter] = {}
        self._live: tuple[str, str] | None = None

    def decision(self, result: str, reason: str, route: str) -> None:
        key = (result, reason, route)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.decisions.labels(result, reason, route)
        child.inc()

    def dry_run_denial(self, reason: str, route: str) -> None:
        self.dry_run_denials.labels(reason, route).inc()

    def policy_live(self, digest: str, source: str) -> None:
        if self._live is not None and self._live != (digest, source):
            self.policy_info.labels(*self._live).set(0)
        self._live = (digest, source)
        self.policy_info.labels(digest, source).set(1)
        self.policy_loaded.set(time.time())
