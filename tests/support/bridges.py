"""``bridge serve`` as a real subprocess on a free 127.0.0.1 port (several of them share one Redis).

The child imports the bridge this test run imports (``PYTHONPATH`` is inherited); its output goes to
a log file beside its recordings, printed by :meth:`BridgeProcess.log` when a test needs it.
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


class BridgeProcess:
    """One ``bridge serve`` process: ``await start()``, ``terminate()`` (SIGTERM: drain), ``stop()``."""

    def __init__(self, directory: Path, env: dict[str, str], *, drain_seconds: float = 20.0) -> None:
        self.directory = directory
        self.port = free_port()
        self.env = {**os.environ, "BRIDGE_RECORDING_DIR": str(directory / "recordings"), **env}
        self.env.pop("BRIDGE_HOST", None)
        self.env.pop("BRIDGE_PORT", None)
        self.drain_seconds = drain_seconds
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60.0) -> BridgeProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--drain-seconds", str(self.drain_seconds)],
            env=self.env, stdout=(self.directory / "bridge.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout), httpx.AsyncClient(base_url=self.url, timeout=2) as client:
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"bridge exited with {self.proc.returncode}:\n{self.log()}")
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            return self
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def terminate(self) -> None:
        """SIGTERM: the bridge drains its calls, then exits."""
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

    async def metrics(self) -> str:
        """The instance's own ``/metrics`` (not through nginx, which refuses it)."""
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"{self.url}/metrics")).text

    def log(self) -> str:
        path = self.directory / "bridge.log"
        return path.read_text(errors="replace") if path.exists() else ""


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` in Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


__all__ = ["BridgeProcess", "metric"]
