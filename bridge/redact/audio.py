"""Silencing spans of one channel of a recording, leaving every other byte of the file as it was.

The recording is rewritten next to itself and swapped in with one rename, so a reader sees the old
file or the new one, never half of each. Each span is overwritten with the encoding's silence (mu-law
``0xFF``, 16-bit PCM zero) on the channel of the track that spoke it: the other party's channel and the
file's header stay byte-identical.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from bridge.audio import MULAW_SILENCE, WAVE_FORMAT_MULAW, WAVE_FORMAT_PCM, WavError, parse_wav
from bridge.transcripts import Redaction, tracks_for


def _data_offset(raw: bytes) -> int:
    """Where the ``data`` chunk's samples start (the file is known to parse)."""
    pos = 12
    while pos + 8 <= len(raw):
        (size,) = struct.unpack_from("<I", raw, pos + 4)
        if raw[pos : pos + 4] == b"data":
            return pos + 8
        pos += 8 + size + (size & 1)
    raise WavError("no data chunk")


def silence_spans(raw: bytes, spans: list[Redaction], tracks: list[str]) -> tuple[bytes, float]:
    """``raw`` (a WAV file) with ``spans`` silenced on their track's channel; and the seconds silenced.

    Spans of a track the recording does not have are skipped (a mono recording is the caller's only).
    """
    wav = parse_wav(raw)
    width = max(1, wav.bits_per_sample // 8)
    if wav.format_tag == WAVE_FORMAT_MULAW and width == 1:
        quiet = bytes([MULAW_SILENCE])
    elif wav.format_tag == WAVE_FORMAT_PCM and width == 2:
        quiet = b"\x00\x00"
    elif wav.format_tag == WAVE_FORMAT_PCM and width == 1:
        quiet = b"\x80"
    else:
        raise WavError(f"cannot silence format tag {wav.format_tag} at {wav.bits_per_sample} bits")
    channel_of = {t: i for i, t in enumerate(tracks_for(wav.channels, tracks))}
    offset = _data_offset(raw)
    frames = wav.frames
    out = bytearray(raw)
    block = np.frombuffer(memoryview(out)[offset : offset + frames * wav.frame_bytes], dtype=np.uint8)
    samples = block.reshape(frames, wav.channels, width)
    pattern = np.frombuffer(quiet, dtype=np.uint8)
    silenced = 0.0
    for span in spans:
        channel = channel_of.get(span.track)
        if channel is None:
            continue
        first = max(0, int(span.start * wav.sample_rate))
        last = min(frames, int(np.ceil(span.end * wav.sample_rate)))
        if last > first:
            samples[first:last, channel, :] = pattern
            silenced += (last - first) / wav.sample_rate
    return bytes(out), silenced


def redact_file(path: Path, spans: list[Redaction], tracks: list[str], *, keep_original: bool) -> float:
    """Silence ``spans`` in the recording at ``path`` in place; seconds silenced.

    ``keep_original`` keeps the unredacted file as ``<name>.unredacted.wav`` (tests, audits of the
    redaction itself); otherwise it is gone once the redacted one replaces it.
    """
    raw = path.read_bytes()
    redacted, seconds = silence_spans(raw, spans, tracks)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.redacting")
    tmp.write_bytes(redacted)
    if keep_original:
        original = unredacted_path(path)
        if not original.exists():
            os.link(path, original)
    os.replace(tmp, path)
    return seconds


def wav_seconds(path: Path) -> float:
    """A WAV file's duration from its header and size (the samples are not read)."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    wav = parse_wav(head, path.name)
    return (path.stat().st_size - _data_offset(head)) / max(1, wav.frame_bytes) / wav.sample_rate


def unredacted_path(path: Path) -> Path:
    """Where ``BRIDGE_KEEP_UNREDACTED=true`` keeps a recording's original."""
    return path.with_name(f"{path.stem}.unredacted{path.suffix}")


__all__ = ["redact_file", "silence_spans", "unredacted_path", "wav_seconds"]
