"""How far the live transcript strayed from the batch one: the quality signal of the live path.

The batch transcript ("after the fact") is the reference; the live finals ("as heard") are the
hypothesis. The word error rate, per track and pooled over the call, is stored beside both; a call
above the threshold is flagged so someone can look at it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from bridge.events import Final
from bridge.transcripts import BatchTranscript, CallQuality, TrackQuality
from bridge.wer import ZERO, WerResult, wer

DEFAULT_WER_THRESHOLD = 0.35


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
    pooled = ZERO
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


__all__ = ["DEFAULT_WER_THRESHOLD", "compute_quality"]
