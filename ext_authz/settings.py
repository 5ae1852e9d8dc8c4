"""Process settings: flags, environment variables, and the seed's PASSTHROUGH_API_KEY / REQUIRE_PASSTHROUGH_KEY
mapped onto the policy. Pure functions of (argv, environ); the CLI turns SettingsError into a one-line exit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .policy import Policy, PolicyError, with_defaults


class SettingsError(ValueError):
    """Bad configuration; str() is the one-line reason."""


@dataclass(frozen=True, slots=True)
class EnvOverrides:
    """PASSTHROUGH_API_KEY / REQUIRE_PASSTHROUGH_KEY as found in the environment (None: not set)."""

    passthrough: bool | None = None
    require_key: bool | None = None


def parse_bool(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text == "true":
        return True
    if text == "false":
        return False
    raise SettingsError(f"{name} must be true or false, got {value!r}")


def env_overrides(environ: Mapping[str, str]) -> EnvOverrides:
    values = {}
    for name, attr in (("PASSTHROUGH_API_KEY", "passthrough"), ("REQUIRE_PASSTHROUGH_KEY", "require_key")):
        raw = environ.get(name)
        # An empty value counts as unset (a common way to blank a variable in manifests).
        if raw is not None and raw.strip():
            values[attr] = parse_bool(name, raw)
    return EnvOverrides(**values)


def apply_overrides(policy: Policy, overrides: EnvOverrides) -> Policy:
    """Environment variables override the file's top-level defaults; per-route fields the file pins stay.

    REQUIRE_PASSTHROUGH_KEY=true means "require the key that is passed through", so it needs passthrough on."""
    changes = {}
    if overrides.passthrough is not None:
        changes["passthrough"] = overrides.passthrough
    if overrides.require_key is not None:
        changes["require_key"] = overrides.require_key
    result = with_defaults(policy, **changes) if changes else policy
    if overrides.require_key and not result.default.passthrough:
        origin = "PASSTHROUGH_API_KEY=false" if overrides.passthrough is False else f"passthrough: false in {policy.source}"
        raise PolicyError(policy.source if overrides.passthrough is not False else "environment", None,
                          f"REQUIRE_PASSTHROUGH_KEY=true needs passthrough on, but {origin}")
    return result


def join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_addr(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name} must be host:port, got {value!r}")
    return host.strip("[]"), int(port)
