"""The decision log: one JSON line per decision, configured in the policy file (`decision_log:`), so the team that
owns the central policy decides what is recorded, not each deployment's flags.

Modes (policy.DECISION_LOG_MODES): `all` logs every decision; `denials` logs denials and allowed requests a
dry-run rule would have denied; `sampled` logs those too, plus `sample_rate` of the other allowed requests.
A record carries request_id, key_id (the fingerprint), tenant, route, result, reason, the policy digest and the
dry-run outcome, never the key: `record()` builds it from a Decision, whose key field is excluded.

Lines go to the `ext_authz.decision` logger (msg `decision`) at info level, whatever --log-level says, through
the process's JSON log handler (logs.py)."""

from __future__ import annotations

import logging
import random
from typing import Callable

from .decide import Decision
from .policy import DecisionLogConfig

log = logging.getLogger("ext_authz.decision")
log.setLevel(logging.INFO)  # the policy turns the decision log on; the process log level does not turn it off


def wanted(cfg: DecisionLogConfig, allowed: bool, dry_run_reason: str, sample: Callable[[], float]) -> bool:
    """Whether this decision is logged under `cfg` (pure apart from `sample`, called only in sampled mode)."""
    if cfg.mode == "all" or not allowed or dry_run_reason:
        return True
    return cfg.mode == "sampled" and sample() < cfg.sample_rate


def record(decision: Decision, result: str, policy_digest: str, request_id: str, dry_run_reason: str) -> dict:
    """The fields of one decision-log line. Never the key (Decision.forward_key is not read)."""
    return {"request_id": request_id, "key_id": decision.key_id, "tenant": decision.tenant,
            "route": decision.route, "result": result, "reason": decision.reason, "status": decision.status,
            "credential": decision.credential, "policy": policy_digest, "dry_run": bool(dry_run_reason),
            "dry_run_reason": dry_run_reason}


class DecisionLog:
    """Writes decision-log lines for the live policy's `decision_log` setting."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._sample = (rng or random.Random()).random

    def write(self, cfg: DecisionLogConfig, decision: Decision, result: str, policy_digest: str, request_id: str,
              dry_run_reason: str = "") -> bool:
        if not wanted(cfg, result == "allow", dry_run_reason, self._sample):
            return False
        log.info("decision", extra=record(decision, result, policy_digest, request_id, dry_run_reason))
        return True
