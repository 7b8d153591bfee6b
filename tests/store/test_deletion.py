"""Erasing a call: no key of it is left, its index entries, jobs and webhook deliveries are gone, and
no late write of any kind brings it back (each test runs on one server and on a Redis Cluster)."""

from __future__ import annotations

import time

from bridge import events
from bridge.compliance.models import ComplianceReport, RuleResult
from bridge.store import Store
from bridge.store.jobs import JobQueue, RecordingJob
from bridge.transcripts import BatchTranscript, CallQuality, Redaction

SID = "CA" + "d1" * 16
OTHER = "CA" + "0e" * 16


def _final(call_sid: str, start: float, text: str) -> events.Final:
    return events.Final(call_sid=call_sid, id=events.final_id("inbound", start), track="inbound", start=start,
                        end=start + 1, text=text)  # fmt: skip


def _batch(call_sid: str) -> tuple[BatchTranscript, CallQuality]:
    transcript = BatchTranscript(call_sid=call_sid, engine="e", model="m", duration=1.0, channels=1,
                                 tracks=["inbound"], utterances=[], job_key="k")  # fmt: skip
    quality = CallQuality(call_sid=call_sid, wer=0.9, tracks=[], flagged=True, threshold=0.35, live_finals=1)
    return transcript, quality


async def _keys_naming(store: Store, call_sid: str) -> list[str]:
    found = [k.decode() if isinstance(k, bytes) else k
             async for k in store.client.scan_iter(match=store.keys.pattern(), count=500)]  # fmt: skip
    return sorted(k for k in found if call_sid in k)


def _alert(call_sid: str, final: events.Final) -> events.Alert:
    return events.Alert(call_sid=call_sid, rule="lawyer", track="inbound", text=final.text, start=final.start,
                        end=final.end, final_id=final.id)  # fmt: skip


def _report(call_sid: str) -> ComplianceReport:
    rules = [RuleResult(id="recording_disclosure", kind="required", passed=False, evidence=[])]
    return ComplianceReport(call_sid=call_sid, passed=False, rules=rules, evaluated_at=time.time())


async def _a_whole_call(store: Store, call_sid: str) -> None:
    await store.call_started(call_sid, stream_sid="MZ" + "1" * 32, tracks=["inbound"], started_at=time.time())
    said = _final(call_sid, 0.5, "my card number is four two, I want my lawyer")
    await store.add_final(said)
    assert await store.add_alert(_alert(call_sid, said))
    await store.update_call(call_sid, {"call_status": "completed"})
    await store.call_ended(call_sid, ended_at=time.time(), reason="stop")
    assert await store.enqueue_recording(RecordingJob(call_sid=call_sid, path=f"/r/{call_sid}.wav"))
    await store.save_batch_result(*_batch(call_sid))
    await store.save_redactions(call_sid, [Redaction(track="inbound", start=0.5, end=1.5, kind="card")])
    assert await store.save_compliance(_report(call_sid))


async def test_a_deleted_call_leaves_no_key_index_entry_nor_job(store: Store) -> None:
    await _a_whole_call(store, SID)
    await _a_whole_call(store, OTHER)
    # A job of the call that failed once (pending, attempts, retry) and one in the dead letters.
    queue = store.jobs
    got = await queue.next("c1", block_ms=10, claim_idle_ms=60_000)
    assert got is not None and got[0][1]["call_sid"] == SID
    await queue.failed(got[0][0])
    await queue.retry_at(got[0][0], time.time() + 60)
    await queue.dead_letter("0-1", {"call_sid": SID, "path": "x"}, "test", attempts=5, consumer="c1")
    webhooks = JobQueue(store.client, store.keys, queue=store.keys.webhook_queue)
    await webhooks.add({"call_sid": SID, "body": "{}"})
    await webhooks.add({"call_sid": OTHER, "body": "{}"})
    assert len(await _keys_naming(store, SID)) >= 9

    erased = await store.delete_call(SID)

    assert await _keys_naming(store, SID) == [store.keys.tombstone(SID)]
    assert 0 < await store.client.ttl(store.keys.tombstone(SID)) <= store.retention_seconds
    assert set(erased.keys) >= {store.keys.call(SID), store.keys.finals(SID), store.keys.batch_transcript(SID),
                                store.keys.alerts(SID), store.keys.compliance(SID)}  # fmt: skip
    assert erased.index_entries == 4  # recent, flagged, compliance and compliance failed
    assert erased.jobs == 2 and erased.webhooks == 1
    for index in store.keys.call_indexes:
        assert await store.client.zscore(index, SID) is None
    q = store.keys.recording_queue
    for stream in (q.stream, q.dead, store.keys.webhooks):
        entries = await store.client.xrange(stream)
        assert all(f.get(b"call_sid") != SID.encode() for _id, f in entries)
    assert await store.client.hlen(q.attempts) == 0 and await store.client.zcard(q.retry) == 0
    assert (await store.client.xpending(q.stream, q.group))["pending"] == 0
    # The other call is untouched.
    assert await store.get_call(OTHER) is not None and len(await store.finals(OTHER)) == 1
    assert len(await store.client.xrange(store.keys.webhooks)) == 1


async def test_late_writes_never_bring_a_deleted_call_back(store: Store) -> None:
    await _a_whole_call(store, SID)
    await store.delete_call(SID)
    assert await store.call_deleted(SID) and not await store.call_deleted(OTHER)

    # A late final, status callback, recognizer state, new stream, end, recording job and batch result.
    late = _final(SID, 9.0, "late words, lawyer")
    assert await store.add_final(late) is None
    assert await store.add_alert(_alert(SID, late)) is False
    assert await store.save_compliance(_report(SID)) is False
    await store.update_call(SID, {"call_status": "completed"})
    await store.set_recognizer_state(SID, "inbound", "closed")
    await store.call_started(SID, stream_sid="MZ" + "2" * 32, tracks=["inbound"], started_at=time.time())
    await store.call_ended(SID, ended_at=time.time(), reason="stop")
    assert await store.enqueue_recording(RecordingJob(call_sid=SID, path="/r/x.wav")) == ""
    assert await store.save_batch_result(*_batch(SID)) is False
    await store.save_redactions(SID, [])

    assert await _keys_naming(store, SID) == [store.keys.tombstone(SID)]
    assert await store.get_call(SID) is None
    assert await store.list_calls() == []
    assert await store.flagged_calls() == []
    assert await store.compliance_calls() == [] and await store.compliance_calls(failed=True) == []
    assert await store.client.xlen(store.keys.recordings) == 0


async def test_batch_documents_stored_after_the_end_expire_with_the_call(store: Store) -> None:
    """The batch pass finishing after the call ended: its documents (transcript, quality, redactions,
    compliance report) get the call's remaining retention."""
    await store.call_started(SID, stream_sid="MZ" + "1" * 32, tracks=["inbound"], started_at=time.time())
    await store.call_ended(SID, ended_at=time.time(), reason="stop")
    await store.client.expire(store.keys.call(SID), 600)  # most of the retention has passed
    await store.save_batch_result(*_batch(SID))
    await store.save_redactions(SID, [])
    assert await store.save_compliance(_report(SID))
    for key in (store.keys.batch_transcript(SID), store.keys.quality(SID), store.keys.redactions(SID),
                store.keys.compliance(SID)):  # fmt: skip
        assert 0 < await store.client.ttl(key) <= 600
    for key in store.keys.call_keys(SID):
        assert await store.client.ttl(key) in (-2, *range(1, store.retention_seconds + 1))  # absent, or expiring


async def test_a_document_saved_after_the_end_expires_with_the_call_unless_erased(store: Store) -> None:
    """What the compliance report uses: the call's remaining retention, and the tombstone check."""
    await store.call_started(OTHER, stream_sid="MZ" + "1" * 32, tracks=["inbound"], started_at=time.time())
    await store.call_ended(OTHER, ended_at=time.time(), reason="stop")
    await store.client.expire(store.keys.call(OTHER), 300)
    assert await store.save_call_documents(OTHER, {store.keys.compliance(OTHER): b"{}"})
    assert 0 < await store.client.ttl(store.keys.compliance(OTHER)) <= 300
    await store.delete_call(SID)
    assert not await store.save_call_documents(SID, {store.keys.compliance(SID): b"{}"})
    assert await store.client.exists(store.keys.compliance(SID)) == 0
