"""The bridge's own commands as real subprocesses on free 127.0.0.1 ports: ``bridge serve``, ``bridge worker``,
``bridge recognizer``.

A child imports the bridge this test run imports (``PYTHONPATH`` is inherited); its output goes to a
log file in its directory, shown by :meth:`ServerProcess.log` when a test needs it. Every process is
killed by :meth:`ServerProcess.stop` (call it in a ``finally``) if it still runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.nginx import free_port


class ServerProcess:
    """``python -m bridge.cli ARGS…``; ready when ``GET ready_path`` on ``port`` answers 200."""

    def __init__(self, directory: Path, args: list[str], env: dict[str, str], *, port: int, ready_path: str) -> None:
        self.directory = directory
        self.args = args
        self.port = port
        self.ready_path = ready_path
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 90.0) -> ServerProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", *self.args],
            env=self.env, stdout=(self.directory / "process.log").open("wb"), stderr=subprocess.STDOUT,
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
    """``bridge serve`` with its recordings in ``directory``."""

    def __init__(self, directory: Path, env: dict[str, str], *, drain_seconds: float = 20.0) -> None:
        port = free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", str(drain_seconds)]
        env = {"BRIDGE_RECORDING_DIR": str(directory / "recordings"), **env}
        super().__init__(directory, args, env, port=port, ready_path="/readyz")


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


__all__ = ["BridgeProcess", "ServerProcess", "metric", "recognizer_process", "worker_process"]
