"""Every service raises its soft open-files limit to the hard one at start-up: one socket per open stream, and
container runtimes often start processes with a soft limit of 1024 (keyrelay_stack/processes.py)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import base_env, free_port, script

LOW = 256


def _low_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW, hard))


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


SERVICES = [
    ("keyrelay-ext-authz", lambda: ["--grpc-addr", f"127.0.0.1:{free_port()}",
                                    "--http-addr", f"127.0.0.1:{free_port()}"], {}),
    ("keyrelay-translator", lambda: ["--host", "127.0.0.1", "--port", str(free_port())],
     {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-test-static-key-000000"}),
]


@pytest.mark.skipif(resource.getrlimit(resource.RLIMIT_NOFILE)[1] <= LOW, reason="hard limit too low to test")
@pytest.mark.parametrize("name,args,env", SERVICES, ids=[s[0] for s in SERVICES])
def test_service_raises_soft_open_files_limit_to_hard(name: str, args, env: dict[str, str]) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    proc = subprocess.Popen([script(name), *args()], env=base_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_low_soft_limit,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ready:"):
                break
        else:
            pytest.fail(f"{name} exited with {proc.wait()} before its ready line")
        assert _limits(proc.pid) == (hard, hard)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def test_helper_leaves_an_already_raised_limit_alone() -> None:
    code = ("import resource; from keyrelay_stack.processes import raise_open_files_limit as r; "
            "before = resource.getrlimit(resource.RLIMIT_NOFILE); print(r() == before == "
            "resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, env=base_env(), check=True)
    assert out.stdout.strip() == "True"
