"""The fallback policy of the resilience layer (issue 15), against real servers on 127.0.0.1.

Primary and fallback are both scripted Deepgram-protocol servers whose words are a function of the
audio only, so a track handed over at a final boundary yields, segment by segment, a clean run's finals.
"""

from __future__ import annotations

import dataclasses
import math
import socket

import pytest

from bridge.audio import to_twilio_mulaw as read_mulaw_wav
from bridge.recognizers.base import RecognizerConnectError, RecognizerRejected, StreamOptions
from bridge.recognizers.deepgram.live import DeepgramRecognizer
from bridge.recognizers.resilience import RetryPolicy
from bridge.testing import ScriptedDeepgramServer, scripted_finals
from tests.support import SHORT_CALL
from tests.support.streams import Run

BPS = 8000
OPTIONS = StreamOptions(call_sid="CAfall", track="inbound")
AUDIO = read_mulaw_wav(SHORT_CALL)[0][: int(5.3 * BPS)]
ORIGIN = 3.0
#: Audio fed ~20x real time (no pacing here: see test_pacing.py); the primary gets 0.5 s to come back.
POLICY = RetryPolicy(keepalive_interval=0.15, backoff_base=0.05, backoff_cap=0.1, connect_timeout=1.0,
                     fallback_after=0.5, max_ingest_rate=math.inf)  # fmt: skip

pytestmark = pytest.mark.timeout(60)


def _expected(audio: bytes = AUDIO) -> list[tuple[float, float, str]]:
    return [(round(ORIGIN + s, 3), round(ORIGIN + e, 3), w) for s, e, w in scripted_finals(audio)]


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{s.getsockname()[1]}"


def _named(url: str, name: str, **kw: object) -> DeepgramRecognizer:
    return DeepgramRecognizer(url, name=name, **kw)  # type: ignore[arg-type]


async def _run(primary: DeepgramRecognizer, fallback: DeepgramRecognizer | None, policy: RetryPolicy = POLICY) -> Run:
    run = Run(primary, OPTIONS, policy=policy, origin=ORIGIN, fallback=fallback)
    await run.start()
    await run.feed(AUDIO)
    await run.close(timeout=5)
    return run


async def test_a_dead_primary_hands_the_track_to_the_fallback_after_the_grace() -> None:
    async with ScriptedDeepgramServer() as backup:
        run = await _run(_named(_dead_url(), "deepgram"), _named(backup.url, "backup"))
    assert run.error is None
    assert run.finals == _expected()  # every word, once, all replayed to the fallback
    assert bytes(backup.connections[0].audio) == AUDIO
    assert [(s.recognizer, s.start, s.end, s.fallback) for s in run.stream.served] == [
        ("backup", ORIGIN, round(ORIGIN + len(AUDIO) / BPS, 3), True)
    ]
    assert run.stream.stats.switches == 1 and run.stream.on_fallback
    switching = [d for s, d in run.states if s == "reconnecting" and "switching" in d]
    assert len(switching) == 1 and "from deepgram to fallback backup" in switching[0]
    assert run.stream.gaps == []


@pytest.mark.parametrize(("status", "error"), [(401, "INVALID_AUTH"), (402, "ASR_PAYMENT_REQUIRED"),
                                               (403, "INSUFFICIENT_PERMISSIONS"), (429, "TOO_MANY_REQUESTS")])
async def test_a_rejecting_primary_switches_at_once(status: int, error: str) -> None:
    # A grace far longer than the test: only the rejection itself can have caused the switch.
    policy = dataclasses.replace(POLICY, fallback_after=3600)
    async with ScriptedDeepgramServer() as primary, ScriptedDeepgramServer() as backup:
        primary.reject(status, error)
        run = await _run(_named(primary.url, "deepgram"), _named(backup.url, "backup"), policy)
    assert run.error is None and run.finals == _expected()
    assert primary.rejected == 1, "a rejection was retried"
    assert any(f"HTTP {status}" in d for s, d in run.states if s == "reconnecting")
    assert [s.recognizer for s in run.stream.served] == ["backup"]


async def test_a_primary_that_stops_answering_mid_call_hands_over_at_a_final_boundary() -> None:
    async with ScriptedDeepgramServer() as primary, ScriptedDeepgramServer() as backup:
        fast_pings = {"ping_interval": 0.2, "ping_timeout": 0.3, "open_timeout": 0.5}
        run = Run(_named(primary.url, "deepgram", **fast_pings), OPTIONS, policy=POLICY, origin=ORIGIN,
                  fallback=_named(backup.url, "backup"))  # fmt: skip
        await run.start()
        await run.feed(AUDIO[: int(2.5 * BPS)])
        await primary.wait_for_audio(int(2.5 * BPS))
        primary.hang()
        await run.feed(AUDIO[int(2.5 * BPS) :])
        await run.close(timeout=5)
    assert run.error is None
    assert run.finals == _expected()  # a clean run's finals: nothing lost, nothing twice
    handover = len(AUDIO) - len(backup.connections[0].audio)
    assert handover == 2 * BPS  # the first byte no final covered
    assert [(s.recognizer, s.start, s.end, s.fallback) for s in run.stream.served] == [
        ("deepgram", ORIGIN, ORIGIN + 2.0, False),
        ("backup", ORIGIN + 2.0, round(ORIGIN + len(AUDIO) / BPS, 3), True),
    ]


async def test_the_fallback_is_kept_for_the_rest_of_the_stream() -> None:
    """Documented policy: no return to the primary mid-stream, even when it is back."""
    async with ScriptedDeepgramServer() as primary, ScriptedDeepgramServer() as backup:
        primary.reject(503, times=100)
        run = Run(_named(primary.url, "deepgram"), OPTIONS, policy=POLICY, origin=ORIGIN,
                  fallback=_named(backup.url, "backup"))  # fmt: skip
        await run.start()
        await run.feed(AUDIO[: 2 * BPS])
        await backup.wait_for_audio(2 * BPS)
        primary.accept()
        await backup.close_all(1011, "NET-0000")  # the fallback drops: it reconnects to itself
        await run.feed(AUDIO[2 * BPS :])
        await run.close(timeout=5)
    assert run.error is None and run.finals == _expected()
    assert len(backup.connections) == 2 and len(primary.connections) == 0
    assert [s.recognizer for s in run.stream.served] == ["backup"]


async def test_without_a_fallback_a_rejection_still_fails_the_track() -> None:
    async with ScriptedDeepgramServer(api_key="right") as primary:
        run = Run(_named(primary.url, "deepgram", api_key="wrong"), OPTIONS, policy=POLICY)
        with pytest.raises(RecognizerRejected):
            await run.start()
    assert run.state_names == ["connecting", "failed"]


async def test_when_the_fallback_fails_too_the_track_fails_with_its_error() -> None:
    async with ScriptedDeepgramServer(api_key="right") as backup:
        run = await _run(_named(_dead_url(), "deepgram"), _named(backup.url, "backup", api_key="wrong"))
    assert isinstance(run.error, RecognizerRejected) and run.error.code == 401
    assert run.state_names[-1] == "failed" and run.stream.served == []
    assert run.stream.gaps[-1].reason == "failed" and run.stream.gaps[-1].end == round(ORIGIN + len(AUDIO) / BPS, 3)
    assert not isinstance(run.error, RecognizerConnectError)


async def test_a_switch_replays_the_whole_outage_paced_even_beyond_the_catchup_budget() -> None:
    """Fed at real time to a fallback that ingests 1.25x: the ~0.6 s the dead primary was waited for
    exceed a 0.1 s catch-up budget, yet nothing is skipped (the wait bounds it) nor sent too fast."""
    audio = AUDIO[: 2 * BPS]
    # Budget 0.4 s x 0.25 = 0.1 s of replay; a 0.2 s burst on both sides, so the ~0.6 s backlog is paced.
    policy = dataclasses.replace(POLICY, max_ingest_rate=None, catchup_seconds=0.4, pace_burst_seconds=0.2)
    async with ScriptedDeepgramServer(ingest_rate=1.25, ingest_burst_seconds=0.2) as backup:
        run = Run(_named(_dead_url(), "deepgram"), OPTIONS, policy=policy, origin=ORIGIN,
                  fallback=_named(backup.url, "backup"))  # fmt: skip
        await run.start()
        await run.feed_realtime(audio)
        await run.close(timeout=5)
    assert run.error is None and run.finals == _expected(audio)
    assert run.stream.gaps == [] and run.stream.stats.skipped_seconds == 0
    assert run.stream.stats.replayed_seconds > 0.5
    assert backup.throttled_seconds == 0 and run.stream.stats.paced_seconds > 0
