"""What changes between two policies, for whom, and in which direction (pure).

`compare(old, new)` lists every difference that changes a decision or what is recorded about it: keys allowed
or revoked, tenants, the top-level defaults, route overrides, the dry-run rules and the decision log. Each change
is classified:

- `tightens`: the new policy denies something the old one allowed, and allows nothing new;
- `loosens`: the new policy may allow something the old one denied, or hands a request a different identity
  or credential (a tenant change, passthrough off, a key source added, a changed `key_format` regex, whose
  language cannot be compared);
- `neutral`: nothing is allowed or denied differently (dry-run rules, the decision log).

`effect(changes)` folds a list into one word: any loosening makes the whole change `loosens`. The reload
(reload.py) applies a loosening change only after a quiet period, and `keyrelay-policy diff` prints the same
list for review, so what a reviewer sees is what the service does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .decide import KEY_ID_LENGTH
from .policy import BUDGET_LIMITS, DEFAULT_ROUTE, WEIGHT_KINDS, Budget, Budgets, Policy, RoutePolicy

TIGHTENS = "tightens"
LOOSENS = "loosens"
NEUTRAL = "neutral"
NONE = "none"  # effect() of an empty list

ROUTE_SETTINGS = tuple(f.name for f in fields(RoutePolicy))


@dataclass(frozen=True, slots=True)
class Change:
    area: str      # allowlist, revoked, defaults, routes.<name>, dry_run, decision_log
    subject: str   # a key fingerprint (16 hex, as x-authz-key-id), a setting name, or ""
    old: str       # the old value as text ("" when absent)
    new: str       # the new value as text ("" when absent)
    effect: str    # TIGHTENS | LOOSENS | NEUTRAL
    what: str      # one line for people

    def line(self) -> str:
        return f"[{self.effect}] {self.what}"


def effect(changes: list[Change]) -> str:
    kinds = {c.effect for c in changes}
    if LOOSENS in kinds:
        return LOOSENS
    if TIGHTENS in kinds:
        return TIGHTENS
    return NEUTRAL if kinds else NONE


def compare(old: Policy, new: Policy) -> list[Change]:
    """Every decision-relevant difference from `old` to `new`, in a stable order."""
    out: list[Change] = []
    out += _allowlist(old.allowlist, new.allowlist, "allowlist")
    out += _revoked(old.revoked, new.revoked, "revoked")
    out += _settings(old.default, new.default, "defaults", None, None)
    for name in _route_names(old, new):
        out += _settings(old.for_route(name), new.for_route(name), f"routes.{name}",
                         old.route_overrides.get(name, {}), new.route_overrides.get(name, {}))
    out += _dry_run(old, new)
    out += _budgets(old.budgets, new.budgets)
    if old.decision_log != new.decision_log:
        out.append(Change("decision_log", "", _log_text(old), _log_text(new), NEUTRAL,
                          f"decision log: {_log_text(old)} -> {_log_text(new)}"))
    return out


def classify(old: Policy, new: Policy) -> str:
    return effect(compare(old, new))


# --------------------------------------------------------------------------------------------- parts


def _fp(digest: str) -> str:
    return digest[:KEY_ID_LENGTH]


def _allowlist(old: dict | None, new: dict | None, area: str) -> list[Change]:
    if old is None and new is None:
        return []
    if old is None:
        return [Change(area, "", "absent", f"{len(new)} keys", TIGHTENS,
                       f"{area} added: only its {len(new)} keys pass from now on")]
    if new is None:
        return [Change(area, "", f"{len(old)} keys", "absent", LOOSENS,
                       f"{area} removed: every well-formed, unrevoked key passes")]
    out = []
    for digest in sorted(new.keys() - old.keys()):
        out.append(Change(area, _fp(digest), "", new[digest], LOOSENS,
                          f"{area}: key {_fp(digest)} allowed (tenant {new[digest]})"))
    for digest in sorted(old.keys() - new.keys()):
        out.append(Change(area, _fp(digest), old[digest], "", TIGHTENS,
                          f"{area}: key {_fp(digest)} no longer allowed (was tenant {old[digest]})"))
    for digest in sorted(d for d in old.keys() & new.keys() if old[d] != new[d]):
        # A different identity for the same key (quotas, billing): never applied from a half-written file.
        out.append(Change(area, _fp(digest), old[digest], new[digest], LOOSENS,
                          f"{area}: key {_fp(digest)} tenant {old[digest]} -> {new[digest]}"))
    return out


def _revoked(old: frozenset[str], new: frozenset[str], area: str) -> list[Change]:
    out = [Change(area, _fp(d), "", "revoked", TIGHTENS, f"{area}: key {_fp(d)} revoked")
           for d in sorted(new - old)]
    out += [Change(area, _fp(d), "revoked", "", LOOSENS, f"{area}: key {_fp(d)} no longer revoked")
            for d in sorted(old - new)]
    return out


def _route_names(old: Policy, new: Policy) -> list[str]:
    names = list(old.route_overrides)
    names += [n for n in new.route_overrides if n not in old.route_overrides]
    return [n for n in names if n != DEFAULT_ROUTE]


def _settings(old: RoutePolicy, new: RoutePolicy, area: str, old_own: dict | None,
              new_own: dict | None) -> list[Change]:
    """Differences of effective settings. For a route only the fields either file sets on that route itself:
    a field the route inherits changes with the defaults and is reported there once."""
    out = []
    for name in ROUTE_SETTINGS:
        if old_own is not None and name not in old_own and name not in (new_own or {}):
            continue
        before, after = getattr(old, name), getattr(new, name)
        if _same(before, after):
            continue
        out.append(Change(area, name, _text(before), _text(after), _direction(name, before, after),
                          f"{area}.{name}: {_text(before)} -> {_text(after)}"))
    return out


def _same(a, b) -> bool:
    if hasattr(a, "pattern") and hasattr(b, "pattern"):
        return a.pattern == b.pattern and a.flags == b.flags
    return a == b


def _text(value) -> str:
    if value is None:
        return "none"
    if hasattr(value, "pattern"):
        return repr(value.pattern)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return str(value)


def _direction(name: str, before, after) -> str:
    if name == "require_key":
        return TIGHTENS if after else LOOSENS
    if name == "passthrough":
        # Off: the request goes upstream on the shared static key instead of the caller's own.
        return TIGHTENS if after else LOOSENS
    if name == "conflicting_keys":
        return TIGHTENS if after == "reject" else LOOSENS
    if name == "max_key_length":
        return TIGHTENS if after < before else LOOSENS
    if name == "key_sources":
        # Fewer sources accept fewer requests; a new source or a new order may pick another key.
        return TIGHTENS if set(after) < set(before) and [s for s in before if s in after] == list(after) \
            else LOOSENS
    if name == "key_format":
        # Two different regexes cannot be compared: treat a changed format as wider.
        return TIGHTENS if before is None else LOOSENS
    return LOOSENS


def _dry_run(old: Policy, new: Policy) -> list[Change]:
    if old.shadow is None and new.shadow is None:
        return []
    if new.shadow is None:
        return [Change("dry_run", "", "present", "absent", NEUTRAL, "dry_run removed")]
    header = [] if old.shadow is not None else \
        [Change("dry_run", "", "absent", "present", NEUTRAL, "dry_run added (it logs, never denies)")]
    # What the dry-run rules would decide differently, minus what the live change already says.
    live = {_identity(c) for c in compare(_bare(old), _bare(new))}
    inner = [c for c in compare(_bare(old.shadow or old), _bare(new.shadow)) if _identity(c) not in live]
    return header + [Change("dry_run", c.subject, c.old, c.new, NEUTRAL,
                            f"dry_run: {c.what} (would {c.effect[:-1]})") for c in inner]


def _budgets(old: Budgets | None, new: Budgets | None) -> list[Change]:
    """Budget changes: a higher or removed limit, a dry run switched on, fail-open instead of fail-closed, a
    lower weight or a shorter window loosen; the opposites tighten; changes to a dry-run budget are neutral."""
    if old == new:
        return []
    old, new = old or Budgets(), new or Budgets()
    out: list[Change] = []
    subjects = [("per_key", old.per_key, new.per_key)] + [
        (f"tenants.{t}", old.tenants.get(t), new.tenants.get(t))
        for t in sorted({*old.tenants, *new.tenants})]
    for subject, before, after in subjects:
        if before == after:
            continue
        out.append(Change("budgets", subject, _budget_text(before), _budget_text(after),
                          _budget_effect(before, after),
                          f"budget {subject}: {_budget_text(before) or 'none'} -> {_budget_text(after) or 'none'}"))
    for kind, w_old, w_new in zip(WEIGHT_KINDS, old.weights, new.weights):
        if w_old != w_new:
            out.append(Change("budgets", f"weights.{kind}", f"{w_old:g}", f"{w_new:g}",
                              LOOSENS if w_new < w_old else TIGHTENS, f"budget weight {kind}: {w_old:g} -> {w_new:g}"))
    if old.window_seconds != new.window_seconds:
        out.append(Change("budgets", "window_seconds", str(old.window_seconds), str(new.window_seconds),
                          LOOSENS if new.window_seconds < old.window_seconds else TIGHTENS,
                          f"budget window: {old.window_seconds} s -> {new.window_seconds} s"))
    return out


def _budget_effect(before: Budget | None, after: Budget | None) -> str:
    enforced = lambda b: b is not None and not b.dry_run  # noqa: E731
    if not enforced(before) and not enforced(after):
        return NEUTRAL
    if not enforced(after):
        return LOOSENS
    if not enforced(before):
        return TIGHTENS
    loosens = any(getattr(after, n) is None and getattr(before, n) is not None
                  or None not in (getattr(after, n), getattr(before, n)) and getattr(after, n) > getattr(before, n)
                  for n in BUDGET_LIMITS) or (before.on_redis_error, after.on_redis_error) == ("closed", "open")
    return LOOSENS if loosens else TIGHTENS


def _budget_text(b: Budget | None) -> str:
    if b is None:
        return ""
    parts = [f"{n} {getattr(b, n)}" for n in BUDGET_LIMITS if getattr(b, n) is not None]
    parts.append(f"on_redis_error {b.on_redis_error}")
    if b.dry_run:
        parts.append("dry_run")
    return ", ".join(parts)


def _identity(change: Change) -> tuple[str, str, str, str]:
    return (change.area, change.subject, change.old, change.new)


def _bare(policy: Policy) -> Policy:
    return replace(policy, shadow=None, dry_run=None, decision_log=None)


def _log_text(policy: Policy) -> str:
    cfg = policy.decision_log
    if cfg is None:
        return "off"
    return f"{cfg.mode} (sample_rate {cfg.sample_rate:g})" if cfg.mode == "sampled" else cfg.mode
