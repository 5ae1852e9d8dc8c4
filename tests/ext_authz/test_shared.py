"""What the processes share is defined once (keyrelay_common), and ext_authz's start-up modules import each other
without a circle."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest

import keyrelay_common.identity as identity
from ext_authz.settings import SettingsError, env_overrides

REPO = Path(__file__).resolve().parents[2]
SHARED_LITERALS = {identity.AUTHZ_PREFIX, identity.KEY_ID_HEADER, identity.TENANT_HEADER, identity.CREDENTIAL_HEADER}


def _relative_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return found


def test_ext_authz_modules_import_without_a_circle() -> None:
    graph = {p.stem: _relative_imports(p) for p in (REPO / "ext_authz").glob("*.py")}
    assert "cli" not in graph["workers"] and "cli" not in graph["startup"]
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, f"import circle: {' -> '.join(stack + (name,))}"
        if name in done or name not in graph:
            return
        for dep in graph[name]:
            visit(dep, stack + (name,))
        done.add(name)

    for module in graph:
        visit(module, ())


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """String literals that are not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


@pytest.mark.parametrize("package", ["ext_authz", "translator", "keyrelay_stack", "keyrelay_tracing"])
def test_identity_header_names_are_defined_once(package: str) -> None:
    repeats = [f"{p.relative_to(REPO)}:{line}: {value!r}" for p in (REPO / package).rglob("*.py")
               if "_gen" not in p.parts for line, value in _string_constants(p) if value in SHARED_LITERALS]
    assert repeats == []


def test_one_fingerprint_everywhere() -> None:
    from ext_authz import decide
    from keyrelay_stack import demo_upstream
    from translator import credentials

    assert credentials.fingerprint is identity.key_id and demo_upstream.fingerprint is identity.key_id
    assert decide.key_digest is identity.key_digest
    key = "sk-shared-0123456789"
    assert identity.key_id(key) == hashlib.sha256(key.encode()).hexdigest()[:16] == identity.key_digest(key)[:16]


@pytest.mark.parametrize("word,value", [
    ("true", True), ("TRUE", True), (" yes ", True), ("1", True), ("on", True),
    ("false", False), ("False", False), ("no", False), ("0", False), ("off", False),
    ("maybe", None), ("2", None), ("truee", None),
])
def test_one_bool_parser_for_ext_authz_and_the_translator(word: str, value: bool | None) -> None:
    from translator.settings import ConfigError, load_settings

    if value is None:
        with pytest.raises(SettingsError, match="PASSTHROUGH_API_KEY must be true or false"):
            env_overrides({"PASSTHROUGH_API_KEY": word})
        with pytest.raises(ConfigError, match="must be true or false"):
            load_settings([], {"TRANSLATOR_ACCEPT_X_API_KEY": word})
    else:
        assert env_overrides({"PASSTHROUGH_API_KEY": word}).passthrough is value
        assert load_settings([], {"TRANSLATOR_ACCEPT_X_API_KEY": word}).accept_x_api_key is value
