"""The compliance transcript in Redis, and how far the live transcript strayed from it.

The batch transcript ("after the fact") is kept beside the live one ("as heard"). The word error
rate of the live finals against it, per track and pooled over the call, is a quality signal for the
live path; a call above the threshold is flagged (``Keys.flagged_calls``, scored by WER) so someone
can look at it. Both documents share the call's retention TTL (transcripts are personal data).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from bridge.batch import BatchTranscript, transcript_decoder, transcript_encoder
from bridge.events import Final
from bridge.keys import Keys
from bridge.store import Store
from bridge.wer import WerResult, wer

logger = logging.getLogger(__name__)

DEFAULT_WER_THRESHOLD = 0.35


class TrackQuality(msgspec.Struct, kw_only=True):
    """Live vs batch on one track; the batch transcript is the reference."""

    track: str
    wer: float
    ref_words: int
    hyp_words: int
    substitutions: int
    deletions: int
    insertions: int


class CallQuality(msgspec.Struct, kw_only=True):
    """The call's live-vs-batch WER (``wer`` is ``None`` when there was no live transcript to judge)."""

    call_sid: str
    wer: float | None
    tracks: list[TrackQuality]
    flagged: bool
    threshold: float
    live_finals: int
    batch_engine: str = ""
    batch_model: str = ""
    computed_at: float = 0.0


_quality_encoder = msgspec.json.Encoder()
_quality_decoder = msgspec.json.Decoder(CallQuality)


def _track_quality(track: str, r: WerResult) -> TrackQuality:
    return TrackQuality(
        track=track,
        wer=round(r.rate, 4),
        ref_words=r.ref_words,
        hyp_words=r.hyp_words,
        substitutions=r.substitutions,
        deletions=r.deletions,
        insertions=r.insertions,
    )


def compute_quality(
    call_sid: str,
    live: Sequence[Final],
    batch: BatchTranscript,
    *,
    threshold: float = DEFAULT_WER_THRESHOLD,
) -> CallQuality:
    """WER of the live finals (hypothesis) against the batch transcript (reference), per track."""
    tracks = list(dict.fromkeys([*batch.tracks, *(f.track for f in live)]))
    results: list[TrackQuality] = []
    pooled = WerResult(0, 0, 0, 0, 0)
    for track in tracks:
        live_text = " ".join(f.text for f in sorted(live, key=lambda f: f.start) if f.track == track)
        r = wer(batch.text(track), live_text)
        pooled = pooled + r
        results.append(_track_quality(track, r))
    overall = round(pooled.rate, 4) if live else None
    return CallQuality(
        call_sid=call_sid,
        wer=overall,
        tracks=results,
        flagged=overall is not None and overall > threshold,
        threshold=threshold,
        live_finals=len(live),
        batch_engine=batch.engine,
        batch_model=batch.model,
        computed_at=time.time(),
    )


async def live_finals(redis: aioredis.Redis, keys: Keys, call_sid: str) -> list[Final]:
    """The live transcript of the call, in audio order (through the store's own reader)."""
    return await Store(redis, prefix=keys.prefix, retention_seconds=0).transcript(call_sid)


async def _ttl(redis: aioredis.Redis, keys: Keys, call_sid: str, default: int) -> int:
    """The call's remaining retention when it has one (the call ended), else ``default``."""
    ttl = int(await redis.ttl(keys.call(call_sid)))
    return ttl if ttl > 0 else default


async def store_result(
    redis: aioredis.Redis,
    keys: Keys,
    transcript: BatchTranscript,
    quality: CallQuality,
    *,
    retention_seconds: int,
    ack_entry: str | None = None,
) -> None:
    """Store the batch transcript and its quality, and (same transaction) ack the job that made them.

    Writing is a plain overwrite of one key per call, so running a job twice stores one result.
    """
    sid = transcript.call_sid
    ttl = await _ttl(redis, keys, sid, retention_seconds)
    async with redis.pipeline(transaction=True) as tx:
        tx.set(keys.batch_transcript(sid), transcript_encoder.encode(transcript), ex=ttl)
        tx.set(keys.quality(sid), _quality_encoder.encode(quality), ex=ttl)
        if quality.flagged and quality.wer is not None:
            tx.zadd(keys.flagged_calls, {sid: quality.wer})
        else:
            tx.zrem(keys.flagged_calls, sid)
        if ack_entry is not None:
            tx.xack(keys.recordings, keys.recordings_group, ack_entry)
            tx.hdel(keys.recordings_attempts, ack_entry)
            tx.zrem(keys.recordings_retry, ack_entry)
        await tx.execute()


async def get_batch_transcript(redis: aioredis.Redis, keys: Keys, call_sid: str) -> BatchTranscript | None:
    """The call's compliance transcript, or ``None`` when the batch pass has not stored one."""
    raw = await redis.get(keys.batch_transcript(call_sid))
    if raw is None:
        return None
    try:
        return transcript_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        logger.error("stored batch transcript is unreadable", extra={"call_sid": call_sid})
        return None


async def get_quality(redis: aioredis.Redis, keys: Keys, call_sid: str) -> CallQuality | None:
    """The call's live-vs-batch WER document, or ``None``."""
    raw = await redis.get(keys.quality(call_sid))
    if raw is None:
        return None
    try:
        return _quality_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        logger.error("stored call quality is unreadable", extra={"call_sid": call_sid})
        return None


async def flagged_calls(redis: aioredis.Redis, keys: Keys, *, limit: int = 100) -> list[tuple[str, float]]:
    """Flagged calls, worst WER first: ``[(call_sid, wer), …]``."""
    rows: Any = await redis.zrevrange(keys.flagged_calls, 0, max(0, limit - 1), withscores=True)
    return [(k.decode() if isinstance(k, bytes) else str(k), float(score)) for k, score in rows]


def encode_transcript(transcript: BatchTranscript) -> bytes:
    """The JSON of the ``GET /calls/{sid}/transcript?source=batch`` body."""
    return transcript_encoder.encode(transcript)


__all__ = [
    "DEFAULT_WER_THRESHOLD",
    "CallQuality",
    "TrackQuality",
    "compute_quality",
    "encode_transcript",
    "flagged_calls",
    "get_batch_transcript",
    "get_quality",
    "live_finals",
    "store_result",
]
