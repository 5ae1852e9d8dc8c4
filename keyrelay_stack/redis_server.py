"""A throwaway Redis for the budget counters (`keyrelay-stack --with-redis`, the tests): Debian's `redis-server`
on a loopback port, nothing persisted, stopped with its parent."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

DEBIAN_PACKAGE = "redis-server"


def find_redis_server() -> str | None:
    """The redis-server binary (PATH, then Debian's /usr/bin), or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    debian = Path("/usr/bin/redis-server")
    return str(debian) if debian.exists() else None


def redis_argv(binary: str, port: int) -> list[str]:
    """Loopback only, in memory only (no RDB snapshots, no AOF), quiet."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "yes", "--loglevel", "warning", "--daemonize", "no"]


def redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def ping(port: int, timeout: float = 1.0) -> bool:
    """True when a Redis on 127.0.0.1:`port` answers PING (PONG, or NOAUTH from one that wants a password)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False
