"""The lean null recognizer must count every probe the bridge forwards, however the audio is cut."""

from __future__ import annotations

import itertools
import time

import msgspec
import pytest
from websockets.asyncio.client import connect

from bridge.bench.null_recognizer import NullRecognizer, probe_frame
from bridge.recognizers.deepgram import wire


@pytest.mark.parametrize("chunk", [160, 800, 250, 17])
async def test_probes_straddling_messages_are_all_counted(chunk: int) -> None:
    server = NullRecognizer(window_seconds=0.5, partial_seconds=0.1)
    await server.start()
    audio = b"".join(probe_frame(7, 1, seq, time.monotonic()) for seq in range(1, 101))
    url = f"ws://127.0.0.1:{server.port}/v1/listen?interim_results=true&encoding=mulaw&sample_rate=8000"
    try:
        async with connect(url) as ws:
            for at in range(0, len(audio), chunk):
                await ws.send(audio[at : at + chunk])
            await ws.send(wire.encode(wire.CloseStream()).decode())
            messages = [msgspec.json.decode(m) async for m in ws]
    finally:
        await server.stop()
    stats = server.stats()
    assert stats.frames == {"7:outbound": 100}
    assert stats.gaps == 0 and stats.out_of_order == 0 and stats.probes == 100
    finals = [m for m in messages if m["type"] == "Results" and m["is_final"]]
    partials = [m for m in messages if m["type"] == "Results" and not m["is_final"]]
    # 2 s of audio: four 0.5 s windows, four partials each but the last at the window's end.
    assert [f["start"] for f in finals] == [0.0, 0.5, 1.0, 1.5]
    assert len(partials) == 16
    assert messages[-1]["type"] == "Metadata" and messages[-1]["duration"] == 2.0


async def test_silence_the_bridge_fills_in_is_not_a_probe() -> None:
    server = NullRecognizer()
    await server.start()
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/v1/listen") as ws:
            await ws.send(b"\xff" * 1600 + probe_frame(1, 0, 11, time.monotonic()))
            await ws.send(wire.encode(wire.CloseStream()).decode())
            async for _ in ws:
                pass
    finally:
        await server.stop()
    stats = server.stats()
    assert stats.probes == 1 and stats.frames == {"1:inbound": 1} and stats.gaps == 10


async def test_staggered_connections_get_their_first_final_at_different_points_then_every_window() -> None:
    """Calls started together must not all get their results in the same instant (a burst no real
    calls make): each connection's first window is a random number of whole frames."""
    server = NullRecognizer(window_seconds=0.5, partial_seconds=0.1, stagger=True)
    await server.start()
    audio = b"\xff" * 8000  # 1 s
    firsts: list[float] = []
    try:
        for _ in range(8):
            async with connect(f"ws://127.0.0.1:{server.port}/v1/listen?interim_results=true") as ws:
                await ws.send(audio)
                await ws.send(wire.encode(wire.CloseStream()).decode())
                finals = [m for m in [msgspec.json.decode(m) async for m in ws]
                          if m["type"] == "Results" and m["is_final"]]  # fmt: skip
            ends = [round(f["start"] + f["duration"], 3) for f in finals]
            assert 0.0 < ends[0] <= 0.5 and all(round(b - a, 3) == 0.5 for a, b in itertools.pairwise(ends[:-1]))
            assert round(ends[0] * 1000) % 20 == 0
            firsts.append(ends[0])
    finally:
        await server.stop()
    assert len(set(firsts)) > 1
