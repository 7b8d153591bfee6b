"""Results of the batch pass: the compliance transcript, its quality figures, the flagged calls.

One key per call and document, overwritten as a whole, so a job that runs twice stores one result.
Both share the call's retention TTL (transcripts are personal data).

The result, the flagged index and the job's ack live in three cluster slots (see
:mod:`bridge.store.keys`), so they are written in that order, not in one transaction: the index
first (it is only a pointer), then the result, then the ack. A worker that dies in between leaves
the job pending; whoever takes it over finds the result tagged with the job's key and only acks.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import msgspec

from bridge import transcripts
from bridge.store.client import text
from bridge.store.deletion import CallDeletion
from bridge.store.jobs import JobQueue
from bridge.transcripts import BatchTranscript, CallQuality, Redaction

logger = logging.getLogger(__name__)


_redactions_encoder = msgspec.json.Encoder()
_redactions_decoder: msgspec.json.Decoder[list[Redaction]] = msgspec.json.Decoder(list[Redaction])


class BatchResults(CallDeletion):
    """What the batch worker stores and the API reads back."""

    @functools.cached_property
    def jobs(self) -> JobQueue:
        """The recording jobs queue."""
        return JobQueue(self.client, self.keys)

    async def save_batch_result(
        self, transcript: BatchTranscript, quality: CallQuality, *, ack_entry: str | None = None
    ) -> bool:
        """Store the batch transcript and its quality, then ack the job that made them (see above).

        ``False`` when the call was erased meanwhile: nothing is stored (the job is acked all the same).
        """
        sid = transcript.call_sid
        k = self.keys
        ttl = await self._ttl(sid)
        if quality.flagged and quality.wer is not None:
            await self.client.zadd(k.flagged_calls, {sid: quality.wer})
        else:
            await self.client.zrem(k.flagged_calls, sid)
        documents: dict[str, bytes | str] = {
            k.batch_transcript(sid): transcripts.encode(transcript),
            k.quality(sid): transcripts.encode(quality),
        }
        stored = await self.set_call_documents(sid, documents, ttl)
        if not stored:
            await self.client.zrem(k.flagged_calls, sid)
            logger.warning("batch result of an erased call discarded", extra={"call_sid": sid})
        if ack_entry is not None:
            await self.jobs.ack(ack_entry)
        return stored

    async def batch_transcript(self, call_sid: str) -> BatchTranscript | None:
        """The call's compliance transcript, or ``None`` when the batch pass has not stored one."""
        raw = await self.client.get(self.keys.batch_transcript(call_sid))
        if raw is None:
            return None
        try:
            return transcripts.decode_transcript(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.error("stored batch transcript is unreadable", extra={"call_sid": call_sid})
            return None

    async def save_redactions(self, call_sid: str, redactions: list[Redaction]) -> None:
        """Store the spans the batch pass masked and silenced (overwritten as a whole)."""
        ttl = await self._ttl(call_sid)
        doc = {self.keys.redactions(call_sid): _redactions_encoder.encode(redactions)}
        await self.set_call_documents(call_sid, doc, ttl)

    async def redactions(self, call_sid: str) -> list[Redaction] | None:
        """The spans the batch pass masked and silenced, or ``None`` before it ran."""
        raw = await self.client.get(self.keys.redactions(call_sid))
        if raw is None:
            return None
        try:
            return _redactions_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.error("stored redactions are unreadable", extra={"call_sid": call_sid})
            return None

    async def quality(self, call_sid: str) -> CallQuality | None:
        """The call's live-vs-batch WER document, or ``None``."""
        raw = await self.client.get(self.keys.quality(call_sid))
        if raw is None:
            return None
        try:
            return transcripts.decode_quality(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.error("stored call quality is unreadable", extra={"call_sid": call_sid})
            return None

    async def flagged_calls(self, *, limit: int = 100) -> list[tuple[str, float]]:
        """Flagged calls, worst WER first: ``[(call_sid, wer), …]``."""
        rows: Any = await self.client.zrevrange(self.keys.flagged_calls, 0, max(0, limit - 1), withscores=True)
        return [(text(k), float(score)) for k, score in rows]


__all__ = ["BatchResults"]
