"""``bridge serve --workers N``: N bridge processes sharing one listening socket, under a supervisor.

One Python process uses one core; a box with more cores carries more calls with one process per
core. The supervisor binds the port once and hands the socket to every worker (the kernel spreads
new connections among the processes that accept on it), restarts a worker that dies, and on
SIGTERM/SIGINT lets every worker drain its calls (each as ``bridge serve`` does alone) before it
exits. Nothing else is shared between workers but Redis: live fan-out already goes through it, so a
dashboard served by one worker follows a call carried by another. Admission limits
(``BRIDGE_MAX_CALLS``) apply per worker.

Metrics: a scrape may reach any worker, so the supervisor points prometheus_client's multiprocess
mode at a directory of its own and every worker answers for all of them.

The embedded recognizer (no ``BRIDGE_RECOGNIZER_URL``) is not loaded once per worker: the supervisor
runs one ``bridge recognizer`` process and points the workers at it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.context import SpawnProcess
from types import FrameType

import httpx

from bridge import logs
from bridge.settings import Settings

log = logging.getLogger("bridge")

#: A worker that dies this many times within a minute is not restarted again (a crash loop).
MAX_RESTARTS_PER_MINUTE = 5


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(host: str, port: int, drain_seconds: float, sock: socket.socket) -> None:
    """One worker (a spawned process): ``bridge serve`` on the supervisor's socket."""
    from bridge.server import StartupError, serve

    settings = dataclasses.replace(Settings.from_env(), host=host, port=port)
    logs.setup(settings.log_level, as_json=settings.log_json)
    try:
        serve(settings, drain_seconds=drain_seconds, sock=sock)
    except StartupError as exc:
        print(f"bridge worker: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_recognizer(timeout: float = 120.0) -> tuple[subprocess.Popen[bytes], str]:
    """One embedded recognizer for every worker; (its process, its ws:// URL) once it is ready."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "recognizer", "--host", "127.0.0.1",
                             "--port", str(port)])  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the embedded recognizer exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, f"ws://127.0.0.1:{port}"
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the embedded recognizer did not become ready")


class Supervisor:
    """Starts, restarts and stops the workers; see the module docstring."""

    def __init__(self, settings: Settings, *, workers: int, drain_seconds: float) -> None:
        self.settings = settings
        self.count = workers
        self.drain_seconds = drain_seconds
        self.stopping = False
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, SpawnProcess] = {}
        self._deaths: list[float] = []
        self._sock: socket.socket | None = None

    def run(self) -> int:
        settings = self.settings
        metrics_dir = tempfile.mkdtemp(prefix="bridge-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any worker imports prometheus_client
        recognizer: subprocess.Popen[bytes] | None = None
        try:
            embedded = [name for name, kind, url in (
                ("BRIDGE_RECOGNIZER_URL", settings.recognizer, settings.recognizer_url),
                ("BRIDGE_FALLBACK_RECOGNIZER_URL", settings.fallback_recognizer, settings.fallback_recognizer_url),
            ) if kind == "embedded" and not url]  # fmt: skip
            if embedded:
                recognizer, url = _start_recognizer()
                for name in embedded:
                    os.environ[name] = url
                log.info("embedded recognizer for every worker at %s (pid %d)", url, recognizer.pid)
            self._sock = _bind(settings.host, settings.port)
            port = self._sock.getsockname()[1]
            for i in range(self.count):
                self._start(i, port)
            log.info("bridge serving on %s:%d with %d workers", settings.host, port, self.count)
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            return self._supervise(port)
        finally:
            if self._sock is not None:
                self._sock.close()
            if recognizer is not None:
                recognizer.terminate()
                try:
                    recognizer.wait(15)
                except subprocess.TimeoutExpired:
                    recognizer.kill()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _start(self, index: int, port: int) -> None:
        proc = self._ctx.Process(
            target=_worker, args=(self.settings.host, port, self.drain_seconds, self._sock),
            name=f"bridge-worker-{index}", daemon=False,
        )  # fmt: skip
        proc.start()
        self._procs[index] = proc
        log.info("worker %d started (pid %s)", index, proc.pid)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("signal %d: draining %d workers", sig, len(self._procs))
        for proc in self._procs.values():
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    def _supervise(self, port: int) -> int:
        from prometheus_client import multiprocess

        failed = False
        deadline: float | None = None
        while self._procs:
            time.sleep(0.2)
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.drain_seconds + 15
            for index, proc in list(self._procs.items()):
                if proc.is_alive():
                    if deadline is not None and time.monotonic() > deadline:
                        log.error("worker %d (pid %s) did not drain in time: killed", index, proc.pid)
                        proc.kill()
                    continue
                del self._procs[index]
                if proc.pid is not None:
                    multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
                if self.stopping:
                    # -SIGTERM: a worker still starting (no calls yet) ended by the signal itself.
                    failed |= proc.exitcode not in (0, -signal.SIGTERM)
                    continue
                now = time.monotonic()
                self._deaths = [t for t in self._deaths if now - t < 60] + [now]
                if proc.exitcode == 2 or len(self._deaths) > MAX_RESTARTS_PER_MINUTE:
                    log.error("worker %d exited with %s: not restarting it; stopping", index, proc.exitcode)
                    self._on_signal(signal.SIGTERM, None)
                    failed = True
                    continue
                log.error("worker %d (pid %s) died with %s: restarting it", index, proc.pid, proc.exitcode)
                self._start(index, port)
        return 1 if failed else 0


def run(settings: Settings, *, workers: int, drain_seconds: float) -> int:
    """``bridge serve --workers N`` (N > 1); returns the exit code."""
    from bridge.server import preflight

    preflight(settings)
    return Supervisor(settings, workers=workers, drain_seconds=drain_seconds).run()


__all__ = ["MAX_RESTARTS_PER_MINUTE", "Supervisor", "run"]
