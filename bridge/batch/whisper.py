"""Embedded Whisper (CTranslate2) as the batch engine: packed speech windows, beam search, word timings.

faster-whisper's ``transcribe`` pads every window to 30 s, so a short turn costs a full encoder
pass; here each window is padded only to ``context_seconds`` (10 s: the multilingual base model
breaks below that) and holds as much speech as fits (:mod:`bridge.embedded.packing`). Weights come from
registry packages (:func:`bridge.embedded.engine.resolve_model`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
from typing import Any, NamedTuple

import msgspec
import numpy as np

from bridge.audio import WHISPER_RATE as TARGET_RATE
from bridge.embedded.engine import LOOP_RETRY_PENALTY, cut_repeats
from bridge.embedded.packing import PACK_TAIL_S, Window, pack_spans, speech_spans
from bridge.events import Word
from bridge.transcripts import Recording, Utterance, in_order, plain, tracks_for, utterance

#: Generation budget per window: nobody says more tokens than this per second (a loop guard).
TOKENS_PER_SECOND = 10.0
TOKEN_SLACK = 10
#: Whisper's fallback thresholds: a decode that loops (gzip ratio) or is unsure (mean log-probability)
#: is decoded again; one the model itself calls silence is dropped.
COMPRESSION_CEILING = 2.4
LOGPROB_FLOOR = -1.0
NO_SPEECH_PROB = 0.6


def split_at_gaps(words: list[Word], gap: float) -> list[list[Word]]:
    """Cut a word sequence wherever the silence between two words is longer than ``gap``."""
    groups: list[list[Word]] = []
    for w in words:
        if groups and w.start - groups[-1][-1].end <= gap:
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


class _Decoded(NamedTuple):
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression: float
    #: The text without its looping tail when one was cut (kept instead of ``tokens``), else None.
    cut: str | None


class WhisperBatchEngine:
    """Embedded Whisper on CTranslate2 over packed speech windows.

    ``workers`` windows decode at once, each on ``cpu_threads // workers`` threads (two
    single-threaded decodes beat one two-threaded on 2 cores).

    A window whose beam search loops or is unsure is decoded once more with a repetition penalty
    (``retry_penalty``; 1.0 turns the retry off), as the live recognizer does, instead of Whisper's
    warmer sampling: CTranslate2's sampling seed belongs to a thread, not a decode, so sampled
    retries made the same recording come out differently run to run (one fixture set moved from
    18.4 % to 20.2 % WER between two runs), and the live/batch comparison with them. On the fixture
    sets the penalty retry scores as well as sampling did on average (13.4 % pooled against
    12.9-13.6 %) and the same every time.
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
        retry_penalty: float = LOOP_RETRY_PENALTY,
    ) -> None:
        from bridge.embedded.engine import load_whisper

        self.model = model
        self.beam_size = beam_size
        self.vad = vad
        self.turn_gap = turn_gap
        self.retry_penalty = retry_penalty
        self.cpu_threads = cpu_threads or (os.cpu_count() or 1)
        self.workers = max(1, min(workers or self.cpu_threads, self.cpu_threads))
        self.context_seconds = float(min(30.0, max(1.0, context_seconds)))
        loaded = load_whisper(model, compute_type=compute_type, cpu_threads=self.cpu_threads // self.workers,
                              num_workers=self.workers)  # fmt: skip
        self._whisper = loaded.model
        self._tokenizer = loaded.tokenizer
        self._suppress = loaded.suppress
        self._prompt = self._whisper.get_prompt(self._tokenizer, [], without_timestamps=True)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="batch-whisper")

    def windows(self, audio: np.ndarray) -> list[Window]:
        """The packed speech windows of one 16 kHz channel (all of it when VAD is off)."""
        longest = self.context_seconds - PACK_TAIL_S
        spans = speech_spans(audio) if self.vad else [(0.0, audio.size / TARGET_RATE)]
        return pack_spans(spans, audio, longest)

    def _generate(self, encoded: Any, seconds: float, penalty: float = 1.0) -> _Decoded:
        from faster_whisper.transcribe import get_compression_ratio

        budget = math.ceil(TOKENS_PER_SECOND * seconds) + TOKEN_SLACK
        res = self._whisper.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.beam_size,
            num_hypotheses=1,
            repetition_penalty=penalty,
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
        compression = get_compression_ratio(text) if text else 0.0
        cut = cut_repeats(text)
        if cut != text:  # a loop too short for the gzip test: retried like one
            compression = max(compression, COMPRESSION_CEILING + 1.0)
        return _Decoded(tokens, avg, float(res.no_speech_prob), compression, cut if cut != text else None)

    def _decode(self, encoded: Any, seconds: float) -> _Decoded | None:
        """Beam search, and once more with a repetition penalty when it loops or is unsure.

        The retry is kept when it loops less, or loops no more and scores higher; a decode the
        model calls silence and is unsure of is dropped (VAD let noise through).
        """
        got = self._generate(encoded, seconds)
        if got.no_speech_prob > NO_SPEECH_PROB and got.avg_logprob < LOGPROB_FLOOR:
            return None
        if self.retry_penalty <= 1.0 or (got.compression <= COMPRESSION_CEILING and got.avg_logprob >= LOGPROB_FLOOR):
            return got
        again = self._generate(encoded, seconds, self.retry_penalty)
        if again.compression < got.compression or (
            again.compression <= COMPRESSION_CEILING and again.avg_logprob > got.avg_logprob
        ):
            return again
        return got

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
        best = self._decode(encoded, window.content)
        if best is None:
            return []
        tokens = best.tokens
        if best.cut is not None:
            tokens = self._tokenizer.encode(" " + best.cut.strip()) if best.cut.strip() else []
        if not tokens:
            return []
        frames = max(1, round(window.content * 100))
        aligned = self._whisper.find_alignment(self._tokenizer, [tokens], encoded, frames)[0]
        words: list[Word] = []
        for w in aligned:
            raw = str(w["word"]).strip()
            if not raw:
                continue
            if words and not plain(raw):  # a lone punctuation token belongs to the previous word
                last = words[-1]
                words[-1] = msgspec.structs.replace(last, punctuated_word=(last.punctuated_word or "") + raw)
                continue
            t0, t1 = float(w["start"]), float(w["end"])
            piece = window.piece_at((t0 + t1) / 2)
            start = window.to_recording(t0, piece)
            end = max(start, window.to_recording(t1, piece))
            words.append(Word(word=plain(raw) or raw, start=round(start, 3), end=round(end, 3),
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
        for group in split_at_gaps(sorted(words, key=lambda w: w.start), self.turn_gap):
            conf = float(np.mean([w.confidence for w in group]))
            out.append(utterance(track, channel, group, " ".join(w.punctuated_word or w.word for w in group), conf))
        return out

    async def transcribe(self, recording: Recording, tracks: list[str]) -> list[Utterance]:
        """Both channels' windows go to the workers together, so two channels keep two cores busy."""
        loop = asyncio.get_running_loop()
        jobs: list[tuple[int, str, asyncio.Future[list[Word]]]] = []
        for ch, track in enumerate(tracks_for(recording.channels, tracks)):
            audio: np.ndarray = recording.channel_16k(ch)  # type: ignore[assignment]
            if audio.size < TARGET_RATE // 10:
                continue
            for w in self.windows(audio):
                fut = loop.run_in_executor(self._pool, self.decode_window, audio, w)
                jobs.append((ch, track, fut))
        out: list[Utterance] = []
        for ch, track in {(ch, track) for ch, track, _ in jobs}:
            words = [w for c, _, f in jobs if c == ch for w in await f]
            out += self._utterances(words, track, ch)
        return in_order(out)




__all__ = ["WhisperBatchEngine", "split_at_gaps"]
