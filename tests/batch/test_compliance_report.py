"""The worker files each call's compliance report before acking its job: with the call's live alerts
and the batch pass's redactions, one metric sample per rule, and again when a worker stopped between
the transcript and the report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from bridge import events
from bridge.batch.worker import Worker
from bridge.events import Word
from bridge.retry import Backoff
from bridge.store import Store
from bridge.store.jobs import RecordingJob
from bridge.store.keys import Keys
from bridge.transcripts import Recording, Redaction, Utterance, tracks_for
from tests.support import SHORT_CALL

SID = "CA" + "b7" * 16


class ScriptedEngine:
    """Says one line per track (what a batch engine would have heard)."""

    name = "scripted"
    model = "lines"

    def __init__(self, lines: dict[str, str]) -> None:
        self.lines = lines
        self.calls = 0

    async def transcribe(self, recording: Recording, tracks: Sequence[str]) -> list[Utterance]:
        self.calls += 1
        out = []
        for ch, track in enumerate(tracks_for(recording.channels, tracks)):
            text = self.lines.get(track, "")
            words = [Word(word=w, start=1.0 + i * 0.4, end=1.3 + i * 0.4) for i, w in enumerate(text.split())]
            out.append(Utterance(id=f"{track}-{ch}", track=track, channel=ch, speaker=track, start=1.0,
                                 end=words[-1].end if words else 1.0, text=text, words=words))  # fmt: skip
        return out


def worker(redis: aioredis.Redis, keys: Keys, engine: ScriptedEngine) -> Worker:
    store = Store(redis, prefix=keys.prefix, retention_seconds=3600)
    return Worker(store, engine, consumer="w1", block_ms=50, backoff=Backoff(0.0, 0.0), write_json=False)


async def enqueue(store: Store, wav: Path) -> None:
    await store.enqueue_recording(RecordingJob(call_sid=SID, path=str(wav), channels=2,
                                               tracks=["inbound", "outbound"], duration=14.8))  # fmt: skip


async def test_the_report_is_filed_with_alerts_redactions_and_metrics(
    redis: aioredis.Redis, keys: Keys, tmp_path: Path
) -> None:
    wav = tmp_path / f"{SID}.wav"
    shutil.copy(SHORT_CALL, wav)
    engine = ScriptedEngine({"outbound": "Hello, I guarantee a refund.", "inbound": "I want to cancel."})
    w = worker(redis, keys, engine)
    store = w.store
    final = events.Final(call_sid=SID, id=events.final_id("inbound", 1.0), track="inbound", start=1.0, end=2.0,
                         text="I want to cancel.")  # fmt: skip
    await store.add_final(final)
    alert = events.Alert(call_sid=SID, rule="cancellation", track="inbound", text=final.text, start=1.0, end=2.0,
                         final_id=final.id)  # fmt: skip
    await store.add_alert(alert)
    span = Redaction(track="inbound", start=3.0, end=4.0, kind="card_number")
    await store.save_redactions(SID, [span])
    await enqueue(store, wav)
    assert await w.process_one()

    report = await store.compliance(SID)
    assert report is not None and report.passed is False and report.engine == "scripted lines"
    results = {r.id: r for r in report.rules}
    assert not results["recording_disclosure"].passed and not results["forbidden_promises"].passed
    assert results["forbidden_promises"].evidence[0].text == "Hello, I guarantee a refund."
    assert results["cancellation"].passed and results["cancellation"].evidence[0].track == "inbound"
    assert [a.rule for a in report.alerts] == ["cancellation"] and report.alerts[0].seq == 1
    assert report.redactions == [span]
    assert await store.compliance_calls(failed=True) == [SID]
    sample = w.metrics.registry.get_sample_value
    assert sample("bridge_compliance_rule_results_total", {"rule": "recording_disclosure", "result": "fail"}) == 1
    assert sample("bridge_compliance_rule_results_total", {"rule": "cancellation", "result": "matched"}) == 1
    assert sample("bridge_compliance_rule_results_total", {"rule": "lawyer", "result": "none"}) == 1
    assert sample("bridge_compliance_reports_total", {"result": "fail"}) == 1


async def test_a_redelivered_job_files_the_report_a_stopped_worker_did_not(
    redis: aioredis.Redis, keys: Keys, tmp_path: Path
) -> None:
    wav = tmp_path / f"{SID}.wav"
    shutil.copy(SHORT_CALL, wav)
    engine = ScriptedEngine({"outbound": "Thank you for calling, this call may be recorded."})
    w = worker(redis, keys, engine)
    await enqueue(w.store, wav)
    assert await w.process_one()
    await redis.delete(keys.compliance(SID))  # as if the worker stopped right after the transcript
    await enqueue(w.store, wav)
    assert await w.process_one()
    assert engine.calls == 1  # the transcript was there: not transcribed again
    report = await w.store.compliance(SID)
    assert report is not None and report.passed is True and report.redactions == []
    assert await w.store.compliance_calls() == [SID] and await w.store.compliance_calls(failed=True) == []
