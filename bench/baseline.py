"""`--baseline REV` / `--baseline-dir DIR`: a second ext_authz and translator from another source tree, measured
interleaved with the current tree's in the same run (docs/bench.md, "Before/after in one run").

The baseline tree is a detached `git worktree` of REV under a temporary directory (removed afterwards), or a
directory given as is. Its services run with this interpreter and this virtualenv's installed packages, with
PYTHONPATH and the working directory set to the baseline tree so that its `ext_authz` and `translator` packages
shadow the editable install of the current tree; a self-check before measuring proves which files were
imported. Limits: the baseline's third-party dependencies must be installed in this virtualenv (a subset of
the current ones is fine; a dependency the current tree dropped must still be installed), and compiled or
generated files must be committed in REV (they are: ext_authz/_gen).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench.procs import REPO, base_env

SERVICES = {"ext_authz": "keyrelay-ext-authz", "translator": "keyrelay-translator"}


@dataclass(frozen=True)
class Tree:
    """A source tree whose services are started from source (not from the installed console scripts)."""

    path: Path
    label: str  # what the table prints: the revision and its commit

    def env(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, "PYTHONPATH": str(self.path)}

    def argv(self, script: str) -> list[str]:
        """`python -c` running the console script's entry point as the tree's pyproject.toml declares it."""
        module, _, func = entry_points(self.path)[script].partition(":")
        code = f"import sys; sys.argv[0] = {script!r}; from {module} import {func} as m; sys.exit(m())"
        return [sys.executable, "-c", code]


def entry_points(tree: Path) -> dict[str, str]:
    with open(tree / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["scripts"]


def self_check(tree: Tree) -> dict[str, str]:
    """Import the baseline's packages the way its services will and prove they come from the baseline tree
    (not from the editable install of the current one)."""
    code = "import ext_authz, translator; print(ext_authz.__file__); print(translator.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tree.path,
                         env=tree.env(base_env()), timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"baseline {tree.label}: its packages do not import with this virtualenv "
                           f"(a dependency it needs is not installed?):\n{out.stderr[-2000:]}")
    files = out.stdout.split()
    for f in files:
        if not Path(f).resolve().is_relative_to(tree.path.resolve()):
            raise RuntimeError(f"baseline {tree.label}: imported {f}, not from {tree.path}")
    return dict(zip(("ext_authz", "translator"), files))


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Tree]:
    """A detached worktree of `rev` in a temporary directory, removed (and pruned) afterwards."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="keyrelay-baseline-") as tmp:
        path = Path(tmp) / "tree"
        _git("worktree", "add", "--detach", "--quiet", str(path), commit)
        try:
            yield Tree(path, f"{rev} ({commit[:12]})")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                           capture_output=True)
            subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)


@contextlib.contextmanager
def resolve(rev: str | None, directory: Path | None) -> Iterator[Tree | None]:
    if directory is not None:
        yield Tree(directory.resolve(), str(directory))
    elif rev is not None:
        with worktree(rev) as tree:
            yield tree
    else:
        yield None
