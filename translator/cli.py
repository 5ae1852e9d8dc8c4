"""`keyrelay-translator`: run the translator under uvicorn.

Prints `ready: translator on http://<host:port>` once the app answers /readyz on its socket (so the line is
only printed when the server is really serving), exits non-zero with one line on bad configuration, stops
cleanly (exit 0) on SIGTERM and SIGINT.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Iterator, Sequence

import uvicorn

from translator import logs
from translator.serving import uvicorn_options
from translator.settings import ConfigError, load_settings

log = logging.getLogger("keyrelay.translator")


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising the captured signal after the graceful shutdown (which would make
    the process die by the signal instead of exiting 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _probe_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _announce_when_ready(host: str, port: int, stop: threading.Event, timeout: float = 120.0) -> None:
    probe = _probe_host(host)
    shown = f"[{host}]" if ":" in host else host
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(probe, port, timeout=2)
            conn.request("GET", "/readyz")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                print(f"ready: translator on http://{shown}:{port}", flush=True)
                return
        except OSError:
            pass
        stop.wait(0.05)


def raise_fd_limit(max_connections: int) -> int:
    """Raise the soft limit of open files towards the hard limit so that a worker can hold `max_connections`
    upstream connections plus as many client connections (a container's soft limit may be 1024, which would cap
    a worker at a few hundred concurrent streams whatever the pool allows). Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    return soft


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
        from translator.app import create_app, tune_gc  # validates the routing file and its caps

        import keyrelay_tracing

        # One process serves (workers=1): its tracing comes from OTEL_* here; workers set up their own.
        tracing = (keyrelay_tracing.from_env("keyrelay-translator", os.environ) if settings.workers == 1
                   else keyrelay_tracing.DISABLED)
        app = create_app(settings, tracing)
    except ConfigError as exc:
        print(f"keyrelay-translator: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    logs.configure(settings.log_level)
    raise_fd_limit(settings.max_connections)  # worker processes inherit it
    common = uvicorn_options(settings.shutdown_grace_s)
    stop = threading.Event()
    cleanup: list[str] = []
    try:
        if settings.workers == 1:
            sock = _bind(settings.host, settings.port)
            port = sock.getsockname()[1]
            server = _Server(uvicorn.Config(app, **common))
            tune_gc()
            threading.Thread(target=_announce_when_ready, args=(settings.host, port, stop), daemon=True).start()
            server.run(sockets=[sock])
        else:
            port = settings.port
            if port == 0:
                probe = _bind(settings.host, 0)
                port = probe.getsockname()[1]
                probe.close()
            else:
                _bind(settings.host, port).close()  # fail with one line when the port is taken
            os.environ.update(settings.to_env())
            os.environ["KEYRELAY_TRANSLATOR__port"] = str(port)
            if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                # Workers aggregate their metrics through files in a private directory (removed at exit).
                metrics_dir = tempfile.mkdtemp(prefix="keyrelay-translator-metrics-")
                cleanup.append(metrics_dir)
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            threading.Thread(target=_announce_when_ready, args=(settings.host, port, stop), daemon=True).start()
            uvicorn.run("translator.app:app_from_env", factory=True, host=settings.host, port=port,
                        workers=settings.workers, **common)
    except ConfigError as exc:
        print(f"keyrelay-translator: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
