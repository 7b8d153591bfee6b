"""Batch (compliance) transcription of call recordings, and the ``bridge batch`` bulk tool.

After the call there is no latency budget, so each channel is decoded with the most accurate
engine we have: embedded Whisper base through faster-whisper (beam 5, word timestamps, silero VAD
to skip the silence of the other party's turns), or Deepgram pre-recorded / ElevenLabs batch when
configured. Speakers come from channels (channel 0 = inbound = caller, channel 1 = outbound =
agent): exact for telephony, no diarisation guesswork.

The recordings are 8 kHz G.711 mu-law WAV (format tag 7), which the stdlib ``wave`` refuses, so the
RIFF chunks are walked here; 16-bit PCM WAV is accepted as well.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec
import numpy as np

from bridge.events import SPEAKER, Word, final_id

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_MULAW = 7
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
TARGET_RATE = 16000
DEFAULT_TRACKS = ("inbound", "outbound")
#: Longest recording accepted (a bogus header must not make us allocate gigabytes).
MAX_SECONDS = 6 * 3600


class BadRecording(ValueError):
    """The file is not a recording we can decode; ``str(exc)`` says why."""


class EngineError(RuntimeError):
    """The engine failed on a good recording (HTTP error, unparseable response, model failure)."""


# -- audio -------------------------------------------------------------------------------------


def _mulaw_table() -> np.ndarray:
    """G.711 mu-law byte -> float in [-1, 1) (the standard expansion, 14-bit magnitude)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(sign != 0, -magnitude, magnitude) / 32768.0).astype(np.float32)


_MULAW = _mulaw_table()


class Recording:
    """A parsed WAV recording: the file bytes (for HTTP engines) and its de-interleaved channels."""

    def __init__(self, raw: bytes, format_tag: int, channels: int, sample_rate: int, samples: np.ndarray) -> None:
        self.raw = raw
        self.format_tag = format_tag
        self.channels = channels
        self.sample_rate = sample_rate
        #: float32 samples in [-1, 1), shape (frames, channels), at ``sample_rate``.
        self.samples = samples

    @property
    def duration(self) -> float:
        return float(self.samples.shape[0] / self.sample_rate)

    def channel_16k(self, index: int) -> np.ndarray:
        """One channel resampled to 16 kHz (what Whisper takes)."""
        x = np.ascontiguousarray(self.samples[:, index])
        if self.sample_rate == TARGET_RATE or x.size == 0:
            return x
        n_out = round(x.size * TARGET_RATE / self.sample_rate)
        # Linear interpolation: telephone audio has nothing above 4 kHz for a better filter to keep.
        t = np.arange(n_out, dtype=np.float64) * (self.sample_rate / TARGET_RATE)
        out: np.ndarray = np.interp(t, np.arange(x.size), x).astype(np.float32)
        return out


def parse_wav(raw: bytes, name: str = "recording") -> Recording:
    """Parse RIFF/WAVE mu-law or 16-bit PCM bytes; raises :class:`BadRecording` on anything else."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise BadRecording(f"{name}: not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    data: bytes | None = None
    while pos + 8 <= len(raw):
        cid = raw[pos : pos + 4]
        (size,) = struct.unpack("<I", raw[pos + 4 : pos + 8])
        body = raw[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise BadRecording(f"{name}: fmt chunk too short")
            tag, ch, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                (tag,) = struct.unpack("<H", body[24:26])
            fmt = (tag, ch, rate, bits)
        elif cid == b"data":
            data = body  # a streaming writer may leave size short/long: take what is there
            break
        pos += 8 + size + (size & 1)
    if fmt is None or data is None:
        raise BadRecording(f"{name}: missing fmt or data chunk")
    tag, channels, rate, bits = fmt
    if channels not in (1, 2):
        raise BadRecording(f"{name}: {channels} channels (1 or 2 supported)")
    if not 4000 <= rate <= 48000:
        raise BadRecording(f"{name}: sample rate {rate} Hz")
    if tag == WAVE_FORMAT_MULAW and bits == 8:
        frames = len(data) // channels
        codes = np.frombuffer(data, dtype=np.uint8, count=frames * channels)
        samples = _MULAW[codes]
    elif tag == WAVE_FORMAT_PCM and bits == 16:
        frames = len(data) // (2 * channels)
        samples = np.frombuffer(data, dtype="<i2", count=frames * channels).astype(np.float32) / 32768.0
    else:
        raise BadRecording(f"{name}: unsupported encoding (format tag {tag}, {bits} bits)")
    if frames / rate > MAX_SECONDS:
        raise BadRecording(f"{name}: longer than {MAX_SECONDS} s")
    return Recording(raw, tag, channels, rate, samples.reshape(frames, channels))


def read_recording(path: str | os.PathLike[str]) -> Recording:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BadRecording(f"{path}: {exc.strerror or exc}") from None
    return parse_wav(raw, str(path))


def tracks_for(channels: int, tracks: Sequence[str] = ()) -> list[str]:
    """Track of each channel: the job's list when it fits, else caller first, agent second."""
    if len(tracks) >= channels:
        return list(tracks[:channels])
    return list(DEFAULT_TRACKS[:channels])


# -- results ----------------------------------------------------------------------------------


class Utterance(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One speaker turn of the compliance transcript; times in seconds from the recording start."""

    id: str
    track: str
    channel: int
    speaker: str
    start: float
    end: float
    text: str
    confidence: float = 0.0
    words: list[Word] = msgspec.field(default_factory=list)


class BatchTranscript(msgspec.Struct, kw_only=True):
    """The compliance transcript of one recording (Redis value and ``.batch.json`` file)."""

    call_sid: str
    engine: str
    model: str
    duration: float
    channels: int
    tracks: list[str]
    utterances: list[Utterance]
    #: Where the audio came from (local path) and which job identity produced it (idempotence).
    recording: str = ""
    job_key: str = ""
    created_at: float = 0.0
    processing_seconds: float = 0.0

    def text(self, track: str) -> str:
        return " ".join(u.text for u in self.utterances if u.track == track and u.text)


transcript_encoder = msgspec.json.Encoder()
transcript_decoder = msgspec.json.Decoder(BatchTranscript)


def _utterance(track: str, channel: int, words: list[Word], text: str, confidence: float) -> Utterance:
    start = words[0].start if words else 0.0
    end = words[-1].end if words else start
    return Utterance(
        id=final_id(track, start),
        track=track,
        channel=channel,
        speaker=SPEAKER.get(track, track),
        start=round(start, 3),
        end=round(end, 3),
        text=text.strip(),
        confidence=round(confidence, 4),
        words=words,
    )


def _plain(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum() or c in "'%$-.").strip(".-'")


def _split_at_gaps(words: list[Word], gap: float) -> list[list[Word]]:
    """Cut a word sequence wherever the silence between two words is longer than ``gap``."""
    groups: list[list[Word]] = []
    for w in words:
        if groups and w.start - groups[-1][-1].end <= gap:
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


def _sorted(utterances: list[Utterance]) -> list[Utterance]:
    return sorted(utterances, key=lambda u: (u.start, u.channel, u.end))


# -- engines ----------------------------------------------------------------------------------


class BatchEngine(Protocol):
    """Transcribes a whole recording, every channel, into speaker-labelled utterances."""

    name: str
    model: str

    async def transcribe(self, recording: Recording, tracks: Sequence[str]) -> list[Utterance]: ...


class WhisperBatchEngine:
    """Embedded Whisper via faster-whisper; the weights come from registry packages (no network)."""

    name = "whisper"

    def __init__(
        self,
        model: str = "base",
        *,
        beam_size: int = 5,
        compute_type: str = "int8",
        cpu_threads: int = 0,
        vad: bool = True,
        turn_gap: float = 1.0,
        chunk_seconds: int | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        from bridge.embedded.engine import ModelLoadError, resolve_model

        # resolve_model joins the two base parts in memory and checks the sha256 of model.bin.
        path, files = resolve_model(model)
        self.model = model
        self.beam_size = beam_size
        self.vad = vad
        self.turn_gap = turn_gap
        # Encoder window (None: faster-whisper's 30 s). A 10 s window measured no faster end-to-end here
        # and a little less accurate (docs/benchmarks.md "## Batch"), so the default stays.
        self.chunk_seconds = chunk_seconds
        self.cpu_threads = cpu_threads or (os.cpu_count() or 1)
        try:
            self._whisper = WhisperModel(
                path,
                device="cpu",
                compute_type=compute_type,
                cpu_threads=self.cpu_threads,
                num_workers=1,
                local_files_only=True,
                files=files,
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load whisper model {model!r}: {exc}") from exc
        self._multilingual = bool(self._whisper.model.is_multilingual)
        self._lock = threading.Lock()

    def transcribe_channel(self, audio: np.ndarray, track: str, channel: int) -> list[Utterance]:
        """Blocking decode of one 16 kHz channel (one at a time: the model uses every core we gave it)."""
        if audio.size < TARGET_RATE // 10:
            return []
        with self._lock:
            segments, _ = self._whisper.transcribe(
                audio,
                language="en" if self._multilingual else None,
                beam_size=self.beam_size,
                word_timestamps=True,
                vad_filter=self.vad,
                vad_parameters={"min_silence_duration_ms": 500, "speech_pad_ms": 200} if self.vad else None,
                condition_on_previous_text=False,
                chunk_length=self.chunk_seconds,
            )
            out: list[Utterance] = []
            for seg in segments:
                words = [
                    Word(
                        word=_plain(w.word) or w.word.strip(),
                        start=round(float(w.start), 3),
                        end=round(float(w.end), 3),
                        confidence=round(float(w.probability), 4),
                        punctuated_word=w.word.strip(),
                    )
                    for w in (seg.words or [])
                    if w.word.strip()
                ]
                text = seg.text.strip()
                if not text:
                    continue
                conf = float(np.exp(min(0.0, seg.avg_logprob)))
                if not words:
                    utt = _utterance(track, channel, words, text, conf)
                    out.append(msgspec.structs.replace(utt, start=round(seg.start, 3), end=round(seg.end, 3)))
                    continue
                # VAD glues speech chunks together, so one segment can span the other party's turn.
                for group in _split_at_gaps(words, self.turn_gap):
                    group_text = " ".join(w.punctuated_word or w.word for w in group)
                    out.append(_utterance(track, channel, group, group_text, conf))
        return out

    async def transcribe(self, recording: Recording, tracks: Sequence[str]) -> list[Utterance]:
        out: list[Utterance] = []
        for ch, track in enumerate(tracks_for(recording.channels, tracks)):
            audio = recording.channel_16k(ch)
            out += await asyncio.to_thread(self.transcribe_channel, audio, track, ch)
        return _sorted(out)


# Deepgram pre-recorded response (PROTOCOLS.md §4.1): only the fields we read.
class _DgWord(msgspec.Struct):
    word: str
    start: float
    end: float
    confidence: float = 0.0
    punctuated_word: str | None = None


class _DgAlternative(msgspec.Struct):
    transcript: str = ""
    confidence: float = 0.0
    words: list[_DgWord] = msgspec.field(default_factory=list)


class _DgChannel(msgspec.Struct):
    alternatives: list[_DgAlternative] = msgspec.field(default_factory=list)


class _DgUtterance(msgspec.Struct):
    start: float
    end: float
    transcript: str
    channel: int = 0
    confidence: float = 0.0
    words: list[_DgWord] = msgspec.field(default_factory=list)


class _DgResults(msgspec.Struct):
    channels: list[_DgChannel] = msgspec.field(default_factory=list)
    utterances: list[_DgUtterance] | None = None


class _DgResponse(msgspec.Struct):
    results: _DgResults


def _dg_words(words: list[_DgWord]) -> list[Word]:
    return [
        Word(word=w.word, start=w.start, end=w.end, confidence=w.confidence, punctuated_word=w.punctuated_word)
        for w in words
    ]


class _HttpEngine:
    name = "http"
    model = ""

    def __init__(self, base_url: str, api_key: str, *, timeout: float, client: httpx.AsyncClient | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._client = client

    async def _post(self, path: str, **kwargs: Any) -> bytes:
        client = self._client or httpx.AsyncClient(timeout=self.timeout)
        try:
            resp = await client.post(self.base_url + path, timeout=self.timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise EngineError(f"{self.name}: {type(exc).__name__}: {exc}") from None
        finally:
            if self._client is None:
                await client.aclose()
        if resp.status_code != 200:
            raise EngineError(f"{self.name}: HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.content


class DeepgramBatchEngine(_HttpEngine):
    """Deepgram pre-recorded ``POST /v1/listen`` with one transcript per channel (``multichannel``)."""

    name = "deepgram"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.deepgram.com",
        model: str = "nova-3",
        timeout: float = 600.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, client=client)
        self.model = model

    async def transcribe(self, recording: Recording, tracks: Sequence[str]) -> list[Utterance]:
        names = tracks_for(recording.channels, tracks)
        params = {
            "model": self.model, "multichannel": "true", "utterances": "true",
            "punctuate": "true", "smart_format": "true", "language": "en",
        }  # fmt: skip
        body = await self._post(
            "/v1/listen",
            params=params,
            content=recording.raw,
            headers={"Authorization": f"Token {self.api_key}", "Content-Type": "audio/wav"},
        )
        try:
            resp = msgspec.json.decode(body, type=_DgResponse)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EngineError(f"deepgram: unexpected response: {exc}") from None
        out: list[Utterance] = []
        if resp.results.utterances is not None:
            for u in resp.results.utterances:
                if 0 <= u.channel < len(names) and u.transcript.strip():
                    out.append(_utterance(names[u.channel], u.channel, _dg_words(u.words), u.transcript, u.confidence))
        else:  # no utterances: one utterance per channel from its best alternative
            for ch, c in enumerate(resp.results.channels[: len(names)]):
                if c.alternatives and c.alternatives[0].transcript.strip():
                    alt = c.alternatives[0]
                    out.append(_utterance(names[ch], ch, _dg_words(alt.words), alt.transcript, alt.confidence))
        return _sorted(out)


# ElevenLabs Scribe batch response (PROTOCOLS.md §4.2).
class _ElWord(msgspec.Struct):
    text: str
    start: float | None = None
    end: float | None = None
    type: str = "word"
    logprob: float | None = None
    channel_index: int | None = None


class _ElChunk(msgspec.Struct):
    text: str = ""
    words: list[_ElWord] = msgspec.field(default_factory=list)
    channel_index: int | None = None


class _ElResponse(msgspec.Struct):
    text: str | None = None
    words: list[_ElWord] | None = None
    channel_index: int | None = None
    transcripts: list[_ElChunk] | None = None


_SENTENCE_END = (".", "?", "!")


def _el_utterances(track: str, channel: int, words: list[_ElWord], gap: float) -> list[Utterance]:
    """Split a channel's word stream into turns at long pauses and sentence ends."""
    out: list[Utterance] = []
    cur: list[Word] = []
    confs: list[float] = []

    def close() -> None:
        if cur:
            text = " ".join(w.punctuated_word or w.word for w in cur)
            out.append(_utterance(track, channel, list(cur), text, sum(confs) / len(confs)))
            cur.clear()
            confs.clear()

    for w in words:
        if w.type != "word" or w.start is None or not w.text.strip():
            continue
        if cur and w.start - cur[-1].end > gap:
            close()
        conf = float(np.exp(min(0.0, w.logprob))) if w.logprob is not None else 0.0
        token = w.text.strip()
        cur.append(Word(word=_plain(token) or token, start=w.start, end=w.end or w.start, confidence=conf,
                        punctuated_word=token))  # fmt: skip
        confs.append(conf)
        if token.endswith(_SENTENCE_END) and gap > 0:
            close()
    close()
    return out


class ElevenLabsBatchEngine(_HttpEngine):
    """ElevenLabs Scribe ``POST /v1/speech-to-text`` (multipart), one transcript per channel."""

    name = "elevenlabs"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.elevenlabs.io",
        model: str = "scribe_v2",
        timeout: float = 600.0,
        turn_gap: float = 1.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, client=client)
        self.model = model
        self.turn_gap = turn_gap

    async def transcribe(self, recording: Recording, tracks: Sequence[str]) -> list[Utterance]:
        names = tracks_for(recording.channels, tracks)
        data = {"model_id": self.model, "timestamps_granularity": "word", "language_code": "en",
                "tag_audio_events": "false", "diarize": "false"}  # fmt: skip
        if recording.channels > 1:
            data["use_multi_channel"] = "true"
        body = await self._post(
            "/v1/speech-to-text",
            data=data,
            files={"file": ("recording.wav", recording.raw, "audio/wav")},
            headers={"xi-api-key": self.api_key},
        )
        try:
            resp = msgspec.json.decode(body, type=_ElResponse)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EngineError(f"elevenlabs: unexpected response: {exc}") from None
        chunks = resp.transcripts or [_ElChunk(text=resp.text or "", words=resp.words or [],
                                               channel_index=resp.channel_index)]  # fmt: skip
        out: list[Utterance] = []
        for i, chunk in enumerate(chunks):
            by_channel: dict[int, list[_ElWord]] = {}
            for w in chunk.words:
                ch = w.channel_index if w.channel_index is not None else (chunk.channel_index or i)
                by_channel.setdefault(ch, []).append(w)
            for ch, words in by_channel.items():
                if 0 <= ch < len(names):
                    out += _el_utterances(names[ch], ch, words, self.turn_gap)
        return _sorted(out)


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
        return WhisperBatchEngine(model or "base", cpu_threads=cpu_threads)
    if kind == "deepgram":
        return DeepgramBatchEngine(api_key, model=model or "nova-3", base_url=base_url or "https://api.deepgram.com")
    if kind == "elevenlabs":
        return ElevenLabsBatchEngine(
            api_key, model=model or "scribe_v2", base_url=base_url or "https://api.elevenlabs.io"
        )
    raise ValueError(f"unknown batch engine {kind!r} (whisper, deepgram, elevenlabs)")


async def transcribe_recording(
    engine: BatchEngine,
    recording: Recording,
    *,
    call_sid: str,
    tracks: Sequence[str] = (),
    path: str = "",
    job_key: str = "",
) -> BatchTranscript:
    """Run ``engine`` over a parsed recording and wrap the result."""
    began = time.perf_counter()
    utterances = await engine.transcribe(recording, tracks)
    return BatchTranscript(
        call_sid=call_sid,
        engine=engine.name,
        model=engine.model,
        duration=round(recording.duration, 3),
        channels=recording.channels,
        tracks=tracks_for(recording.channels, tracks),
        utterances=utterances,
        recording=path,
        job_key=job_key,
        created_at=time.time(),
        processing_seconds=round(time.perf_counter() - began, 3),
    )


def batch_json_path(recording_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """``call.wav`` -> ``call.batch.json`` beside it (or in ``out_dir``)."""
    p = Path(recording_path)
    target = p.with_suffix(".batch.json")
    return Path(out_dir) / target.name if out_dir is not None else target


def write_json(transcript: BatchTranscript, path: Path) -> None:
    """Write atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.format(transcript_encoder.encode(transcript), indent=1))
    os.replace(tmp, path)


# -- the bulk tool ------------------------------------------------------------------------------


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


def _arg_parser(prog: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Transcribe call recordings offline (compliance pass).")
    ap.add_argument("inputs", nargs="*", help="WAV files or directories (searched for *.wav)")
    ap.add_argument("--model", default="base", help="whisper model: base (default) or tiny.en")
    ap.add_argument("--engine", default="whisper", choices=("whisper", "deepgram", "elevenlabs"))
    ap.add_argument("--api-key", default="", help="API key of deepgram/elevenlabs")
    ap.add_argument("--base-url", default="", help="API base URL of deepgram/elevenlabs")
    ap.add_argument("--out", default=None, help="directory for the .batch.json files (default: beside each file)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for whisper (default: all cores)")
    ap.add_argument("--bench", action="store_true", help="benchmark on the fixtures instead (bench_main options)")
    return ap


async def _run_batch(engine: BatchEngine, files: list[Path], out: str | None, stream: Any) -> int:
    progress = Progress(len(files), sum(_wav_seconds(f) for f in files), stream)
    failures = 0
    for f in files:
        try:
            rec = read_recording(f)
            transcript = await transcribe_recording(engine, rec, call_sid=f.stem, path=str(f))
            write_json(transcript, batch_json_path(f, out))
            seconds = rec.duration
        except (BadRecording, EngineError, OSError) as exc:
            failures += 1
            seconds = 0.0
            stream.write(("\n" if progress.tty else "") + f"error: {exc}\n")
        progress.update(seconds, f.name)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """``bridge batch DIR|FILES… [--model base|tiny.en] [--out DIR]``: exit 1 if any file failed."""
    if argv is not None and "--bench" in argv:
        return bench_main([a for a in argv if a != "--bench"])
    args = _arg_parser("bridge batch").parse_args(argv)
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
    return asyncio.run(_run_batch(engine, files, args.out, sys.stderr))


# -- benchmark ---------------------------------------------------------------------------------


def _fixture_pairs(root: Path) -> list[tuple[Path, dict[str, str]]]:
    """(wav, reference text per track) for fixtures/calls and fixtures/audio/clips."""
    pairs: list[tuple[Path, dict[str, str]]] = []
    for meta in sorted((root / "calls").glob("*.json")):
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


def bench_main(argv: list[str] | None = None) -> int:
    """Audio hours per wall hour (and per core) and WER of the batch engine on the fixtures."""
    from bridge.wer import WerResult, wer

    ap = argparse.ArgumentParser(prog="bridge batch --bench")
    ap.add_argument("--model", default="base")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--no-vad", action="store_true")
    ap.add_argument("--chunk", type=int, default=30, help="encoder window seconds (30 = faster-whisper default)")
    ap.add_argument("--fixtures", default="fixtures")
    args, _ = ap.parse_known_args(argv)
    engine = WhisperBatchEngine(
        args.model,
        beam_size=args.beam,
        cpu_threads=args.threads,
        vad=not args.no_vad,
        chunk_seconds=None if args.chunk == 30 else args.chunk,
    )
    pairs = _fixture_pairs(Path(args.fixtures))
    recs = [(read_recording(p), refs, p) for p, refs in pairs]
    total = WerResult(0, 0, 0, 0, 0)
    audio = 0.0

    async def go() -> None:
        nonlocal total, audio
        for rec, refs, p in recs:
            t = await transcribe_recording(engine, rec, call_sid=p.stem, tracks=list(refs) if rec.channels == 1 else ())
            audio += rec.duration
            for track, ref in refs.items():
                total = total + wer(ref, t.text(track))

    asyncio.run(go())  # warm-up run: model load, VAD session, allocator
    total, audio = WerResult(0, 0, 0, 0, 0), 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(go())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"model={args.model} beam={args.beam} vad={not args.no_vad} chunk={args.chunk}s threads={engine.cpu_threads} "
          f"files={len(recs)} audio={audio:.1f}s")  # fmt: skip
    per_core = audio / wall / engine.cpu_threads
    print(f"wall={wall:.2f}s cpu={cpu:.2f}s real-time x{audio / wall:.1f} (wall), "
          f"x{per_core:.1f} per core (wall/threads), x{audio / cpu:.1f} per CPU-second")  # fmt: skip
    print(f"WER={total.rate:.3f} ({total.errors}/{total.ref_words}: S={total.substitutions} "
          f"D={total.deletions} I={total.insertions})")  # fmt: skip
    return 0


__all__ = [
    "BadRecording",
    "BatchEngine",
    "BatchTranscript",
    "DeepgramBatchEngine",
    "ElevenLabsBatchEngine",
    "EngineError",
    "Recording",
    "Utterance",
    "WhisperBatchEngine",
    "batch_json_path",
    "bench_main",
    "main",
    "make_engine",
    "parse_wav",
    "read_recording",
    "tracks_for",
    "transcribe_recording",
    "write_json",
]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
