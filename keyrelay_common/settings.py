"""Reading settings the same way in every keyrelay process."""

from __future__ import annotations

TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


def parse_bool(name: str, value: str, error: type[Exception] = ValueError) -> bool:
    """A true/false setting (case and surrounding spaces ignored). Anything else raises `error` with a one-line
    reason naming the setting. Callers decide what an empty value means before calling (unset, or false)."""
    text = value.strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise error(f"{name} must be true or false, got {value!r}")
