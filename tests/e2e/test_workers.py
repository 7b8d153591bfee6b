"""``bridge serve --workers 2``: two processes on one port, one metrics view, restarts, and a drain that
loses no final."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import msgspec

from bridge import events
from bridge.store import Store, client_from_url
from bridge.testing import ScriptedDeepgramServer, TwilioStream, scripted_finals
from tests.support.bridges import TWILIO_TOKEN, BridgeProcess, bridge_env, metric
from tests.support.calls import poll, send, speech


def _workers(supervisor: int) -> set[int]:
    """Pids of the supervisor's worker processes (its children running a bridge worker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), 0)
        if ppid == supervisor and b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            found.add(int(entry.name))
    return found


async def _transcript(http: str, call_sid: str) -> list[events.Final]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{http}/calls/{call_sid}/transcript", params={"format": "json"})
    r.raise_for_status()
    return msgspec.json.decode(r.content, type=list[events.Final])


async def test_two_workers_share_the_port_report_one_set_of_metrics_and_come_back_after_a_crash(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    bridge = BridgeProcess(tmp_path / "bridge", bridge_env(redis_url, redis_prefix, scripted.url))
    bridge.args += ["--workers", "2"]
    async with bridge:
        assert bridge.proc is not None
        pids = _workers(bridge.proc.pid)
        assert len(pids) == 2
        media = f"{bridge.ws}/twilio/media"
        sids = ["CA" + f"{i:02x}" * 16 for i in range(6)]
        audio = {sid: speech(1.5, i) for i, sid in enumerate(sids)}

        async def call(sid: str) -> None:
            async with TwilioStream(media, sid, auth_token=TWILIO_TOKEN) as stream:
                await send(stream, audio[sid])
                await stream.stop()

        await asyncio.gather(*(call(sid) for sid in sids))
        for sid in sids:  # whichever worker carried it, every final is stored once
            got = [(f.start, f.end, f.text) for f in await _transcript(bridge.url, sid)]
            assert got == [(s, e, t) for s, e, t in scripted_finals(audio[sid])]
        # Any scrape answers for both workers.
        for _ in range(4):
            text = await bridge.metrics()
            assert metric(text, "bridge_calls_total") == 6
            assert metric(text, "bridge_active_calls") == 0

        # A worker that dies is replaced; calls go on.
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            now = _workers(bridge.proc.pid) if bridge.proc is not None else set()
            return len(now) == 2 and victim not in now

        await poll(replaced, "the dead worker to be replaced", seconds=60)
        audio["CA" + "ff" * 16] = speech(1.0, 99)
        await call("CA" + "ff" * 16)
        assert await _transcript(bridge.url, "CA" + "ff" * 16)
    assert bridge.exit_code == 0
    assert "died with -9: restarting it" in bridge.log()


async def test_sigterm_drains_every_worker_before_the_supervisor_exits(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    bridge = BridgeProcess(tmp_path / "bridge", bridge_env(redis_url, redis_prefix, scripted.url))
    bridge.args += ["--workers", "2"]
    sids = ["CA" + "d0" * 16, "CA" + "d1" * 16, "CA" + "d2" * 16]
    audio = {sid: speech(2.0, 20 + i) for i, sid in enumerate(sids)}
    async with bridge:
        media = f"{bridge.ws}/twilio/media"
        streams = [TwilioStream(media, sid, auth_token=TWILIO_TOKEN) for sid in sids]
        for stream in streams:
            await stream.__aenter__()
            await send(stream, audio[stream.call_sid])

        async def heard() -> bool:
            return scripted.received_bytes >= sum(len(a) for a in audio.values())

        await poll(heard, "every call's audio to reach the recognizer")
        bridge.terminate()  # mid-call: no stop from Twilio
        assert await bridge.wait() == 0
        for stream in streams:
            assert stream.ws is not None
            await stream.ws.close()
    # The bridge is gone; Redis has every final of every call, ended.
    store = Store(client_from_url(redis_url), prefix=redis_prefix, retention_seconds=3600)
    try:
        for sid in sids:
            got = [(f.start, f.end, f.text) for f in await store.transcript(sid)]
            assert got == [(s, e, t) for s, e, t in scripted_finals(audio[sid])]
            info = await store.get_call(sid)
            assert info is not None and info.status == "ended"
    finally:
        await store.close()


async def test_with_the_embedded_recognizer_one_recognizer_process_serves_every_worker(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_url, "BRIDGE_REDIS_PREFIX": redis_prefix, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
           "BRIDGE_RECOGNIZER": "embedded", "BRIDGE_EMBEDDED_FINAL_MODEL": ""}  # fmt: skip
    bridge = BridgeProcess(tmp_path / "bridge", env)
    bridge.args += ["--workers", "2"]
    async with bridge:
        assert bridge.proc is not None
        recognizers = [p for p in _children(bridge.proc.pid) if b"recognizer" in _cmdline(p)]
        assert len(recognizers) == 1 and len(_workers(bridge.proc.pid)) == 2
    assert bridge.exit_code == 0
    assert "embedded recognizer for every worker at ws://127.0.0.1:" in bridge.log()


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def _children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if any(line == f"PPid:\t{parent}" for line in status.splitlines()):
                out.append(int(entry.name))
    return out
