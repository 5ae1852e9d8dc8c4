"""Build the sdist and the wheel once per session with `python -m build` (isolated, as a release would) and
install the wheel, not editable, with the `stack` extra into a clean virtualenv: what a user gets from
`pip install 'keyrelay[stack]'`.

Both steps start in the background as soon as collection shows a test needs them, so they overlap with the rest
of the suite (which mostly waits on its processes); the fixtures wait for them. The wall time of each step, and
how long the tests waited, are printed in the terminal summary. The work directory is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.packaging.image import SUMMARY as IMAGE_SUMMARY

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


def run(argv: list[str], what: str, started: Callable[[subprocess.Popen], None] | None = None,
        **kw) -> subprocess.CompletedProcess:
    start = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          **kw) as popen:
        if started:
            started(popen)
        try:
            out, err = popen.communicate(timeout=STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            popen.kill()
            out, err = popen.communicate()
    TIMINGS[what] = time.monotonic() - start
    assert popen.returncode == 0, f"{what} failed ({popen.returncode}):\n{out[-3000:]}\n{err[-3000:]}"
    return subprocess.CompletedProcess(argv, popen.returncode, out, err)


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


def build(out: Path, started: Callable[[subprocess.Popen], None]) -> Dist:
    run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], "python -m build (sdist + wheel)", started)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return Dist(sdists[0], wheels[0])


def install(dist: Dist, root: Path, started: Callable[[subprocess.Popen], None]) -> Installed:
    venv = Installed(root)
    # No pip inside the new environment: this session's pip installs into it (`--python`), which saves
    # bootstrapping a second pip. Byte-compiling at install time (pip's default) is the slowest part of the
    # install (LiteLLM alone is thousands of modules); without it, the first import writes the .pyc files.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv.root)], "python -m venv", started)
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(venv.python), "install",
         "--no-compile", "--quiet", f"{dist.wheel}[stack]"], "pip install keyrelay[stack] (wheel, pip cache)", started)
    return venv


class Prepared:
    """The build and the install on a background thread; `result()` waits for them, `close()` stops a step still
    running (a session that ends early) and removes the work directory."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="keyrelay-packaging-"))
        self._current: subprocess.Popen | None = None
        self._outcome: tuple[Dist, Installed] | BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="keyrelay-packaging", daemon=True)
        self._thread.start()

    def _started(self, popen: subprocess.Popen) -> None:
        self._current = popen

    def _work(self) -> None:
        try:
            dist = build(self.workdir / "dist", self._started)
            self._outcome = (dist, install(dist, self.workdir / "venv", self._started))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting fixture
            self._outcome = exc

    def result(self) -> tuple[Dist, Installed]:
        start = time.monotonic()
        self._thread.join(2 * STEP_TIMEOUT_S + 60)
        TIMINGS["tests waited for them"] = TIMINGS.get("tests waited for them", 0.0) + time.monotonic() - start
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None, "the build and install did not finish in time"
        return self._outcome

    def close(self) -> None:
        try:
            if self._thread.is_alive() and self._current is not None and self._current.poll() is None:
                os.killpg(self._current.pid, signal.SIGKILL)  # the step and what it started (build back end, pip)
            self._thread.join(30)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


_PREPARED: list[Prepared] = []


def _prepared() -> Prepared:
    if not _PREPARED:
        _PREPARED.append(Prepared())
    return _PREPARED[0]


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    if any({"dist", "installed"} & set(getattr(item, "fixturenames", ())) for item in session.items):
        _prepared()


def pytest_sessionfinish(session):
    while _PREPARED:
        _PREPARED.pop().close()


@pytest.fixture(scope="session")
def dist() -> Dist:
    return _prepared().result()[0]


@pytest.fixture(scope="session")
def installed() -> Installed:
    return _prepared().result()[1]


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line("packaging steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))
    if IMAGE_SUMMARY:  # `make image-check` (tests/packaging/image_check.py)
        terminalreporter.section("image check")
        for line in IMAGE_SUMMARY:
            terminalreporter.write_line(line)
