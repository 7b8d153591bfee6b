"""Streaming policy of the embedded recognizer: early partials, retries, load-adaptive spacing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from typing import cast

import pytest
import websockets
from websockets.asyncio.client import connect

from bridge.audio import mulaw_to_pcm16, read_wav
from bridge.bench.fixture_sets import Turn, speech_span
from bridge.embedded.engine import EngineWord, Hypothesis, WhisperEngine, cut_repeats
from bridge.embedded.params import ListenParams
from bridge.embedded.scheduler import DecodeScheduler
from bridge.embedded.segmenter import PartialDue, SegmentClosed, Segmenter, SegmentEvent, SegmentPausing, SpeechOnset
from bridge.embedded.session import PARTIAL_INTERVALS, ListenSession, keep_partial, partial_interval
from bridge.recognizers.deepgram import wire as dg
from tests.support import FIXTURES

pytestmark = pytest.mark.timeout(120)

QUERY = "encoding=mulaw&sample_rate=8000&channels=1&interim_results=true&endpointing=300&vad_events=true"


def clip_pcm(index: int) -> bytes:
    return mulaw_to_pcm16(read_wav(FIXTURES / "audio" / "clips" / f"{index:02d}.wav").channel_bytes(0))


def events(seg: Segmenter, pcm: bytes) -> list[SegmentEvent]:
    out: list[SegmentEvent] = []
    for i in range(0, len(pcm), 320):
        out.extend(seg.feed(pcm[i : i + 320]))
    return out


def test_first_partial_is_requested_as_soon_as_speech_opens() -> None:
    evs = events(Segmenter(8000), clip_pcm(0))
    onset = next(e for e in evs if isinstance(e, SpeechOnset))
    first = next(e for e in evs if isinstance(e, PartialDue))
    # It covers the pre-roll plus the speech the VAD needed, not a whole partial interval more.
    assert first.end - onset.timestamp <= 0.2
    assert first.start <= onset.timestamp
    assert evs.index(onset) < evs.index(first)


def test_retry_brings_the_next_partial_forward() -> None:
    pcm = clip_pcm(0)
    seg = Segmenter(8000, partial_interval_s=1.0)
    got: list[PartialDue] = []
    for i in range(0, len(pcm), 320):
        for e in seg.feed(pcm[i : i + 320]):
            if isinstance(e, PartialDue):
                got.append(e)
                if len(got) == 1:
                    seg.retry_partial(e.segment, 0.1)
        if len(got) == 2:
            break
    assert len(got) == 2
    assert got[1].end - got[0].end == pytest.approx(0.1, abs=0.05)


def test_retry_for_a_closed_segment_is_ignored() -> None:
    seg = Segmenter(8000, partial_interval_s=1.0)
    evs = events(seg, clip_pcm(0) + b"\x00\x00" * 8000)
    closed = next(e for e in evs if isinstance(e, SegmentClosed))
    seg.retry_partial(closed.segment, 0.1)
    assert not seg.in_speech
    assert not any(isinstance(e, PartialDue) for e in events(seg, b"\x00\x00" * 8000))


def test_partial_interval_widens_with_load() -> None:
    spacing = [partial_interval(load) for load in (0.0, 0.5, 1.0, 1.5, 2.0, 5.0)]
    assert spacing == sorted(spacing)
    assert spacing[0] < spacing[-1] == PARTIAL_INTERVALS[-1][1]
    pcm = clip_pcm(0)
    fast, slow = Segmenter(8000), Segmenter(8000)
    slow.set_partial_interval(1.0)
    n_fast = sum(isinstance(e, PartialDue) for e in events(fast, pcm))
    n_slow = sum(isinstance(e, PartialDue) for e in events(slow, pcm))
    assert n_slow < n_fast


async def test_scheduler_load_counts_running_and_queued_work() -> None:
    sched = DecodeScheduler(2)
    assert sched.load == 0
    gate = threading.Event()
    jobs = [sched.submit_final(str(i), lambda: gate.wait(10)) for i in range(3)]
    jobs.append(sched.submit_partial("p", lambda: True))
    assert sched.load == 2.0  # two running, two queued, two workers
    gate.set()
    await asyncio.gather(*jobs)
    assert sched.load == 0
    sched.close()


def test_partial_kept_when_confident_despite_no_speech_score() -> None:
    assert keep_partial(Hypothesis("hi", (), confidence=0.8, no_speech_prob=0.7))
    assert not keep_partial(Hypothesis("hi", (), confidence=0.2, no_speech_prob=0.7))
    assert not keep_partial(Hypothesis("", (), confidence=0.9, no_speech_prob=0.0))
    assert keep_partial(Hypothesis("hi", (), confidence=0.1, no_speech_prob=0.2))


def test_looping_tail_is_cut() -> None:
    assert cut_repeats("thank you. thank you. thank you. thank you.") == "thank you."
    assert cut_repeats("my order, my order, my order, my order") == "my order,"
    assert cut_repeats("I would like to check") == "I would like to check"
    assert cut_repeats("four five seven two nine") == "four five seven two nine"


def test_regression_loops_the_guard_missed() -> None:
    # Looping partials the recognizer bench counted: a loop written with hyphens (one "word" for a
    # whitespace split), and a fifteen-word turn said twice (longer than the twelve words compared).
    assert cut_repeats("I-I-I-I-I-I-I-") == "I"
    assert cut_repeats("and foration and when-d-I-I-I-I-I-I-I-I-I-I-") == "and foration and when-d-I"
    turn = "I am sorry about that. I can see both accounts here. I will close."
    assert cut_repeats(f"{turn} {turn}") == turn
    assert cut_repeats("a well-known, well-liked shop") == "a well-known, well-liked shop"
    assert cut_repeats("it is 4111-1111-1111-1111.") == "it is 4111-1111-1111-1111."


def test_regression_a_card_number_is_not_cut_as_a_loop() -> None:
    # "1111" four times read as a loop: the live final kept "4111 1111" and dropped the rest of the
    # card (so the redactor, which needs the whole Luhn-valid number, could not recognise it either).
    card = "Sure, it is 4111, 1111, 1111, 1111. It expires 09 28."
    assert cut_repeats(card) == card
    assert cut_repeats("1111 1111 1111 1111") == "1111 1111 1111 1111"
    assert cut_repeats("one one one one one one") == "one one one one one one"
    # Digits repeating past the longest card number (19) are still a loop.
    assert cut_repeats("1111 " * 8 + "thanks") == "1111"
    assert cut_repeats("7, " * 25) == "7,"


async def test_early_partial_arrives_before_the_first_final(recognizer_url: str) -> None:
    audio = read_wav(FIXTURES / "audio" / "clips" / "00.wav").channel_bytes(0)
    received: list[dg.ServerMessage] = []
    async with connect(f"{recognizer_url}/v1/listen?{QUERY}") as ws:

        async def reader() -> None:
            with contextlib.suppress(websockets.ConnectionClosedError):
                async for raw in ws:
                    received.append(dg.decode_server(raw))

        task = asyncio.create_task(reader())
        for i in range(0, len(audio), 160):  # 20 ms frames at twice real time
            await ws.send(audio[i : i + 160])
            await asyncio.sleep(0.01)
        await ws.send(dg.encode(dg.CloseStream()).decode())
        await task
    onset = next(m for m in received if isinstance(m, dg.SpeechStarted))
    results = [m for m in received if isinstance(m, dg.Results)]
    first_final = next(i for i, m in enumerate(results) if m.is_final)
    early = [m for m in results[:first_final] if m.channel.alternatives[0].transcript]
    assert early, "a partial with words comes before the final"
    # ...and it covers little speech: it was decoded soon after the onset, not a full interval later.
    assert early[0].start + early[0].duration <= onset.timestamp + 1.0


def test_a_segment_at_the_encoders_limit_is_cut_at_its_longest_pause() -> None:
    """A monologue longer than the encoder context is finalised in pieces, cut where the speaker
    paused longest in the second half (not inside a word), and nothing of it is dropped."""
    second = 8000 * 2  # bytes of 16-bit PCM per second
    speech = (clip_pcm(0) * 3)[: 3 * second]

    def pause(ms: int) -> bytes:
        return b"\x00\x00" * (8 * ms)  # digital silence: surely unvoiced

    pcm = speech[: int(2.4 * second)] + pause(160) + speech[: int(0.6 * second)] + pause(60) + speech
    # The VAD's decisions alone: to the energy gate, the 160 ms pause and the clip's own 0.16 s of
    # leading silence after it are one endpoint (see the test below).
    seg = Segmenter(8000, max_segment_s=4.0, endpoint_s=0.3, quiet_db=None)
    closed = [e for e in events(seg, pcm) if isinstance(e, SegmentClosed)]
    last = seg.flush()
    assert last is not None
    closed.append(last)
    first = closed[0]
    assert first.reason == "max" and first.start == 0.0
    assert 2.4 <= first.end <= 2.6, first.end  # inside the 160 ms pause at 2.40-2.56 s, not the 60 ms one
    for a, b in itertools.pairwise(closed):  # each piece starts where the one before ended: nothing dropped
        assert b.start == pytest.approx(a.end)
    assert closed[-1].end == pytest.approx(len(pcm) / 2 / 8000, abs=0.02)


def speech_only(index: int) -> bytes:
    """Clip ``index`` as 16-bit PCM up to its last audible frame: the benchmark's end of a turn."""
    mulaw = read_wav(FIXTURES / "audio" / "clips" / f"{index:02d}.wav").channel_bytes(0)
    end = speech_span(Turn("inbound", 0.0, len(mulaw) / 8000, ""), mulaw).end
    return mulaw_to_pcm16(mulaw)[: round(end * 8000) * 2]


@pytest.mark.parametrize("clip", [0, 1])
def test_regression_the_endpoint_waited_for_the_vads_trailing_decision(clip: int) -> None:
    """The endpoint's silence counts from the end of the speech's energy: the segment closes the
    endpoint after the last word, not the ~0.1 s more webrtcvad holds "voiced" on top of it; and
    the decode started at the pause is still the one kept (it saw all the speech)."""
    speech = speech_only(clip)
    end = len(speech) / 2 / 8000
    closes = {}
    for quiet_db in (-35.0, None):
        seg = Segmenter(8000, endpoint_s=0.3, quiet_db=quiet_db)
        got = events(seg, speech + b"\x00\x00" * 8000)
        pausing = [e for e in got if isinstance(e, SegmentPausing)]
        closed = [e for e in got if isinstance(e, SegmentClosed)]
        assert len(closed) == 1 and closed[0].reason == "endpoint"
        assert pausing and pausing[-1].voiced_end == seg.last_voiced_end  # the decode ahead is used
        closes[quiet_db] = closed[0].end - end
    assert closes[-35.0] == pytest.approx(0.3, abs=0.021)
    assert closes[None] >= 0.38  # the VAD alone: what every final used to wait


class _OneAnswerEngine:
    """Stands in for :class:`WhisperEngine` in the session: counts decodes, always hears one sentence."""

    max_segment_seconds = 9.5

    def __init__(self) -> None:
        self.decodes = 0

    def partial_context(self, duration: float) -> float:
        return 10.0

    def transcribe(self, audio: object, **_: object) -> Hypothesis:
        self.decodes += 1
        words = (EngineWord("Hello", 0.2, 0.6, 0.9), EngineWord("there.", 0.6, 1.0, 0.9))
        return Hypothesis("Hello there.", words, 0.9, 0.0)


async def test_regression_no_final_was_decoded_ahead_while_a_partial_held_one_worker() -> None:
    """At the speaker's pause the final starts at once when a worker is free, even while the other
    decodes a partial (as it nearly always is mid-speech): it is then used at the endpoint, not
    decoded again there."""
    sched = DecodeScheduler(2)
    gate = threading.Event()
    busy = sched.submit_partial("other call", lambda: gate.wait(10))
    engine = _OneAnswerEngine()
    params = ListenParams(encoding="linear16", sample_rate=8000, endpointing_ms=300)
    session = ListenSession(params=params, engine=cast(WhisperEngine, engine), scheduler=sched,
                            request_id="r", model_name="m")  # fmt: skip
    sender = asyncio.create_task(session.run_sender(lambda _: asyncio.sleep(0)))
    try:
        await asyncio.sleep(0.05)
        assert sched.load == 0.5
        speech = speech_only(0)
        for i in range(0, len(speech), 1600):  # 100 ms at a time, decodes finishing as they would
            session.feed(speech[i : i + 1600])
            await asyncio.sleep(0.01)
        session.feed(b"\x00\x00" * 8 * 160)  # the pause has begun: 160 ms of silence
        assert session._ahead is not None  # its final is on its way
        session.feed(b"\x00\x00" * 8 * 400)  # ...and the endpoint
        session.end_output()
        await asyncio.wait_for(sender, 10)
        # Used at the endpoint; the only other decodes were of pauses the speaker spoke on after.
        assert sched.used_ahead == 1
        assert engine.decodes == sched.wasted_ahead + 1
    finally:
        gate.set()
        await busy
        sched.close()


async def test_a_busy_recognizer_leaves_the_endpoint_to_the_vad() -> None:
    """Under load the energy endpoint is off: the pauses it finds inside turns would mean more,
    shorter finals for decoders that are already queueing."""
    sched = DecodeScheduler(2)
    gate = threading.Event()
    busy = [sched.submit_partial(f"call {n}", lambda: gate.wait(10)) for n in range(2)]
    params = ListenParams(encoding="linear16", sample_rate=8000, endpointing_ms=300)
    session = ListenSession(params=params, engine=cast(WhisperEngine, _OneAnswerEngine()), scheduler=sched,
                            request_id="r", model_name="m")  # fmt: skip
    try:
        await asyncio.sleep(0.05)
        session.feed(b"\x00\x00" * 160)
        assert not session.segmenter.energy_endpoint
    finally:
        gate.set()
        await asyncio.gather(*busy)
    session.feed(b"\x00\x00" * 160)
    assert session.segmenter.energy_endpoint
    sched.close()
