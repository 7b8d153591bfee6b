"""``bridge serve`` as a real process for tests: configured only through its environment, its log kept.

``async with BridgeServe(env) as bridge`` starts ``python -m bridge.cli serve`` on a free loopback port
and waits until it answers ``/healthz`` (not ``/readyz``: some tests start it unready on purpose);
leaving the block sends SIGTERM (the bridge drains) and waits for the exit code. ``preexec`` runs in
the child before ``exec`` (e.g. to set an RLIMIT). :func:`run_serve` runs a bridge that must refuse to
start and returns its exit code and output.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_env(**env: str) -> dict[str, str]:
    """The test process's environment with no ``BRIDGE_*``/Twilio/vendor settings, plus ``env``."""
    prefixes = ("BRIDGE_", "TWILIO_", "DEEPGRAM_", "ELEVENLABS_", "REDIS_URL", "FORWARDED_ALLOW_IPS")
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**base, **env}


#: The Twilio auth token of the bridges these helpers start.
TWILIO_TOKEN = "serve-test-token"


def bridge_env(redis_url: str, prefix: str, recordings: Path, recognizer_url: str, **extra: str) -> dict[str, str]:
    """A bridge on the test Redis (under ``prefix``) with the scripted recognizer at ``recognizer_url``."""
    return {
        "REDIS_URL": redis_url,
        "BRIDGE_REDIS_PREFIX": prefix,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "BRIDGE_RECOGNIZER": "deepgram",
        "BRIDGE_RECOGNIZER_URL": recognizer_url,
        "BRIDGE_RECOGNIZER_API_KEY": "scripted",
        "BRIDGE_RECORDING_DIR": str(recordings),
        **extra,
    }


class BridgeServe:
    def __init__(
        self,
        env: Mapping[str, str],
        log: Path,
        *,
        preexec: Callable[[], None] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.port = free_port()
        self.host = host
        self.env = serve_env(**env, BRIDGE_LOG_LEVEL=env.get("BRIDGE_LOG_LEVEL", "info"))
        self.log_path = log
        self.preexec = preexec
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def __aenter__(self) -> BridgeServe:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "serve", "--host", self.host, "--port", str(self.port),
                 "--drain-seconds", "10"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=self.preexec,
            )  # fmt: skip
        async with httpx.AsyncClient(timeout=2) as client:
            for _ in range(1200):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"bridge exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if (await client.get(f"{self.http}/healthz")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"bridge did not start:\n{self.log()}")

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            self.exit_code = await asyncio.to_thread(proc.wait, 10)

    async def metric(self, name: str) -> float:
        """The value of one sample of ``/metrics`` (``name`` with its labels, e.g. ``x_total{reason="a"}``)."""
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(f"{self.http}/metrics")).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0


def run_serve(env: Mapping[str, str], timeout: float = 60.0) -> tuple[int, str]:
    """Run ``bridge serve`` that is expected to exit by itself; (exit code, stdout + stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "serve", "--port", str(free_port())],
        env=serve_env(**env), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


__all__ = ["TWILIO_TOKEN", "BridgeServe", "bridge_env", "free_port", "run_serve", "serve_env"]
