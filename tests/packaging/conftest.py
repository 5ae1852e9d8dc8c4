"""Build the sdist and the wheel once per session with `python -m build` (isolated, as a release would) and
install the wheel, not editable, with the `stack` extra into a clean virtualenv: what a user gets from
`pip install 'keyrelay[stack]'`. The wall time of each step is printed in the terminal summary."""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
with open(REPO / "pyproject.toml", "rb") as _fh:
    PROJECT = tomllib.load(_fh)["project"]
# Each shipped data file and the one real copy in the source tree it must equal byte for byte.
SHIPPED = {
    "keyrelay_stack/data/envoy.yaml": "k8s/overlays/standalone/envoy.yaml",
    "keyrelay_stack/data/policy.yaml": "examples/policy.yaml",
}
STEP_TIMEOUT_S = 600
# pytest-timeout counts fixture set-up: the first test of a module pays for the build and the install.
SESSION_BUDGET_S = 3 * STEP_TIMEOUT_S
TIMINGS: dict[str, float] = {}


def run(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, **kw)
    TIMINGS[what] = time.monotonic() - start
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Installed:
    """A virtualenv holding only the wheel and its dependencies."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.root / "bin" / name

    @property
    def site_packages(self) -> Path:
        return next((self.root / "lib").glob("python3*/site-packages"))


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], "python -m build (sdist + wheel)")
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return Dist(sdists[0], wheels[0])


@pytest.fixture(scope="session")
def installed(dist: Dist, tmp_path_factory) -> Installed:
    venv = Installed(tmp_path_factory.mktemp("venv") / "keyrelay")
    # No pip inside the new environment: this session's pip installs into it (`--python`), which saves
    # bootstrapping a second pip. Byte-compiling at install time (pip's default) is the slowest part of the
    # install (LiteLLM alone is thousands of modules); without it, the first import writes the .pyc files.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv.root)], "python -m venv")
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(venv.python), "install",
         "--no-compile", "--quiet", f"{dist.wheel}[stack]"], "pip install keyrelay[stack] (wheel, pip cache)")
    return venv


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line("packaging steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))
