"""The batch pass's redaction: the compliance transcript masked, the spans computed, and, through a
worker on a real Redis, the recording silenced and the unredacted original gone before anything of the
transcript is stored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bridge import transcripts
from bridge.audio import MULAW_SILENCE, mulaw_wav_bytes, read_wav
from bridge.batch.worker import Worker
from bridge.events import Word
from bridge.redact.batch import answer_spans, redact_recording, redact_transcript
from bridge.store import Store
from bridge.store.jobs import RecordingJob
from bridge.transcripts import BatchTranscript, Recording, Utterance

SID = "CA" + "ab" * 16


def _utt(track: str, start: float, text: str) -> Utterance:
    words = [Word(word=w, start=start + i * 0.5, end=start + i * 0.5 + 0.4) for i, w in enumerate(text.split())]
    return transcripts.utterance(track, 0 if track == "inbound" else 1, words, text, 0.9)


CALL = [
    ("outbound", 0.5, "can I have the card number please"),
    ("inbound", 5.0, "sure 4111 1111 1111 1111"),
    ("outbound", 9.0, "and the security code"),
    ("inbound", 12.0, "seven three seven"),
    ("outbound", 15.0, "thanks what is your order number"),
    ("inbound", 19.0, "45729"),
]


def _transcript() -> BatchTranscript:
    return BatchTranscript(call_sid=SID, engine="fake", model="fake", duration=24.0, channels=2,
                           tracks=["inbound", "outbound"], utterances=[_utt(*t) for t in CALL])  # fmt: skip


def test_the_transcript_is_masked_and_the_spans_are_widened() -> None:
    redacted, spans = redact_transcript(_transcript(), frozenset({"card"}))
    assert [u.text for u in redacted.utterances if u.track == "inbound"] == [
        "sure [card number]", "[security code]", "45729"]  # fmt: skip
    card = redacted.utterances[1].words[-1]
    assert (card.word, card.start, card.end) == ("[card number]", 5.5, 7.4)
    by_kind = {s.kind: s for s in spans}
    assert (by_kind["card_number"].start, by_kind["card_number"].end) == (4.8, 7.6)  # the turn, widened
    assert {s.track for s in spans} == {"inbound"}  # never the agent's channel
    assert not any(s.start <= 19.5 <= s.end for s in spans)  # the order number stays audible


def test_the_callers_answer_is_silenced_even_when_misrecognised() -> None:
    spans = answer_spans([_utt("outbound", 0.5, "and the expiry date"), _utt("inbound", 3.0, "oh mine tender"),
                          _utt("outbound", 6.0, "thank you")])  # fmt: skip
    assert [(s.track, s.start, s.end, s.kind) for s in spans] == [("inbound", 2.4, 6.0, "card_answer")]


class CardEngine:
    """The transcript of :data:`CALL`, whatever the audio (the words a recognizer would give)."""

    name = "fake"
    model = "card"

    async def transcribe(self, recording: Recording, tracks: Sequence[str]) -> list[Utterance]:
        return [_utt(*t) for t in CALL]


async def test_the_worker_stores_only_masked_text_and_a_silenced_recording(store: Store, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    caller, agent = (rng.integers(0, 0x7F, 24 * 8000, dtype=np.uint8).tobytes() for _ in range(2))
    path = tmp_path / f"{SID}.wav"
    path.write_bytes(mulaw_wav_bytes([caller, agent]))
    await store.enqueue_recording(RecordingJob(call_sid=SID, path=str(path), channels=2,
                                               tracks=["inbound", "outbound"], duration=24.0))  # fmt: skip
    worker = Worker(store, CardEngine(), block_ms=50, recording_dir=tmp_path)
    assert await worker.process_one()

    batch = await store.batch_transcript(SID)
    assert batch is not None and "4111" not in transcripts.encode(batch).decode()
    assert b"4111" not in (tmp_path / f"{SID}.batch.json").read_bytes()
    spans = await store.redactions(SID)
    assert spans and {s.kind for s in spans} >= {"card_number", "card_cvv", "card_answer"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{SID}.batch.json", f"{SID}.wav"]  # original gone
    wav = read_wav(path)
    assert wav.channel_bytes(1) == agent
    after = wav.channel_bytes(0)
    assert set(after[int(5.5 * 8000) : int(7.4 * 8000)]) == {MULAW_SILENCE}
    assert after[int(19.0 * 8000) :] == caller[int(19.0 * 8000) :]


async def test_a_redelivered_job_keeps_the_spans_of_the_first_attempt(store: Store, tmp_path: Path) -> None:
    """Regression: a job redelivered after its recording was silenced transcribes silence, finds no
    card, and must not forget (and un-store) the spans the first attempt silenced."""
    path = tmp_path / f"{SID}.wav"
    path.write_bytes(mulaw_wav_bytes([b"\x10" * 24 * 8000, b"\x20" * 24 * 8000]))
    first = [transcripts.Redaction(track="inbound", start=5.0, end=8.0, kind="card_number")]
    await store.save_redactions(SID, first)
    await store.enqueue_recording(RecordingJob(call_sid=SID, path=str(path), channels=2,
                                               tracks=["inbound", "outbound"], duration=24.0))  # fmt: skip

    class Silent(CardEngine):
        async def transcribe(self, recording: Recording, tracks: Sequence[str]) -> list[Utterance]:
            return [_utt("inbound", 19.0, "goodbye")]

    assert await Worker(store, Silent(), block_ms=50, recording_dir=tmp_path).process_one()
    assert await store.redactions(SID) == first
    assert set(read_wav(path).channel_bytes(0)[5 * 8000 : 8 * 8000]) == {MULAW_SILENCE}


async def test_a_calls_own_redact_parameter_adds_ssn_in_the_batch_pass(store: Store, tmp_path: Path) -> None:
    import time

    await store.call_started(SID, stream_sid="MZ" + "0" * 32, tracks=["inbound", "outbound"], started_at=time.time(),
                             custom={"redact": "pci,ssn"})  # fmt: skip
    path = tmp_path / f"{SID}.wav"
    path.write_bytes(mulaw_wav_bytes([b"\x10" * 8 * 8000, b"\x20" * 8 * 8000]))
    transcript = BatchTranscript(call_sid=SID, engine="fake", model="fake", duration=8.0, channels=2,
                                 tracks=["inbound", "outbound"],
                                 utterances=[_utt("inbound", 1.0, "my social is 123-45-6789")])  # fmt: skip
    redacted = await redact_recording(store, transcript, path, ["inbound", "outbound"], kinds=frozenset({"card"}),
                                      keep_original=False)  # fmt: skip
    assert redacted.utterances[0].text == "my social is [ssn]"
