"""``bridge batch DIR|FILES…``: transcribe recordings offline in bulk (backfills), with a progress bar.

Each recording gets a ``.batch.json`` beside it (or in ``--out``), the same document the worker stores.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge.audio import WavError, read_wav
from bridge.batch.engine import make_engine, transcribe_recording
from bridge.redact.batch import redact_transcript
from bridge.settings import Settings, SettingsError
from bridge.transcripts import BatchEngine, EngineError, json_path, write_json


def _collect(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*.wav") if f.is_file())
        else:
            files.append(p)
    return files


def _wav_seconds(path: Path) -> float:
    """Duration from the header alone (for the progress bar's totals); 0 when unreadable."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
        size = path.stat().st_size
    except OSError:
        return 0.0
    i = head.find(b"fmt ")
    if i < 0 or len(head) < i + 24:
        return 0.0
    _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", head[i + 8 : i + 24])
    rate_bytes = max(1, int(channels) * max(1, int(bits) // 8) * int(rate))
    return max(0.0, (size - 58) / rate_bytes)


def _hms(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """A one-line progress bar on stderr: files, audio hours, speed and ETA."""

    def __init__(self, total_files: int, total_audio: float, stream: Any = None) -> None:
        self.total_files = total_files
        self.total_audio = total_audio
        self.files = 0
        self.audio = 0.0
        self.started = time.perf_counter()
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, audio_seconds: float, name: str = "") -> None:
        self.files += 1
        self.audio += audio_seconds
        elapsed = time.perf_counter() - self.started
        speed = self.audio / elapsed if elapsed > 0 else 0.0
        eta = (self.total_audio - self.audio) / speed if speed > 0 else 0.0
        frac = self.files / self.total_files if self.total_files else 1.0
        bar = "#" * int(frac * 24)
        line = (
            f"[{bar:<24}] {self.files}/{self.total_files} files  "
            f"{self.audio / 3600:.3f}/{self.total_audio / 3600:.3f} audio h  "
            f"{speed:.1f}x real time  ETA {_hms(eta)}  {name}"
        )
        end = "" if self.tty and self.files < self.total_files else "\n"
        self.stream.write(("\r\x1b[K" if self.tty else "") + line + end)
        self.stream.flush()


async def _run_batch(
    engine: BatchEngine, files: list[Path], out: str | None, stream: Any, redact: tuple[str, ...] = ("card",)
) -> int:
    progress = Progress(len(files), sum(_wav_seconds(f) for f in files), stream)
    failures = 0
    for f in files:
        try:
            rec = read_wav(f)
            transcript = await transcribe_recording(engine, rec, call_sid=f.stem, path=str(f))
            transcript, _ = redact_transcript(transcript, frozenset(redact))  # BRIDGE_REDACT, as the worker
            write_json(transcript, json_path(f, out))
            seconds = rec.duration
        except (WavError, EngineError, OSError) as exc:
            failures += 1
            seconds = 0.0
            stream.write(("\n" if progress.tty else "") + f"error: {exc}\n")
        progress.update(seconds, f.name)
    return 1 if failures else 0




def main(args: argparse.Namespace) -> int:
    """Exit 1 if any file failed, 2 when there is nothing to do or no engine."""
    files = _collect(args.inputs)
    if not files:
        print("bridge batch: no WAV files given", file=sys.stderr)
        return 2
    try:
        engine = make_engine(args.engine, model=args.model if args.engine == "whisper" else "",
                             api_key=args.api_key, base_url=args.base_url, cpu_threads=args.threads)  # fmt: skip
    except Exception as exc:
        print(f"bridge batch: {exc}", file=sys.stderr)
        return 2
    try:
        redact = Settings.from_env().redact
    except SettingsError as exc:
        print(f"bridge batch: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run_batch(engine, files, args.out, sys.stderr, redact))


__all__ = ["Progress", "main"]
