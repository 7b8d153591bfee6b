"""Batch (compliance) transcription of call recordings, and the ``bridge batch`` bulk tool.

After the call there is no latency budget, so each channel is decoded with the most accurate
engine we have: embedded Whisper base on CTranslate2 (beam 5, word timestamps; webrtcvad finds each
channel's speech and only that is decoded, packed into short encoder windows), or Deepgram
pre-recorded / ElevenLabs batch when
configured. Speakers come from channels (channel 0 = inbound = caller, channel 1 = outbound =
agent): exact for telephony, no diarisation guesswork.

The recordings are 8 kHz G.711 mu-law WAV (format tag 7), which the stdlib ``wave`` refuses, so the
RIFF chunks are walked here; 16-bit PCM WAV is accepted as well.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import math
import os
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

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
#: Generation budget per window: nobody says more tokens than this per second (a loop guard).
TOKENS_PER_SECOND = 10.0
TOKEN_SLACK = 10
#: Whisper's fallback thresholds: a decode that loops (gzip ratio) or is unsure (mean log-probability)
#: is retried warmer; one the model itself calls silence is dropped.
COMPRESSION_CEILING = 2.4
LOGPROB_FLOOR = -1.0
NO_SPEECH_PROB = 0.6


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


# Speech finding and window packing. A call channel is mostly silence (the other party's turns), and
# Whisper's encoder costs the same for silence as for speech, so only speech reaches the model: VAD
# finds it, and the speech of one channel is packed, with short silent seams, into windows that fill
# a short encoder context. Word times come back through the window's piece map.

VAD_FRAME_S = 0.03
#: Silence inside speech shorter than this does not end a speech span.
VAD_HANGOVER_S = 0.3
#: Voiced runs shorter than this are clicks or line noise, not speech.
VAD_MIN_SPEECH_S = 0.12
#: Audio kept either side of a span (word onsets and tails are quiet and VAD clips them).
VAD_PAD_S = 0.2
#: Silence put between two packed spans, so the model hears a pause and does not fuse words.
PACK_SEAM_S = 0.4
#: Silence left after the last span of a window (Whisper misses a final word that touches the end).
PACK_TAIL_S = 1.0


def speech_spans(audio: np.ndarray, rate: int = TARGET_RATE, aggressiveness: int = 2) -> list[tuple[float, float]]:
    """Speech of one channel as ``(start, end)`` seconds, padded and merged (webrtcvad, 30 ms frames)."""
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)
    n = int(rate * VAD_FRAME_S)
    frames = audio.size // n
    if frames == 0:
        return []
    pcm = (np.clip(audio[: frames * n], -1.0, 1.0) * 32767).astype("<i2").reshape(frames, n)
    voiced = [vad.is_speech(pcm[i].tobytes(), rate) for i in range(frames)]
    runs: list[list[int]] = []  # [first, last] voiced frame, gaps up to the hangover bridged
    hang = round(VAD_HANGOVER_S / VAD_FRAME_S)
    for i, v in enumerate(voiced):
        if not v:
            continue
        if runs and i - runs[-1][1] <= hang + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    total = audio.size / rate
    spans: list[tuple[float, float]] = []
    for first, last in runs:
        if (last - first + 1) * VAD_FRAME_S < VAD_MIN_SPEECH_S:
            continue
        start = max(0.0, first * VAD_FRAME_S - VAD_PAD_S)
        end = min(total, (last + 1) * VAD_FRAME_S + VAD_PAD_S)
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def _split_long(audio: np.ndarray, start: float, end: float, longest: float) -> list[tuple[float, float]]:
    """Cut a span longer than ``longest`` at its quietest 30 ms, late in each piece (rarely a word)."""
    out: list[tuple[float, float]] = []
    while end - start > longest:
        lo = int((start + longest * 0.6) * TARGET_RATE)
        hi = int((start + longest) * TARGET_RATE)
        n = int(VAD_FRAME_S * TARGET_RATE)
        seg = audio[lo:hi]
        k = seg.size // n
        if k == 0:
            cut = start + longest
        else:
            energy = (seg[: k * n].reshape(k, n) ** 2).sum(axis=1)
            cut = (lo + int(np.argmin(energy)) * n + n // 2) / TARGET_RATE
        out.append((start, cut))
        start = cut
    out.append((start, end))
    return out


class Piece(NamedTuple):
    """One span of the recording inside a packed window: where it sits there, and where it came from."""

    offset: float  # seconds from the window start
    start: float  # seconds from the recording start
    length: float


class Window(NamedTuple):
    pieces: list[Piece]

    @property
    def content(self) -> float:
        """Seconds of the window holding audio (the rest of the encoder context is padding)."""
        last = self.pieces[-1]
        return last.offset + last.length

    def audio(self, channel: np.ndarray) -> np.ndarray:
        """The window's 16 kHz samples: each piece copied to its offset, silence in the seams."""
        out = np.zeros(round(self.content * TARGET_RATE), dtype=np.float32)
        for p in self.pieces:
            a, n = round(p.start * TARGET_RATE), round(p.length * TARGET_RATE)
            o = round(p.offset * TARGET_RATE)
            chunk = channel[a : a + n]
            out[o : o + chunk.size] = chunk[: max(0, out.size - o)]
        return out

    def piece_at(self, t: float) -> Piece:
        """The piece holding window time ``t``; in a seam, the nearer of its two neighbours."""
        return min(self.pieces, key=lambda p: max(p.offset - t, t - p.offset - p.length, 0.0))

    def to_recording(self, t: float, piece: Piece | None = None) -> float:
        """Window time -> recording time, clamped into ``piece`` (default: the one at ``t``).

        Clamping a word's both ends into the piece of its midpoint keeps a word whose alignment
        spills over a seam from spanning the silence between two turns.
        """
        p = piece or self.piece_at(t)
        return p.start + min(max(t - p.offset, 0.0), p.length)


def pack_spans(
    spans: Sequence[tuple[float, float]], audio: np.ndarray, longest: float, seam: float = PACK_SEAM_S
) -> list[Window]:
    """Fill windows of at most ``longest`` seconds with speech spans, in recording order.

    Each window is one encoder pass, so fuller windows are cheaper. Spans stay in order and
    neighbours stay together: packing by size (first fit) made fewer windows but put unrelated
    turns side by side, and WER on the long bench call went from 5.7 % to 13 % (deleted turns).
    """
    windows: list[Window] = []
    pieces: list[Piece] = []
    used = 0.0
    for s, e in spans:
        for a, b in _split_long(audio, s, e, longest):
            length = b - a
            at = used + seam if pieces else 0.0
            if pieces and at + length > longest:
                windows.append(Window(pieces))
                pieces, at = [], 0.0
            pieces.append(Piece(at, a, length))
            used = at + length
    if pieces:
        windows.append(Window(pieces))
    return windows


class _Decoded(NamedTuple):
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression: float


class WhisperBatchEngine:
    """Embedded Whisper on CTranslate2 over packed speech windows; weights come from registry packages.

    faster-whisper's ``transcribe`` pads every window to 30 s, so a short turn costs a full encoder
    pass; here each window is padded only to ``context_seconds`` (10 s: base breaks below that,
    RECOGNIZER.md) and holds as much speech as fits. ``workers`` windows decode at once, each on
    ``cpu_threads // workers`` threads (two single-threaded decodes beat one two-threaded on 2 cores).
    """

    name = "whisper"

    def __init__(
        self,
        model: str = "base",
        *,
        beam_size: int = 5,
        compute_type: str = "int8",
        cpu_threads: int = 0,
        workers: int = 0,
        vad: bool = True,
        turn_gap: float = 1.0,
        context_seconds: float = 10.0,
        temperatures: Sequence[float] = (0.0, 0.2, 0.4, 0.6),
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        from bridge.embedded.engine import ModelLoadError, resolve_model

        # resolve_model joins the two base parts in memory and checks the sha256 of model.bin.
        path, files = resolve_model(model)
        self.model = model
        self.beam_size = beam_size
        self.vad = vad
        self.turn_gap = turn_gap
        self.temperatures = tuple(temperatures) or (0.0,)
        self.cpu_threads = cpu_threads or (os.cpu_count() or 1)
        self.workers = max(1, min(workers or self.cpu_threads, self.cpu_threads))
        self.context_seconds = float(min(30.0, max(1.0, context_seconds)))
        try:
            self._whisper = WhisperModel(
                path,
                device="cpu",
                compute_type=compute_type,
                cpu_threads=max(1, self.cpu_threads // self.workers),
                num_workers=self.workers,
                local_files_only=True,
                files=files,
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load whisper model {model!r}: {exc}") from exc
        multilingual = bool(self._whisper.model.is_multilingual)
        self._tokenizer = Tokenizer(
            self._whisper.hf_tokenizer, multilingual, task="transcribe", language="en" if multilingual else None
        )
        self._prompt = self._whisper.get_prompt(self._tokenizer, [], without_timestamps=True)
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="batch-whisper")

    def windows(self, audio: np.ndarray) -> list[Window]:
        """The packed speech windows of one 16 kHz channel (all of it when VAD is off)."""
        longest = self.context_seconds - PACK_TAIL_S
        spans = speech_spans(audio) if self.vad else [(0.0, audio.size / TARGET_RATE)]
        return pack_spans(spans, audio, longest)

    def _generate(self, encoded: Any, seconds: float, temperature: float) -> _Decoded:
        from faster_whisper.transcribe import get_compression_ratio

        budget = math.ceil(TOKENS_PER_SECOND * seconds) + TOKEN_SLACK
        res = self._whisper.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.beam_size if temperature == 0.0 else 1,
            num_hypotheses=1,
            sampling_temperature=temperature or 1.0,
            sampling_topk=1 if temperature == 0.0 else 0,
            patience=1.0,
            length_penalty=1.0,
            max_length=min(self._whisper.max_length // 2, len(self._prompt) + budget),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = [t for t in res.sequences_ids[0] if t < self._tokenizer.eot]
        n = max(1, len(res.sequences_ids[0]))
        avg = float(res.scores[0]) * n / (n + 1) if res.scores else -1.0
        text = self._tokenizer.decode(tokens)
        return _Decoded(tokens, avg, float(res.no_speech_prob), get_compression_ratio(text) if text else 0.0)

    def decode_window(self, channel: np.ndarray, window: Window) -> list[Word]:
        """Blocking: words of one window on the recording's clock (thread-safe, releases the GIL)."""
        import ctranslate2

        ctx = self.context_seconds
        n = int(ctx * TARGET_RATE)
        padded = np.zeros(n, dtype=np.float32)
        clip = window.audio(channel)[:n]
        padded[: clip.size] = clip
        feats = self._whisper.feature_extractor(padded, padding=160)[:, : int(ctx * 100)]
        encoded = self._whisper.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None])), to_cpu=False
        )
        # Whisper's own fallback: beam search first; sample warmer only when it loops or is unsure.
        best: _Decoded | None = None
        for temperature in self.temperatures:
            got = self._generate(encoded, window.content, temperature)
            if best is None or got.avg_logprob > best.avg_logprob:
                best = got
            if got.no_speech_prob > NO_SPEECH_PROB and got.avg_logprob < LOGPROB_FLOOR:
                return []  # VAD let noise through: no speech here
            if got.compression <= COMPRESSION_CEILING and got.avg_logprob >= LOGPROB_FLOOR:
                best = got
                break
        if best is None or not best.tokens:
            return []
        frames = max(1, round(window.content * 100))
        aligned = self._whisper.find_alignment(self._tokenizer, [best.tokens], encoded, frames)[0]
        words: list[Word] = []
        for w in aligned:
            raw = str(w["word"]).strip()
            if not raw:
                continue
            if words and not _plain(raw):  # a lone punctuation token belongs to the previous word
                last = words[-1]
                words[-1] = msgspec.structs.replace(last, punctuated_word=(last.punctuated_word or "") + raw)
                continue
            t0, t1 = float(w["start"]), float(w["end"])
            piece = window.piece_at((t0 + t1) / 2)
            start = window.to_recording(t0, piece)
            end = max(start, window.to_recording(t1, piece))
            words.append(Word(word=_plain(raw) or raw, start=round(start, 3), end=round(end, 3),
                              confidence=round(float(w["probability"]), 4), punctuated_word=raw))  # fmt: skip
        return words

    def transcribe_channel(self, audio: np.ndarray, track: str, channel: int) -> list[Utterance]:
        """Blocking decode of one 16 kHz channel, its windows spread over the workers."""
        if audio.size < TARGET_RATE // 10:
            return []
        results = self._pool.map(lambda w: self.decode_window(audio, w), self.windows(audio))
        return self._utterances([w for ws in results for w in ws], track, channel)

    def _utterances(self, words: list[Word], track: str, channel: int) -> list[Utterance]:
        """Cut one channel's words into turns wherever the speaker paused longer than ``turn_gap``."""
        out: list[Utterance] = []
        for group in _split_at_gaps(sorted(words, key=lambda w: w.start), self.turn_gap):
            conf = float(np.mean([w.confidence for w in group]))
            out.append(_utterance(track, channel, group, " ".join(w.punctuated_word or w.word for w in group), conf))
        return out

    async def transcribe(self, recording: Recording, tracks: Sequence[str]) -> list[Utterance]:
        """Both channels' windows go to the workers together, so two channels keep two cores busy."""
        loop = asyncio.get_running_loop()
        jobs: list[tuple[int, str, asyncio.Future[list[Word]]]] = []
        for ch, track in enumerate(tracks_for(recording.channels, tracks)):
            audio = recording.channel_16k(ch)
            if audio.size < TARGET_RATE // 10:
                continue
            for w in self.windows(audio):
                fut = loop.run_in_executor(self._pool, self.decode_window, audio, w)
                jobs.append((ch, track, fut))
        out: list[Utterance] = []
        for ch, track in {(ch, track) for ch, track, _ in jobs}:
            words = [w for c, _, f in jobs if c == ch for w in await f]
            out += self._utterances(words, track, ch)
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


def _long_call(calls: list[tuple[Recording, dict[str, str]]], times: int) -> tuple[Recording, dict[str, str], Path]:
    """One long stereo recording (and its references) made of the fixture calls back to back, in memory.

    Real calls run minutes, not seconds; a long input shows the cost per audio hour once packing can
    fill whole windows.
    """
    parts = [r.samples for _ in range(times) for r, _ in calls]
    refs: dict[str, str] = {}
    for _ in range(times):
        for _, r in calls:
            for track, text in r.items():
                refs[track] = (refs.get(track, "") + " " + text).strip()
    rate = calls[0][0].sample_rate
    samples = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.float32)
    return Recording(b"", WAVE_FORMAT_MULAW, 2, rate, samples), refs, Path(f"long_call_x{times}.wav")


def bench_main(argv: list[str] | None = None) -> int:
    """Audio hours per wall hour (and per core) and WER of the batch engine on the fixtures."""
    from bridge.wer import WerResult, wer

    ap = argparse.ArgumentParser(prog="bridge batch --bench")
    ap.add_argument("--model", default="base")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads in all (default: all cores)")
    ap.add_argument("--workers", type=int, default=0, help="windows decoded at once (default: one per thread)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--no-vad", action="store_true")
    ap.add_argument("--context", type=float, default=10.0, help="encoder context seconds (30 = Whisper's own)")
    ap.add_argument("--no-fallback", action="store_true", help="beam search only, no warmer retries")
    ap.add_argument("--long", type=int, default=0, help="instead: one stereo call of the fixture calls N times over")
    ap.add_argument("--fixtures", default="fixtures")
    args, _ = ap.parse_known_args(argv)
    engine = WhisperBatchEngine(
        args.model,
        beam_size=args.beam,
        cpu_threads=args.threads,
        workers=args.workers,
        vad=not args.no_vad,
        context_seconds=args.context,
        temperatures=(0.0,) if args.no_fallback else (0.0, 0.2, 0.4, 0.6),
    )
    pairs = _fixture_pairs(Path(args.fixtures))
    recs = [(read_recording(p), refs, p) for p, refs in pairs]
    if args.long > 0:
        recs = [_long_call([(r, refs) for r, refs, _ in recs if r.channels == 2], args.long)]
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
    print(f"model={args.model} beam={args.beam} fallback={not args.no_fallback} vad={not args.no_vad} "
          f"context={engine.context_seconds:g}s threads={engine.cpu_threads} workers={engine.workers} "
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
