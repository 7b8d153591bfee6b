"""What the vendors do that the old fakes hid (issue 19), through the resilience layer.

The scripted Deepgram server here ingests at most 1.25x real time (as Deepgram documents), so audio is
fed on a real-time schedule: these tests take a few seconds each, and the outage is kept short.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from bridge.audio import to_twilio_mulaw as read_mulaw_wav
from bridge.recognizers.base import RecognizerInputError, StreamOptions
from bridge.recognizers.deepgram.live import DEEPGRAM_INGEST_RATE, DeepgramRecognizer
from bridge.recognizers.resilience import RetryPolicy
from bridge.testing import ScriptedDeepgramServer, scripted_finals
from tests.support import SHORT_CALL
from tests.support.streams import Run

BPS = 8000
OPTIONS = StreamOptions(call_sid="CApace", track="inbound")
AUDIO = read_mulaw_wav(SHORT_CALL)[0][: 3 * BPS]
#: Real pacing (the recognizer's 1.25x), quick reconnects, and a budget that replays everything.
POLICY = RetryPolicy(keepalive_interval=0.15, backoff_base=0.05, backoff_cap=0.1, max_failures=100,
                     catchup_seconds=60.0)  # fmt: skip

pytestmark = pytest.mark.timeout(60)


async def _outage_run(server: ScriptedDeepgramServer, policy: RetryPolicy) -> Run:
    """3 s of audio in real time; the server is down from 0.5 s to 2.0 s (the audio keeps coming)."""
    run = Run(DeepgramRecognizer(server.url), OPTIONS, policy=policy)
    await run.start()
    feeder = asyncio.create_task(run.feed_realtime(AUDIO))
    await server.wait_for_audio(BPS // 2)
    await server.stop()
    await asyncio.sleep(1.5)
    await server.start()
    await feeder
    await run.close(timeout=10)
    return run


async def test_replay_after_reconnect_is_paced_within_the_vendor_ingest_limit() -> None:
    async with ScriptedDeepgramServer(ingest_rate=DEEPGRAM_INGEST_RATE) as server:
        run = await _outage_run(server, POLICY)
    assert run.error is None
    assert run.finals == [(round(s, 3), round(e, 3), w) for s, e, w in scripted_finals(AUDIO)]
    assert len(server.connections) == 2 and bytes(server.connections[1].audio) == AUDIO
    # ~2 s of backlog against a 1 s burst: the pump had to wait, and the vendor never had to.
    assert run.stream.stats.paced_seconds > 0
    assert server.throttled_seconds == 0


async def test_unpaced_replay_overruns_the_vendor_ingest_limit() -> None:
    """What the bug looked like: the fake now notices a replay sent as fast as possible."""
    async with ScriptedDeepgramServer(ingest_rate=DEEPGRAM_INGEST_RATE) as server:
        run = await _outage_run(server, dataclasses.replace(POLICY, max_ingest_rate=math.inf))
    assert run.error is None
    assert run.stream.stats.paced_seconds == 0
    assert server.connections[1].throttled_seconds > 0


async def test_replay_backlog_is_capped_by_the_catchup_budget() -> None:
    """Budget 2 s at 1.25x: only the newest 0.5 s of the backlog is replayed, the rest is a gap."""
    policy = dataclasses.replace(POLICY, catchup_seconds=2.0)
    async with ScriptedDeepgramServer(ingest_rate=DEEPGRAM_INGEST_RATE) as server:
        run = await _outage_run(server, policy)
    assert run.error is None and server.throttled_seconds == 0
    stats = run.stream.stats
    assert stats.replayed_seconds == pytest.approx(0.5)
    skip_to = len(AUDIO) - len(server.connections[1].audio)
    assert bytes(server.connections[1].audio) == AUDIO[skip_to:]
    [gap] = run.stream.gaps
    assert (gap.start, gap.end, gap.reason) == (0.0, skip_to / BPS, "catchup")
    assert stats.skipped_seconds == pytest.approx(skip_to / BPS)
    # Nothing from the gap, everything after it once, on the call clock.
    rebased = [(round(skip_to / BPS + s, 3), round(skip_to / BPS + e, 3), w)
               for s, e, w in scripted_finals(AUDIO[skip_to:])]  # fmt: skip
    assert run.finals == rebased
    assert any("left to the batch pass (catch-up budget)" in detail for _, detail in run.states)


async def test_regression_data_0000_fails_the_track_at_once() -> None:
    """A WAV header sent as raw linear16 cannot be decoded: Deepgram closes 1008 DATA-0000, and a
    reconnect would replay the same bytes into the same close, so there is none."""
    options = StreamOptions(call_sid="CAdata", track="inbound", encoding="linear16", sample_rate=16000)
    async with ScriptedDeepgramServer() as server:
        run = Run(DeepgramRecognizer(server.url), options, policy=dataclasses.replace(POLICY, max_ingest_rate=math.inf))
        await run.start()
        await run.feed(SHORT_CALL.read_bytes()[: 16000])
        await run.close(timeout=2)
    assert isinstance(run.error, RecognizerInputError) and run.error.reason == "DATA-0000"
    assert len(server.connections) == 1 and server.connections[0].close_code == 1008
    assert run.state_names == ["connecting", "connected", "failed"]
    assert "cannot decode the audio" in run.states[-1][1]
    assert run.stream.gaps and run.stream.gaps[-1].reason == "failed"
