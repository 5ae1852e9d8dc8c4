"""What keyrelay-stack, the bench and the tests share to start the project's processes: a free loopback port,
the path of an installed console script, and a child environment without settings that would change what the
child does."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import sys
from pathlib import Path
from typing import Mapping

# Provider settings and keys: only the translator gets them.
PROVIDER_ENV_PREFIXES = ("OPENAI_", "ANTHROPIC_", "GEMINI_", "VERTEX_", "USE_VERTEX_AUTH", "PREFERRED_PROVIDER",
                         "BIG_MODEL", "SMALL_MODEL")
# The services' own settings: a test or a benchmark passes what it means explicitly.
SERVICE_ENV_PREFIXES = ("PASSTHROUGH_", "REQUIRE_PASSTHROUGH", "EXT_AUTHZ_", "TRANSLATOR_")


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit and return (soft, hard) as they are after.

    Every open stream costs a process one socket (the translator two: client and upstream), and container
    runtimes commonly start processes with a soft limit of 1024 under a much higher hard one, which would cap a
    translator at a few hundred concurrent streams (EMFILE on accept). Children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, hard  # e.g. a hard limit of infinity that the kernel refuses as a soft one
        soft = hard
    return soft, hard


# Ports this process already handed out: the kernel may offer a closed port again at once, and callers pick
# several ports before any of them is bound.
_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port that is free now and that this process has not handed out before."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port after 100 tries")


def console_script(name: str, *, hint: str) -> str:
    """Path of a console script of this virtualenv (beside its python), else from PATH."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed ({hint})")
    return found


def child_env(env: Mapping[str, str] | None = None, *, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """`env` (default: this process's) without the variables starting with `drop`, with LiteLLM's offline
    price map and unbuffered Python output, plus `extra`."""
    source = os.environ if env is None else env
    out = {k: v for k, v in source.items() if not k.startswith(drop)} if drop else dict(source)
    out["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    out["PYTHONUNBUFFERED"] = "1"
    out.update(extra)
    return out
