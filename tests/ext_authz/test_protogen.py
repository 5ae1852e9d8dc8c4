"""The committed generated code equals a fresh generation from protos/ (no drift, no hand edits)."""

from __future__ import annotations

from pathlib import Path

from ext_authz import protogen


def test_regenerating_gives_identical_output(tmp_path: Path) -> None:
    fresh = tmp_path / "_gen"
    protogen.generate(fresh)
    committed = protogen.tree_digest(protogen.GEN_DIR)
    regenerated = protogen.tree_digest(fresh)
    assert sorted(regenerated) == sorted(committed)
    for name, content in regenerated.items():
        assert content == committed[name], f"{name} differs: run `python -m ext_authz.protogen`"


def test_generated_imports_stay_inside_the_package() -> None:
    for path in protogen.GEN_DIR.rglob("*.py"):
        text = path.read_text()
        assert "\nfrom envoy." not in text and "\nimport envoy" not in text, path
        assert "\nfrom google.rpc" not in text, path
