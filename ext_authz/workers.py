"""`--workers N`: N spawned processes, each running its own gRPC server on the same port (SO_REUSEPORT; the
kernel spreads connections) and its own policy watcher. The parent serves the HTTP port: /metrics aggregates the
workers' prometheus_client multiprocess files, /readyz is ready when every worker is. A worker that dies is
restarted; SIGTERM/SIGINT drain every worker and stop."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

from .policy import Policy, PolicyError
from .settings import Config, SettingsError
from .startup import build_worker, initial_policy, ready_line, start_http

log = logging.getLogger("ext_authz.workers")
READY_TIMEOUT = 60.0


def _worker_main(cfg: Config, port: int, index: int, events) -> None:
    from . import logs

    logs.setup(cfg.log_level)
    try:
        policy = initial_policy(cfg)
    except PolicyError as exc:
        events.put(("failed", index, os.getpid(), str(exc)))
        raise SystemExit(2) from None
    def serving_changed(serving: bool) -> None:  # a handler switch: the parent's /readyz follows
        events.put(("ready" if serving else "not_ready", index, os.getpid(), ""))

    worker, _ = build_worker(cfg, policy, port, reuse_port=True, on_serving_change=serving_changed)
    try:
        worker.start()
    except (OSError, RuntimeError) as exc:
        events.put(("failed", index, os.getpid(), f"cannot bind gRPC address {cfg.grpc_host}:{port}: {exc}"))
        raise SystemExit(2) from None
    events.put(("ready", index, os.getpid(), ""))
    log.info("worker ready", extra={"worker": index, "grpc": f"{cfg.grpc_host}:{port}",
                                    "check_handler": worker.check_handler})
    worker.run_until_stopped()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_workers(cfg: Config, policy: Policy) -> int:
    from prometheus_client import CollectorRegistry, multiprocess

    from .httpd import make_app

    own_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    try:
        mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="keyrelay-ext-authz-metrics-")
        os.makedirs(mp_dir, exist_ok=True)
        for name in os.listdir(mp_dir):  # stale files from an earlier run would be added to the totals
            if name.endswith(".db"):
                os.unlink(os.path.join(mp_dir, name))
    except OSError as exc:
        raise SettingsError(f"--workers > 1 needs a writable metrics directory ({exc.strerror}); set "
                            "PROMETHEUS_MULTIPROC_DIR to one (e.g. an emptyDir volume)") from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir  # inherited by the spawned workers

    port = cfg.grpc_port or _free_port(cfg.grpc_host)
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    procs: dict[int, mp.Process] = {}
    ready: dict[int, int] = {}   # index -> pid
    failures: list[str] = []
    stopping = threading.Event()
    lock = threading.Lock()

    def spawn(index: int) -> None:
        proc = ctx.Process(target=_worker_main, args=(cfg, port, index, events), name=f"ext_authz-worker-{index}",
                           daemon=False)
        proc.start()
        procs[index] = proc

    def read_events() -> None:
        while True:
            try:
                kind, index, pid, detail = events.get()
            except (EOFError, OSError, ValueError):
                return
            if kind == "stop":
                return
            with lock:
                if kind == "ready":
                    ready[index] = pid
                elif kind == "not_ready":  # switching Check handlers; "ready" follows
                    ready.pop(index, None)
                    log.warning("worker not ready", extra={"worker": index, "worker_pid": pid})
                else:
                    failures.append(detail)

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=mp_dir)

    def is_ready():
        with lock:
            alive = sum(1 for i, p in procs.items() if p.is_alive() and ready.get(i) == p.pid)
        return (alive == cfg.workers and not stopping.is_set(),
                # The live policy digest is per worker (each reloads on its own): see keyrelay_ext_authz_policy_info.
                {"workers": cfg.workers, "workers_ready": alive, "policy": policy.source})

    def is_healthy():
        alive = sum(1 for p in procs.values() if p.is_alive())
        return alive > 0, {"workers_alive": alive}

    http = start_http(cfg, make_app(registry, is_ready, is_healthy))

    def on_signal(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reader = threading.Thread(target=read_events, name="ext_authz-worker-events", daemon=True)
    reader.start()
    code = 0
    try:
        for index in range(cfg.workers):
            spawn(index)
        deadline = time.monotonic() + READY_TIMEOUT
        while not stopping.is_set():
            with lock:
                if failures:
                    raise SettingsError(failures[0])
                if len(ready) == cfg.workers:
                    break
            dead = [i for i, p in procs.items() if p.exitcode is not None]
            if dead:
                raise SettingsError(f"worker {dead[0]} exited with code {procs[dead[0]].exitcode} before it was ready")
            if time.monotonic() > deadline:
                raise SettingsError(f"workers not ready after {READY_TIMEOUT:.0f}s")
            time.sleep(0.05)
        if not stopping.is_set():
            log.info("serving", extra={"grpc": f"{cfg.grpc_host}:{port}", "http": f"{cfg.http_host}:{http.port}",
                                       "policy": policy.source, "digest": policy.short_digest,
                                       "workers": cfg.workers, "worker_pids": sorted(ready.values())})
            print(ready_line(cfg.grpc_host, port, cfg.http_host, http.port), flush=True)
        # Supervise: restart a worker that dies (its metrics files are marked dead first).
        while not stopping.wait(0.5):
            for index, proc in list(procs.items()):
                if proc.exitcode is not None and not stopping.is_set():
                    log.error("worker died; restarting", extra={"worker": index, "exit_code": proc.exitcode})
                    multiprocess.mark_process_dead(proc.pid, mp_dir)
                    with lock:
                        ready.pop(index, None)
                    spawn(index)
    except SettingsError:
        code = 2
        raise
    finally:
        stopping.set()
        for proc in procs.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + cfg.drain_seconds + 5
        for proc in procs.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(2)
            if proc.exitcode not in (0, None) and code == 0:
                log.warning("worker exited with an error", extra={"exit_code": proc.exitcode})
        try:
            events.put(("stop", -1, 0, ""))
        except (OSError, ValueError):
            pass
        http.stop()
        if own_dir:
            shutil.rmtree(mp_dir, ignore_errors=True)
        log.info("stopped")
    return code
