"""The key policy: a typed, precompiled model and its YAML loader.

`load_policy(path)` reads a policy file (shape in docs/interfaces.md, reference in docs/ext_authz.md) and returns
a frozen `Policy` whose per-route settings are already merged and whose regex is already compiled, so the
decision path never parses or compiles anything. Every problem raises `PolicyError` naming file, line and cause.
The loader walks `yaml.compose` nodes (not `yaml.safe_load` output) to keep line numbers and to catch duplicate
keys, which plain PyYAML loading silently drops.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from keyrelay_budgets import DEFAULT_WINDOW_SECONDS, TENANT_ID, TOKEN_FIELDS

from .routes import DEFAULT_ROUTE, KNOWN_ROUTES  # noqa: F401 - the route names live in routes.py

SCHEMA_VERSION = 1
KEY_SOURCES = ("x-api-key", "authorization")
CONFLICT_MODES = ("reject", "first")
DEFAULT_MAX_KEY_LENGTH = 1024
MAX_KEY_LENGTH_LIMIT = 16384  # the highest max_key_length a policy may set
# The largest policy file read (about 40,000 allowlist entries); a larger file is refused like an invalid one.
MAX_POLICY_BYTES = 4 * 1024 * 1024
_ROUTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
DIGEST_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")  # a key as stored: sha256 hex
_TENANT = TENANT_ID
# decision_log.mode: off | all (every decision) | denials (denials and dry-run hits) | sampled (denials and
# dry-run hits, plus `sample_rate` of the allows).
DECISION_LOG_MODES = ("off", "all", "denials", "sampled")
# budgets (docs/ext_authz.md#budgets): limits per tenant and a default per key, counted in Redis.
BUDGET_LIMITS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "concurrent_requests")
BUDGET_FIELDS = {*BUDGET_LIMITS, "dry_run", "on_redis_error"}
REDIS_ERROR_MODES = ("open", "closed")
MAX_BUDGET_LIMIT = 10 ** 12
MAX_BUDGET_TENANTS = 10_000  # tenants with a budget of their own in one policy
MAX_WEIGHT = 1000
WEIGHT_KINDS = TOKEN_FIELDS
# budgets.window_seconds: the length of the "minute" windows. Below 60 only to exercise budgets in tests and
# demos without waiting a minute; limits named per_minute then count per window.
MIN_WINDOW_SECONDS = 1


def _is_null(node: yaml.Node) -> bool:
    """A YAML null (`~`, `null` or an empty value)."""
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")


class PolicyError(ValueError):
    """An invalid policy. `str()` is one line: `<file>:<line>: <problem>`."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        self.source = source
        self.line = line
        self.problem = problem
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Effective settings for one route (file defaults merged with the route's overrides)."""

    passthrough: bool = True
    require_key: bool = True
    key_sources: tuple[str, ...] = KEY_SOURCES
    conflicting_keys: str = "reject"
    key_format: re.Pattern[str] | None = None
    max_key_length: int = DEFAULT_MAX_KEY_LENGTH


@dataclass(frozen=True, slots=True)
class DryRun:
    """The `dry_run:` section as written: rules evaluated as if enforced whose denials are only logged and
    counted. Route fields at its top level replace the live top-level fields, `routes` entries are merged over
    the live route overrides, `allowlist` replaces the live allowlist, `revoked` adds to the live one."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    route_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    allowlist: Mapping[str, str] | None = None
    has_allowlist: bool = False
    revoked: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class DecisionLogConfig:
    """`decision_log:`: one JSON line per decision (see decision_log.py). Absent or `mode: off` means None."""

    mode: str = "all"
    sample_rate: float = 1.0


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget (a tenant's, or the default applied to every key): None means no such limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None  # weighted tokens (Budgets.weights)
    tokens_per_day: int | None = None     # weighted tokens per UTC day
    concurrent_requests: int | None = None  # messages requests in flight (allowed, not yet finished)
    dry_run: bool = False                 # would-be denials are logged and counted, nothing is denied
    on_redis_error: str = "open"          # open: allow while Redis is unreachable; closed: deny with 503


@dataclass(frozen=True, slots=True)
class Budgets:
    """`budgets:`: token and request limits counted across replicas in Redis (ext_authz/budgets.py)."""

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # WEIGHT_KINDS order
    window_seconds: int = DEFAULT_WINDOW_SECONDS
    per_key: Budget | None = None
    tenants: Mapping[str, Budget] = field(default_factory=dict)
    # Some budget limits requests in flight: the Check path then passes the request id along.
    concurrent: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    version: int = SCHEMA_VERSION
    default: RoutePolicy = field(default_factory=RoutePolicy)
    # Effective settings per route (defaults merged with the route's own fields) ...
    routes: Mapping[str, RoutePolicy] = field(default_factory=dict)
    # ... and the fields each route set itself, so that new defaults can be merged again (with_defaults).
    route_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # sha256 hex digest -> tenant; None means "no allowlist" (every well-formed, unrevoked key passes).
    allowlist: Mapping[str, str] | None = None
    revoked: frozenset[str] = frozenset()
    source: str = "<built-in>"
    # sha256 of the file content ("" for the built-in policy): shows which policy is live.
    digest: str = ""
    dry_run: DryRun | None = None
    # This policy with dry_run applied (built by with_defaults); None without dry_run. The decision path checks
    # `shadow is not None` only, so a policy without dry-run rules costs nothing extra.
    shadow: Policy | None = None
    decision_log: DecisionLogConfig | None = None
    budgets: Budgets | None = None

    def for_route(self, route: str) -> RoutePolicy:
        return self.routes.get(route, self.default)

    @property
    def short_digest(self) -> str:
        return self.digest[:12] if self.digest else "built-in"


ROUTE_FIELDS = {
    "passthrough": bool,
    "require_key": bool,
    "key_sources": list,
    "conflicting_keys": str,
    "key_format": str,
    "max_key_length": int,
}
TOP_FIELDS = {"version", "allowlist", "revoked", "routes", "dry_run", "decision_log", "budgets", *ROUTE_FIELDS}
# passthrough never denies a request, so it has nothing to preview in dry_run.
DRY_RUN_FIELDS = {"allowlist", "revoked", "routes", *ROUTE_FIELDS} - {"passthrough"}


def builtin_policy() -> Policy:
    """The policy used without a file: per-user keys required and passed through, conflicting keys rejected,
    `root` and `health` routes open (the HEAD / probe and health checks carry no key)."""
    overrides = {"root": {"require_key": False}, "health": {"require_key": False, "passthrough": False}}
    return with_defaults(Policy(route_overrides=overrides))


# ---------------------------------------------------------------------------------------------- loading


class _Loader:
    def __init__(self, source: str) -> None:
        self.source = source
        self._constructor = yaml.SafeLoader("")

    def error(self, node: yaml.Node | None, problem: str) -> PolicyError:
        line = node.start_mark.line + 1 if node is not None else None
        return PolicyError(self.source, line, problem)

    def scalar(self, node: yaml.Node, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{what} must be a single value, not a {_kind(node)}")
        return self._constructor.construct_object(node, deep=True)

    def typed(self, node: yaml.Node, what: str, kind: type) -> Any:
        if kind is list:
            if not isinstance(node, yaml.SequenceNode):
                raise self.error(node, f"{what} must be a list")
            return node.value
        value = self.scalar(node, what)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            names = {bool: "true or false", int: "an integer", str: "a string"}
            raise self.error(node, f"{what} must be {names[kind]}, got {value!r}")
        return value

    def mapping(self, node: yaml.Node, what: str, allowed: set[str] | None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping, not a {_kind(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, f"a key in {what}")
            if not isinstance(key, str):
                raise self.error(key_node, f"keys in {what} must be strings, got {key!r}")
            if key in out:
                raise self.error(key_node, f"duplicate key {key!r} in {what}")
            if allowed is not None and key not in allowed:
                raise self.error(key_node, f"unknown field {key!r} in {what} (allowed: {', '.join(sorted(allowed))})")
            out[key] = (key_node, value_node)
        return out

    def route_settings(self, fields: dict[str, tuple[yaml.Node, yaml.Node]], where: str) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for name, kind in ROUTE_FIELDS.items():
            if name not in fields:
                continue
            _, node = fields[name]
            if name == "key_format" and _is_null(node):
                changes[name] = None
                continue
            value = self.typed(node, f"{where}{name}", kind)
            if name == "key_sources":
                value = self.key_sources(node, value, where)
            elif name == "conflicting_keys" and value not in CONFLICT_MODES:
                raise self.error(node, f"{where}conflicting_keys must be one of {', '.join(CONFLICT_MODES)}, "
                                       f"got {value!r}")
            elif name == "key_format":
                try:
                    value = re.compile(value)
                except re.error as exc:
                    raise self.error(node, f"{where}key_format is not a valid regular expression: {exc}") from None
            elif name == "max_key_length" and not 1 <= value <= MAX_KEY_LENGTH_LIMIT:
                raise self.error(node, f"{where}max_key_length must be between 1 and {MAX_KEY_LENGTH_LIMIT}, "
                                       f"got {value}")
            changes[name] = value
        return changes

    def key_sources(self, node: yaml.Node, items: list[yaml.Node], where: str) -> tuple[str, ...]:
        sources: list[str] = []
        for item in items:
            value = self.typed(item, f"an entry of {where}key_sources", str).lower()
            if value not in KEY_SOURCES:
                raise self.error(item, f"unknown key source {value!r} (allowed: {', '.join(KEY_SOURCES)})")
            if value in sources:
                raise self.error(item, f"key source {value!r} is listed twice")
            sources.append(value)
        if not sources:
            raise self.error(node, f"{where}key_sources must name at least one source")
        return tuple(sources)

    def digest_list(self, node: yaml.Node, what: str, with_tenant: bool) -> dict[str, str]:
        if _is_null(node):
            return {}
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{what} must be a list of entries like {{sha256: <64 hex>}}")
        allowed = {"sha256", "tenant", "note"} if with_tenant else {"sha256", "note"}
        out: dict[str, str] = {}
        for item in node.value:
            fields = self.mapping(item, f"an entry of {what}", allowed)
            if "sha256" not in fields:
                raise self.error(item, f"an entry of {what} has no sha256 field")
            digest_node = fields["sha256"][1]
            digest = self.scalar(digest_node, "sha256")
            if not isinstance(digest, str) or not DIGEST_PATTERN.match(digest):
                raise self.error(digest_node, "sha256 must be 64 hexadecimal characters (the output of "
                                              "keyrelay-policy digest), never the key itself")
            digest = digest.lower()
            if digest in out:
                raise self.error(digest_node, f"digest {digest[:16]}... is listed twice in {what}")
            tenant = ""
            if with_tenant:
                if "tenant" not in fields:
                    raise self.error(item, f"an entry of {what} has no tenant field")
                tenant_node = fields["tenant"][1]
                tenant = self.scalar(tenant_node, "tenant")
                if not isinstance(tenant, str) or not _TENANT.match(tenant):
                    raise self.error(tenant_node, "tenant must be 1-128 characters of letters, digits and _ . : @ / -")
            if "note" in fields:
                self.typed(fields["note"][1], "note", str)
            out[digest] = tenant
        return out


    def routes(self, fields: dict[str, tuple[yaml.Node, yaml.Node]], where: str) -> dict[str, dict[str, Any]]:
        """The `routes:` mapping (route name -> the fields that route sets itself)."""
        overrides: dict[str, dict[str, Any]] = {}
        if "routes" not in fields or _is_null(fields["routes"][1]):
            return overrides
        for name, (key_node, value_node) in self.mapping(fields["routes"][1], f"{where}routes", None).items():
            if not _ROUTE_NAME.match(name):
                raise self.error(key_node, f"route name {name!r} must be lower-case letters, digits, _ . -")
            if name == DEFAULT_ROUTE:
                raise self.error(key_node, f"use the top-level fields for the default route, not "
                                           f"{where}routes.default")
            route_fields = {} if _is_null(value_node) else \
                self.mapping(value_node, f"{where}routes.{name}", set(ROUTE_FIELDS))
            overrides[name] = self.route_settings(route_fields, f"{where}routes.{name}.")
        return overrides

    def dry_run(self, node: yaml.Node) -> DryRun | None:
        if _is_null(node):
            return None
        fields = self.mapping(node, "dry_run", DRY_RUN_FIELDS)
        has_allowlist = "allowlist" in fields
        return DryRun(
            defaults=self.route_settings(fields, "dry_run."),
            route_overrides=self.routes(fields, "dry_run."),
            allowlist=self.digest_list(fields["allowlist"][1], "dry_run.allowlist", with_tenant=True)
            if has_allowlist else None,
            has_allowlist=has_allowlist,
            revoked=frozenset(self.digest_list(fields["revoked"][1], "dry_run.revoked", with_tenant=False))
            if "revoked" in fields else frozenset())

    def decision_log(self, node: yaml.Node) -> DecisionLogConfig | None:
        if _is_null(node):
            return None
        fields = self.mapping(node, "decision_log", {"mode", "sample_rate"})
        if "mode" not in fields:
            raise self.error(node, f"decision_log needs a mode ({', '.join(DECISION_LOG_MODES)})")
        mode_node = fields["mode"][1]
        # YAML 1.1 reads a bare `off` as false: accept it as the mode it looks like.
        mode = self.scalar(mode_node, "decision_log.mode")
        mode = "off" if mode is False else mode
        if mode not in DECISION_LOG_MODES:
            raise self.error(mode_node, f"decision_log.mode must be one of {', '.join(DECISION_LOG_MODES)}, "
                                        f"got {mode!r}")
        if mode == "sampled":
            if "sample_rate" not in fields:
                raise self.error(node, "decision_log.mode sampled needs sample_rate (0 < rate <= 1)")
            rate_node = fields["sample_rate"][1]
            rate = self.scalar(rate_node, "decision_log.sample_rate")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
                raise self.error(rate_node, f"decision_log.sample_rate must be a number with 0 < rate <= 1, "
                                            f"got {rate!r}")
            return DecisionLogConfig(mode, float(rate))
        if "sample_rate" in fields:
            raise self.error(fields["sample_rate"][0], "decision_log.sample_rate is only used with mode: sampled")
        return None if mode == "off" else DecisionLogConfig(mode)

    def budgets(self, node: yaml.Node) -> Budgets | None:
        if _is_null(node):
            return None
        fields = self.mapping(node, "budgets", {"weights", "window_seconds", "per_key", "tenants"})
        weights = [1.0] * len(WEIGHT_KINDS)
        if "weights" in fields:
            for name, (_, value_node) in self.mapping(fields["weights"][1], "budgets.weights",
                                                      set(WEIGHT_KINDS)).items():
                value = self.scalar(value_node, f"budgets.weights.{name}")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WEIGHT:
                    raise self.error(value_node, f"budgets.weights.{name} must be a number from 0 to {MAX_WEIGHT}, "
                                                 f"got {value!r}")
                weights[WEIGHT_KINDS.index(name)] = float(value)
        window = DEFAULT_WINDOW_SECONDS
        if "window_seconds" in fields:
            window_node = fields["window_seconds"][1]
            window = self.typed(window_node, "budgets.window_seconds", int)
            if not MIN_WINDOW_SECONDS <= window <= DEFAULT_WINDOW_SECONDS:
                raise self.error(window_node, f"budgets.window_seconds must be between {MIN_WINDOW_SECONDS} and "
                                              f"{DEFAULT_WINDOW_SECONDS}, got {window}")
        per_key = self.budget(fields["per_key"][1], "budgets.per_key") if "per_key" in fields else None
        tenants: dict[str, Budget] = {}
        if "tenants" in fields and not _is_null(fields["tenants"][1]):
            entries = self.mapping(fields["tenants"][1], "budgets.tenants", None)
            if len(entries) > MAX_BUDGET_TENANTS:
                raise self.error(fields["tenants"][1], f"budgets.tenants has more than {MAX_BUDGET_TENANTS} entries")
            for name, (key_node, value_node) in entries.items():
                if not _TENANT.match(name):
                    raise self.error(key_node, "tenant must be 1-128 characters of letters, digits and _ . : @ / -")
                tenants[name] = self.budget(value_node, f"budgets.tenants.{name}")
        concurrent = any(b.concurrent_requests is not None for b in (per_key, *tenants.values()) if b is not None)
        return Budgets(tuple(weights), window, per_key, tenants, concurrent)  # type: ignore[arg-type]

    def budget(self, node: yaml.Node, where: str) -> Budget:
        fields = self.mapping(node, where, BUDGET_FIELDS)
        values: dict[str, Any] = {}
        for name in BUDGET_LIMITS:
            if name in fields and not _is_null(fields[name][1]):
                value = self.typed(fields[name][1], f"{where}.{name}", int)
                if not 1 <= value <= MAX_BUDGET_LIMIT:
                    raise self.error(fields[name][1], f"{where}.{name} must be between 1 and {MAX_BUDGET_LIMIT}, "
                                                      f"got {value}")
                values[name] = value
        if not values:
            raise self.error(node, f"{where} sets no limit ({', '.join(BUDGET_LIMITS)})")
        if "dry_run" in fields:
            values["dry_run"] = self.typed(fields["dry_run"][1], f"{where}.dry_run", bool)
        if "on_redis_error" in fields:
            mode_node = fields["on_redis_error"][1]
            mode = self.typed(mode_node, f"{where}.on_redis_error", str)
            if mode not in REDIS_ERROR_MODES:
                raise self.error(mode_node, f"{where}.on_redis_error must be open or closed, got {mode!r}")
            values["on_redis_error"] = mode
        return Budget(**values)


def _kind(node: yaml.Node) -> str:
    return {yaml.MappingNode: "mapping", yaml.SequenceNode: "list"}.get(type(node), "value")


def parse_policy(text: str | bytes, source: str = "<policy>") -> Policy:
    """Parse policy YAML text. Raises PolicyError (file:line: problem)."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(source, None, f"the policy file is larger than {MAX_POLICY_BYTES} bytes")
    loader = _Loader(source)
    try:
        root = yaml.compose(raw, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise PolicyError(source, mark.line + 1 if mark else None, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, None, f"invalid YAML: {exc}".replace("\n", " ")) from None
    if root is None:
        raise PolicyError(source, None, "the policy file is empty")
    top = loader.mapping(root, "the policy", TOP_FIELDS)
    if "version" not in top:
        raise loader.error(root, f"missing field 'version' (use version: {SCHEMA_VERSION})")
    version = loader.typed(top["version"][1], "version", int)
    if version != SCHEMA_VERSION:
        raise loader.error(top["version"][1], f"unsupported version {version} (this build reads {SCHEMA_VERSION})")

    default = replace(RoutePolicy(), **loader.route_settings(top, ""))
    overrides = loader.routes(top, "")
    allowlist = None
    if "allowlist" in top:
        allowlist = loader.digest_list(top["allowlist"][1], "allowlist", with_tenant=True)
    revoked = frozenset(loader.digest_list(top["revoked"][1], "revoked", with_tenant=False)) \
        if "revoked" in top else frozenset()
    dry_run = loader.dry_run(top["dry_run"][1]) if "dry_run" in top else None
    decision_log = loader.decision_log(top["decision_log"][1]) if "decision_log" in top else None
    budgets = loader.budgets(top["budgets"][1]) if "budgets" in top else None
    return with_defaults(Policy(version=version, default=default, route_overrides=overrides, allowlist=allowlist,
                                revoked=revoked, source=source, digest=hashlib.sha256(raw).hexdigest(),
                                dry_run=dry_run, decision_log=decision_log, budgets=budgets))


def with_defaults(policy: Policy, **changes: Any) -> Policy:
    """A copy of `policy` with new default settings; routes keep the fields they set themselves and
    inherit the rest from the new defaults."""
    default = replace(policy.default, **changes)
    routes = {name: replace(default, **over) for name, over in policy.route_overrides.items()}
    live = replace(policy, default=default, routes=routes, shadow=None)
    return live if policy.dry_run is None else replace(live, shadow=shadow_policy(live, policy.dry_run))


def shadow_policy(live: Policy, dry_run: DryRun) -> Policy:
    """`live` with the dry-run rules applied: what the policy would decide if they were enforced. A live route
    override still wins over a dry-run top-level field (as it wins over the live top level); dry_run.routes
    win over both."""
    default = replace(live.default, **dry_run.defaults)
    names = [*live.route_overrides, *(n for n in dry_run.route_overrides if n not in live.route_overrides)]
    overrides = {name: {**live.route_overrides.get(name, {}), **dry_run.route_overrides.get(name, {})}
                 for name in names}
    routes = {name: replace(default, **over) for name, over in overrides.items()}
    return replace(live, default=default, routes=routes, route_overrides=overrides,
                   allowlist=dry_run.allowlist if dry_run.has_allowlist else live.allowlist,
                   revoked=live.revoked | dry_run.revoked, dry_run=None, shadow=None, decision_log=None,
                   budgets=None)


def load_policy(path: str | Path) -> Policy:
    """Load and validate a policy file. Raises PolicyError naming file and line."""
    source = str(path)
    try:
        raw = read_bounded(path)
    except OSError as exc:
        raise PolicyError(source, None, f"cannot read policy file: {exc.strerror or exc}") from None
    return parse_policy(raw, source)


def read_bounded(path: str | Path) -> bytes:
    """The file's bytes, at most MAX_POLICY_BYTES + 1 of them (enough for parse_policy to refuse a larger one)."""
    with open(path, "rb") as fh:
        return fh.read(MAX_POLICY_BYTES + 1)
