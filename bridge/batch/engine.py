"""Choosing a batch engine, and running one over a recording."""

from __future__ import annotations

import time

from bridge.transcripts import BatchEngine, BatchTranscript, Recording, tracks_for


def make_engine(
    kind: str = "whisper",
    *,
    model: str = "",
    api_key: str = "",
    base_url: str = "",
    cpu_threads: int = 0,
) -> BatchEngine:
    """The engine for ``kind`` (``whisper``/``embedded``, ``deepgram``, ``elevenlabs``)."""
    if kind in ("whisper", "embedded"):
        from bridge.batch.whisper import WhisperBatchEngine

        return WhisperBatchEngine(model or "base", cpu_threads=cpu_threads)
    if kind == "deepgram":
        from bridge.recognizers.deepgram.batch import DeepgramBatchEngine

        return DeepgramBatchEngine(api_key, model=model or "nova-3", base_url=base_url or "https://api.deepgram.com")
    if kind == "elevenlabs":
        from bridge.recognizers.elevenlabs.batch import ElevenLabsBatchEngine

        return ElevenLabsBatchEngine(api_key, model=model or "scribe_v2", base_url=base_url or "https://api.elevenlabs.io")
    raise ValueError(f"unknown batch engine {kind!r} (whisper, deepgram, elevenlabs)")


async def transcribe_recording(
    engine: BatchEngine,
    recording: Recording,
    *,
    call_sid: str,
    tracks: list[str] | tuple[str, ...] = (),
    path: str = "",
    job_key: str = "",
) -> BatchTranscript:
    """Run ``engine`` over a parsed recording and wrap the result."""
    began = time.perf_counter()
    names = tracks_for(recording.channels, tracks)
    utterances = await engine.transcribe(recording, names)
    return BatchTranscript(
        call_sid=call_sid,
        engine=engine.name,
        model=engine.model,
        duration=round(recording.duration, 3),
        channels=recording.channels,
        tracks=names,
        utterances=utterances,
        recording=path,
        job_key=job_key,
        created_at=time.time(),
        processing_seconds=round(time.perf_counter() - began, 3),
    )


__all__ = ["make_engine", "transcribe_recording"]
