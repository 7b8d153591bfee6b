"""The bridge's own commands as real subprocesses on free 127.0.0.1 ports: ``bridge serve``, ``bridge worker``,
``bridge recognizer``.

A child imports the bridge this test run imports (``PYTHONPATH`` is inherited); its output goes to a
log file in its directory, shown by :meth:`ServerProcess.log` when a test needs it. Every process is
killed by :meth:`ServerProcess.stop` (call it in a ``finally``) if it still runs; ``async with`` does
that too, after a SIGTERM whose exit code it keeps in :attr:`ServerProcess.exit_code`.
:func:`run_serve` runs a ``bridge serve`` that must refuse to start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.nginx import free_port


class ServerProcess:
    """``python -m bridge.cli ARGS…``; ready when ``GET ready_path`` on ``port`` answers 200."""

    def __init__(
        self,
        directory: Path,
        args: list[str],
        env: dict[str, str],
        *,
        port: int,
        ready_path: str,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self.args = args
        self.port = port
        self.ready_path = ready_path
        self.env = {**os.environ, **env}
        #: Runs in the child before ``exec`` (e.g. to set an RLIMIT).
        self.preexec = preexec
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.terminate()
            self.exit_code = await self.wait()
        finally:
            self.stop()

    async def start(self, timeout: float = 90.0) -> ServerProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", *self.args],
            env=self.env, stdout=(self.directory / "process.log").open("wb"), stderr=subprocess.STDOUT,
            preexec_fn=self.preexec,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout), httpx.AsyncClient(base_url=self.url, timeout=2) as client:
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"{self.args[0]} exited with {self.proc.returncode}:\n{self.log()}")
                    try:
                        if (await client.get(self.ready_path)).status_code == 200:
                            return self
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def terminate(self) -> None:
        """SIGTERM: a bridge drains its calls, a worker finishes or releases its job, then they exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout)

    def stop(self) -> None:
        """Kill it if it still runs (always called, also when a test failed)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(10)

    async def metrics(self, path: str = "/metrics") -> str:
        """The process's own metrics page (for a bridge: directly, not through nginx, which refuses it)."""
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{self.url}{path}")
            response.raise_for_status()
            return response.text

    def log(self) -> str:
        path = self.directory / "process.log"
        return path.read_text(errors="replace") if path.exists() else ""


class BridgeProcess(ServerProcess):
    """``bridge serve`` with its recordings in ``directory``; started once ``ready_path`` answers 200
    (``/healthz`` for a bridge that is meant to start unready)."""

    def __init__(
        self,
        directory: Path,
        env: dict[str, str],
        *,
        drain_seconds: float = 20.0,
        host: str = "127.0.0.1",
        ready_path: str = "/readyz",
        preexec: Callable[[], None] | None = None,
    ) -> None:
        port = free_port()
        args = ["serve", "--host", host, "--port", str(port), "--drain-seconds", str(drain_seconds)]
        env = {"BRIDGE_RECORDING_DIR": str(directory / "recordings"), **env}
        super().__init__(directory, args, env, port=port, ready_path=ready_path, preexec=preexec)

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of its ``/metrics``."""
        return metric(await self.metrics(), name, **labels)


#: The Twilio auth token of the bridges :func:`bridge_env` configures.
TWILIO_TOKEN = "bridge-process-token"


def bridge_env(redis_url: str, prefix: str, recognizer_url: str, **extra: str) -> dict[str, str]:
    """A bridge on the test Redis (under ``prefix``), signatures on, the scripted Deepgram at ``recognizer_url``."""
    return {
        "REDIS_URL": redis_url,
        "BRIDGE_REDIS_PREFIX": prefix,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "BRIDGE_RECOGNIZER": "deepgram",
        "BRIDGE_RECOGNIZER_URL": recognizer_url,
        "BRIDGE_RECOGNIZER_API_KEY": "scripted",
        "BRIDGE_LOG_LEVEL": "info",
        **extra,
    }


def run_serve(env: Mapping[str, str], timeout: float = 30.0) -> tuple[int, str]:
    """Run a ``bridge serve`` that is expected to exit by itself; (exit code, its output)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "serve", "--port", str(free_port())],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def worker_process(directory: Path, env: dict[str, str], *extra: str) -> ServerProcess:
    """``bridge worker`` serving its metrics on a free port (ready once they answer)."""
    port = free_port()
    return ServerProcess(directory, ["worker", "--metrics-port", str(port), *extra], env, port=port,
                         ready_path="/metrics")  # fmt: skip


def recognizer_process(directory: Path, env: dict[str, str], *extra: str) -> ServerProcess:
    """``bridge recognizer`` (the embedded Whisper recognizer) on a free port."""
    port = free_port()
    return ServerProcess(directory, ["recognizer", "--host", "127.0.0.1", "--port", str(port), *extra], env,
                         port=port, ready_path="/readyz")  # fmt: skip


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` in Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


__all__ = [
    "TWILIO_TOKEN",
    "BridgeProcess",
    "ServerProcess",
    "bridge_env",
    "metric",
    "recognizer_process",
    "run_serve",
    "worker_process",
]
