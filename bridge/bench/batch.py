"""``bridge bench batch``: audio hours per wall hour (and per core) and WER of the batch engine on the fixtures."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import msgspec

from bridge.audio import WAVE_FORMAT_MULAW, Wav, read_wav
from bridge.batch.engine import transcribe_recording
from bridge.batch.whisper import WhisperBatchEngine
from bridge.bench.common import call_fixture
from bridge.embedded.engine import LOOP_RETRY_PENALTY
from bridge.wer import ZERO, wer


def _fixture_pairs(root: Path) -> list[tuple[Path, dict[str, str]]]:
    """(wav, reference text per track) for fixtures/calls and fixtures/audio/clips."""
    pairs: list[tuple[Path, dict[str, str]]] = []
    metas = sorted((root / "calls").glob("*.json"))
    metas.append(call_fixture("support_call", root).with_suffix(".json"))
    for meta in dict.fromkeys(metas):
        doc = msgspec.json.decode(meta.read_bytes())
        refs: dict[str, str] = {}
        for turn in doc.get("turns", []):
            refs[turn["track"]] = (refs.get(turn["track"], "") + " " + turn["text"]).strip()
        pairs.append((meta.with_suffix(".wav"), refs))
    clips = root / "audio" / "clips.json"
    if clips.exists():
        for item in msgspec.json.decode(clips.read_bytes()):
            pairs.append((root / "audio" / item["file"], {"inbound": item["text"]}))
    return pairs


def _long_call(calls: list[tuple[Wav, dict[str, str]]], times: int) -> tuple[Wav, dict[str, str], Path]:
    """One long stereo recording (and its references) made of the fixture calls back to back, in memory.

    Real calls run minutes, not seconds; a long input shows the cost per audio hour once packing can
    fill whole windows.
    """
    parts = [r.data for _ in range(times) for r, _ in calls if r.format_tag == WAVE_FORMAT_MULAW]
    refs: dict[str, str] = {}
    for _ in range(times):
        for _, r in calls:
            for track, text in r.items():
                refs[track] = (refs.get(track, "") + " " + text).strip()
    return Wav(WAVE_FORMAT_MULAW, 2, 8000, 8, b"".join(parts)), refs, Path(f"long_call_x{times}.wav")


def main(args: argparse.Namespace) -> int:
    """Audio hours per wall hour (and per core) and WER of the batch engine on the fixtures."""
    engine = WhisperBatchEngine(
        args.model,
        beam_size=args.beam,
        cpu_threads=args.threads,
        workers=args.workers,
        vad=not args.no_vad,
        context_seconds=args.context,
        retry_penalty=1.0 if args.no_fallback else LOOP_RETRY_PENALTY,
    )
    pairs = _fixture_pairs(Path(args.fixtures))
    recs = [(read_wav(p), refs, p) for p, refs in pairs]
    if args.long > 0:
        recs = [_long_call([(r, refs) for r, refs, _ in recs if r.channels == 2], args.long)]
    total = ZERO
    audio = 0.0

    async def go() -> None:
        nonlocal total, audio
        for rec, refs, p in recs:
            t = await transcribe_recording(engine, rec, call_sid=p.stem, tracks=list(refs) if rec.channels == 1 else ())
            audio += rec.duration
            for track, ref in refs.items():
                total = total + wer(ref, t.text(track))

    asyncio.run(go())  # warm-up run: model load, VAD session, allocator
    total, audio = ZERO, 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(go())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"model={args.model} beam={args.beam} fallback={not args.no_fallback} vad={not args.no_vad} "
          f"context={engine.context_seconds:g}s threads={engine.cpu_threads} workers={engine.workers} "
          f"files={len(recs)} audio={audio:.1f}s")  # fmt: skip
    per_core = audio / wall / engine.cpu_threads
    print(f"wall={wall:.2f}s cpu={cpu:.2f}s real-time x{audio / wall:.1f} (wall), "
          f"x{per_core:.1f} per core (wall/threads), x{audio / cpu:.1f} per CPU-second")  # fmt: skip
    print(f"WER={total.rate:.3f} ({total.errors}/{total.ref_words}: S={total.substitutions} "
          f"D={total.deletions} I={total.insertions})")  # fmt: skip
    return 0
