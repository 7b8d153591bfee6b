"""``bridge soak``: replay calls while killing the recognizer every few seconds; count lost/doubled finals.

The recognizer is the scripted Deepgram-protocol server from :mod:`bridge.testing` (words are a
function of the audio), run as a child process on a fixed port so it can be SIGKILLed and restarted.
After each call, the finals stored in Redis are compared with what a clean run yields. Loopback only,
bounded by ``--seconds``; exits 0 only when nothing was lost and nothing doubled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bridge import events
from bridge.recognizers.resilience import RetryPolicy
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer, TwilioStream, scripted_finals


@dataclasses.dataclass
class SoakReport:
    calls: int = 0
    expected: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    kills: int = 0
    reconnects: float = 0.0

    def line(self) -> str:
        return (f"calls {self.calls}  finals expected {self.expected}  stored {self.stored}  "
                f"lost {self.lost}  duplicated {self.duplicated}  recognizer kills {self.kills}  "
                f"reconnects {self.reconnects:.0f}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Recognizer:
    """The scripted recognizer as a child process that can be killed hard and started again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - a quick fork; we poll the port below
            [sys.executable, "-m", "bridge.bench.soak", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.1):
                return
            await asyncio.sleep(0.02)
        raise RuntimeError("scripted recognizer did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


async def _call(http: str, token: str, seconds: float, speed: float, report: SoakReport) -> None:
    call_sid = "CA" + secrets.token_hex(16)
    rnd = random.Random(call_sid)
    tracks = {t: bytes(rnd.randrange(0, 255) for _ in range(int(seconds * 8000))) for t in ("inbound", "outbound")}
    url = http.replace("http://", "ws://") + "/twilio/media"
    async with TwilioStream(url, call_sid, auth_token=token, tracks=("inbound", "outbound")) as stream:
        t0 = time.monotonic()
        for i in range(0, int(seconds * 8000), 160):
            await stream.media("inbound", i // 8, tracks["inbound"][i : i + 160])
            await stream.media("outbound", i // 8, tracks["outbound"][i : i + 160])
            due = t0 + (i + 160) / 8000 / speed
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
        await stream.stop()
    async with httpx.AsyncClient(base_url=http, timeout=10) as client:
        for _ in range(1200):
            r = await client.get(f"/calls/{call_sid}")
            if r.status_code == 200 and r.json().get("status") == "ended":
                break
            await asyncio.sleep(0.05)
        rows = [events.decode_final(json.dumps(f)) for f in (await client.get(f"/calls/{call_sid}/transcript")).json()]
    stored = [(f.track, f.start, f.end, f.text) for f in rows]
    expected = [(t, round(s, 3), round(e, 3), w) for t, a in tracks.items() for s, e, w in scripted_finals(a)]
    report.calls += 1
    report.expected += len(expected)
    report.stored += len(stored)
    report.lost += len(set(expected) - set(stored))
    report.duplicated += len(stored) - len(set(stored)) + len(set(stored) - set(expected))


async def soak(*, seconds: float, calls: int, call_seconds: float, speed: float, kill_every: float,
               down_for: float, redis_url: str = "", out: Path | None = None) -> SoakReport:
    from bridge.server import running_bridge

    port = _free_port()
    recognizer = _Recognizer(port)
    await recognizer.start()
    token = secrets.token_hex(8)
    base = Settings.from_env()
    settings = dataclasses.replace(
        base, port=0, twilio_auth_token=token, recognizer="deepgram", recognizer_url=f"ws://127.0.0.1:{port}",
        redis_url=redis_url or base.redis_url, redis_prefix=f"soak-{secrets.token_hex(4)}",
        recording_dir=Path(out or "var/soak"),
    )
    # Faster than real time no vendor ingests: pacing (and its catch-up budget) would then be what the
    # soak measures, not loss and duplication across kills. At speed <= 1 the real limits apply.
    policy = RetryPolicy(keepalive_interval=1.0, backoff_base=0.1, backoff_cap=1.0, max_failures=1000,
                         max_ingest_rate=math.inf if speed > 1 else None)  # fmt: skip
    report = SoakReport()
    deadline = time.monotonic() + seconds
    try:
        async with running_bridge(settings, retry_policy=policy) as (app, http):

            async def killer() -> None:
                while time.monotonic() < deadline:
                    await asyncio.sleep(kill_every)
                    recognizer.kill()
                    report.kills += 1
                    await asyncio.sleep(down_for)
                    await recognizer.start()

            kill_task = asyncio.create_task(killer())
            try:
                while time.monotonic() + call_seconds / speed < deadline:
                    await asyncio.gather(*(_call(http, token, call_seconds, speed, report) for _ in range(calls)))
                    print(report.line(), file=sys.stderr, flush=True)
            finally:
                kill_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await kill_task
            metric = app.state.metrics.registry.get_sample_value("bridge_recognizer_reconnects_total")
            report.reconnects = metric or 0.0
    finally:
        recognizer.kill()
    return report


async def _serve_scripted(port: int) -> None:
    async with ScriptedDeepgramServer(port=port):
        await asyncio.Event().wait()


def main(args: argparse.Namespace) -> int:
    """``bridge soak``: exits 0 only when nothing was lost and nothing doubled."""
    report = asyncio.run(soak(seconds=args.seconds, calls=args.calls, call_seconds=args.call_seconds,
                              speed=args.speed, kill_every=args.kill_every, down_for=args.down_for))
    print(f"soak: {report.line()}")
    return 0 if report.lost == 0 and report.duplicated == 0 and report.calls > 0 else 1


if __name__ == "__main__":  # the killable recognizer child: python -m bridge.bench.soak PORT
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_scripted(int(sys.argv[1])))
