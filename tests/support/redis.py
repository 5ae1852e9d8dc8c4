"""A real redis-server for the budget tests, on a free loopback port (installed from Debian with apt-get when
running as root and missing, like the Makefile's debian_tool; otherwise the tests that need it are skipped)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from keyrelay_stack.processes import free_port
from keyrelay_stack.redis_server import DEBIAN_PACKAGE, find_redis_server, ping, redis_argv, redis_url


def ensure_redis_server() -> str:
    binary = find_redis_server()
    if binary is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for cmd in (["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE], ["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            binary = find_redis_server()
            if binary is not None:
                break
    if binary is None:
        pytest.skip("redis-server is missing (sudo apt-get install -y redis-server)")
    return binary


class RedisServer:
    """One redis-server process; `kill()` simulates an outage, `start()` brings it back on the same port."""

    def __init__(self, port: int | None = None, password: str | None = None) -> None:
        self.binary = ensure_redis_server()
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        url = redis_url(self.port)
        return url.replace("redis://", f"redis://:{self.password}@") if self.password else url

    def start(self) -> "RedisServer":
        extra = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(redis_argv(self.binary, self.port) + extra, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2)
