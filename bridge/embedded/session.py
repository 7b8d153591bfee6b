"""One ``/v1/listen`` connection: audio in, Deepgram-shaped messages out, in order.

The receive side is cheap (decode, VAD) and never waits for inference; every decode goes to the
shared :class:`~bridge.embedded.scheduler.DecodeScheduler`. Outgoing messages pass through one
ordered queue, so a final is never overtaken by a later partial and ``Metadata`` is always last.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from bridge.audio import mulaw_to_pcm16
from bridge.embedded.engine import LEAD_GAP_S, SAMPLE_RATE, EngineWord, Hypothesis, WhisperEngine, plain_word
from bridge.embedded.params import ListenParams
from bridge.embedded.scheduler import DecodeScheduler, Packable
from bridge.embedded.segmenter import PartialDue, SegmentClosed, Segmenter, SegmentPausing, SpeechOnset
from bridge.recognizers.deepgram import wire as dg

logger = logging.getLogger(__name__)

#: Whisper needs some context; Deepgram's 10 ms default endpoint would chop words apart.
MIN_ENDPOINT_S = 0.2
#: Segmentation gap used when the client disables endpointing (finals without ``speech_final``).
NO_ENDPOINT_GAP_S = 0.8
#: Hypotheses this unlikely to be speech are dropped (Whisper "hears" words in noise).
NO_SPEECH_MAX = 0.6
#: ...but a partial is kept if it is also this confident (Whisper's own rule: avg logprob > -1).
#: Short early audio often scores a high no-speech probability with good words.
PARTIAL_KEEP_CONFIDENCE = math.exp(-1.0)
#: Partial spacing by decoder load (running + queued per worker): frequent when idle, sparse when
#: busy, so partials never crowd out finals.
PARTIAL_INTERVALS = ((1.0, 0.3), (2.0, 0.5), (math.inf, 1.0))
#: An empty early partial is retried this soon rather than after a whole interval.
RETRY_PARTIAL_S = 0.1
#: How much of a speaker's previous words the decoder is given as context.
PREVIOUS_CHARS = 200
#: A final that waited this long for a worker is decoded with the fast model (a metric counts it).
CHEAP_AFTER_S = 1.0
#: The endpoint counts silence from the end of the speech's energy (not the VAD's trailing decision,
#: ~0.13 s later: see :mod:`bridge.embedded.segmenter`) only while a worker is free: the pauses it
#: finds inside turns mean more, shorter finals, which a busy recognizer packs together (without
#: their context) and queues. Not 0.5: one call's own partial decode is often running as it stops.
ENERGY_ENDPOINT_BELOW_LOAD = 1.0
#: A final is decoded ahead of the endpoint (at the first pause) only while a worker is free for it:
#: below 1, not 0.5, since mid-speech the other worker is nearly always decoding a partial.
SPECULATE_BELOW_LOAD = 1.0
#: A final this short (seconds of segment, pre-roll and endpoint silence included) is decoded after
#: the speaker's previous finals (:meth:`WhisperEngine.transcribe_after`): alone it is too little context.
SHORT_FINAL_S = 2.0
#: A longer final decoded alone less sure than this is decoded again after the speaker's previous
#: finals (a hard voice is heard better after more of it); see :func:`decode_final`.
UNSURE_FINAL = 0.6
#: Most of the speaker's earlier audio a final is decoded after.
LEAD_MAX_S = 4.0
#: Less lead than this (a long final leaves little room in the context) is no help: decode alone.
LEAD_MIN_S = 1.0
#: How many of a speaker's recent finals (audio and words) are kept for that.
RECENT_FINALS = 2

Send = Callable[[bytes], Awaitable[None]]
#: One of a speaker's recent finals: its segment audio and aligned words.
Recent = tuple[np.ndarray, tuple[EngineWord, ...]]
OutItem = bytes | asyncio.Future[bytes | None] | Callable[[], bytes | None]


@dataclass
class _Agreement:
    """Local agreement: words shared by two consecutive hypotheses are committed and kept."""

    segment: int = -1
    previous: list[str] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)

    def update(self, segment: int, words: list[str]) -> None:
        if segment != self.segment:
            self.segment, self.previous, self.committed = segment, [], []
        n = 0
        for a, b in zip(self.previous, words, strict=False):
            if a != b:
                break
            n += 1
        if n > len(self.committed):
            self.committed = words[:n]
        self.previous = words

    def prefix(self, segment: int) -> str:
        return " ".join(self.committed) if segment == self.segment else ""


class ListenSession:
    """State of one stream. ``feed``/``control`` are called by the receive loop; ``run_sender`` drains."""

    def __init__(
        self,
        *,
        params: ListenParams,
        engine: WhisperEngine,
        scheduler: DecodeScheduler,
        request_id: str,
        model_name: str,
        final_beam: int = 1,
        final_engine: WhisperEngine | None = None,
    ) -> None:
        self.params = params
        self.engine = engine
        #: The accurate decoder of finals (two-pass); the partials' engine when None.
        self.final_engine = final_engine
        self.scheduler = scheduler
        self.request_id = request_id
        self.model_name = model_name
        self.final_beam = final_beam
        #: Keyterms of this stream (Deepgram ``keyterm``/``keywords``), prompted to the decoder.
        self.hotwords = ", ".join(params.keyterms)
        #: The end of what this speaker said so far: the decoder's context for the next segment.
        self._previous = ""
        #: This speaker's latest finals, audio and aligned words: the lead of a short final.
        #: Replaced, never mutated: a decode thread reads it while the event loop adds finals.
        self._recent: tuple[Recent, ...] = ()
        #: A final decoded ahead of the endpoint: (segment, voiced end, its decode).
        self._ahead: tuple[int, float, asyncio.Future[Hypothesis | None]] | None = None
        #: The last segment a partial was shown for (the next segment's first partial goes first).
        self._shown_segment: int | None = None
        endpoint = params.endpointing_ms
        gap = NO_ENDPOINT_GAP_S if endpoint is None else max(MIN_ENDPOINT_S, endpoint / 1000)
        self.segmenter = Segmenter(
            params.sample_rate, endpoint_s=gap, max_segment_s=engine.max_segment_seconds
        )
        self._carry = b""
        self._sha = hashlib.sha256()
        self._bytes = 0
        self._out: asyncio.Queue[OutItem | None] = asyncio.Queue()
        self._agree = _Agreement()
        self._last_final_end = 0.0
        self._last_word_end: float | None = None
        self._utterance_pending = False
        self._meta = dg.DGResultsMetadata(
            request_id=request_id,
            model_info=dg.DGModelInfo(name=model_name, version="embedded", arch="whisper"),
            model_uuid=model_name,
        )

    # ---- input side -------------------------------------------------------------------------
    @property
    def audio_seconds(self) -> float:
        return self._bytes / (self.params.sample_rate * self.params.bytes_per_sample)

    def feed(self, data: bytes) -> None:
        self._sha.update(data)
        self._bytes += len(data)
        if self.params.encoding == "mulaw":
            pcm = mulaw_to_pcm16(data)
        else:
            buf = self._carry + data
            cut = len(buf) - len(buf) % 2
            pcm, self._carry = buf[:cut], buf[cut:]
        load = self.scheduler.load
        if self.params.interim_results:
            self.segmenter.set_partial_interval(partial_interval(load))
        self.segmenter.energy_endpoint = load < ENERGY_ENDPOINT_BELOW_LOAD
        for event in self.segmenter.feed(pcm):
            self._handle(event, from_finalize=False)
        self._check_utterance_end()

    def finalize(self, *, from_finalize: bool) -> None:
        """Flush the open segment into a final (Finalize, CloseStream, end of stream)."""
        closed = self.segmenter.flush()
        if closed is not None:
            self._handle(closed, from_finalize=from_finalize)
        elif from_finalize:
            # Deepgram answers a Finalize with a final even when nothing was pending.
            now = self.segmenter.time
            start = self._last_final_end
            self._last_final_end = max(start, now)
            self._out.put_nowait(self._results(start, now, None, final=True, from_finalize=True))

    def _handle(
        self, event: SpeechOnset | PartialDue | SegmentPausing | SegmentClosed, *, from_finalize: bool
    ) -> None:
        if isinstance(event, SegmentPausing):
            self._decode_ahead(event)
            return
        if isinstance(event, SpeechOnset):
            self._utterance_pending = False
            if self.params.vad_events:
                msg = dg.SpeechStarted(channel=[0, 1], timestamp=round(event.timestamp, 3))
                self._out.put_nowait(dg.encode(msg))
        elif isinstance(event, PartialDue):
            if self.params.interim_results:
                self._submit_partial(event)
        else:
            self._submit_final(event, from_finalize=from_finalize)

    def _submit_partial(self, ev: PartialDue) -> None:
        context = self.engine.partial_context(ev.end - ev.start)

        previous = self._previous

        def work() -> Hypothesis:
            return self.engine.transcribe(
                ev.audio, prefix=self._agree.prefix(ev.segment), align=False, context_seconds=context,
                hotwords=self.hotwords, previous=previous, retry_loops=False,
            )

        first = self._shown_segment != ev.segment
        fut = self.scheduler.submit_partial(self.request_id, work, first=first)
        out: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[Hypothesis | None]) -> None:
            if out.done():
                return
            if f.cancelled() or f.exception() is not None or f.result() is None:
                out.set_result(None)
                return
            hyp = f.result()
            assert hyp is not None
            if not keep_partial(hyp):
                out.set_result(None)
                if not self._agree.prefix(ev.segment):  # nothing shown yet: try again soon
                    self.segmenter.retry_partial(ev.segment, RETRY_PARTIAL_S)
                return
            self._agree.update(ev.segment, hyp.text.split())
            self._shown_segment = ev.segment
            out.set_result(self._results(ev.start, ev.end, hyp, final=False))

        fut.add_done_callback(done)
        self._out.put_nowait(out)

    def _final_decode(self, audio: np.ndarray, duration: float) -> asyncio.Future[Hypothesis | None]:
        """Queue the decode of a final: accurate while finals keep up, packed with others under load."""
        accurate = self.final_engine or self.engine
        queued = time.monotonic()
        idle = self.scheduler.load < 1.0  # a worker is free: an unsure final may be decoded twice

        def work() -> Hypothesis:
            # Decided when a worker takes the job: the accurate model, with this speaker's previous
            # words as context; the partials' model (greedy) only if it waited so long that finals
            # would otherwise fall behind the call (queued finals are packed first, see below).
            engine, beam, cheap = accurate, self.final_beam, False
            if time.monotonic() - queued > CHEAP_AFTER_S and (engine, beam) != (self.engine, 1):
                engine, beam, cheap = self.engine, 1, True
                self.scheduler.cheap_finals += 1
            hyp, in_context = decode_final(engine, audio, duration, self._recent, beam_size=beam,
                                           hotwords=self.hotwords, previous=self._previous,
                                           second_decode=idle and not cheap)  # fmt: skip
            self.scheduler.context_finals += in_context
            return hyp

        def run_many(audios: list[np.ndarray]) -> list[Hypothesis]:
            return accurate.transcribe_packed(audios, beam_size=self.final_beam, hotwords=self.hotwords)

        pack = Packable(key=(id(accurate), self.final_beam, self.hotwords), seconds=duration, payload=audio,
                        run_many=run_many)  # fmt: skip
        return self.scheduler.submit_final(self.request_id, work, pack=pack)

    def _decode_ahead(self, ev: SegmentPausing) -> None:
        """The speaker paused: start this segment's final now, while the endpoint silence runs.

        At the endpoint the decode is kept if nobody spoke since (it saw all the speech), and the
        final arrives a pause-length sooner; otherwise it is thrown away. Only while a worker is
        free to start it at once, so it never waits in (or lengthens) a busy recognizer's queue.
        """
        self._discard_ahead()
        if ev.audio.size and self.scheduler.load < SPECULATE_BELOW_LOAD:
            self._ahead = (ev.segment, ev.voiced_end, self._final_decode(ev.audio, ev.end - ev.start))

    def _discard_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not ahead[2].done():
            ahead[2].set_result(None)  # still queued: the scheduler skips it
            self.scheduler.wasted_ahead += 1
        elif ahead is not None:
            self.scheduler.wasted_ahead += 1

    def _submit_final(self, ev: SegmentClosed, *, from_finalize: bool) -> None:
        speech_final = ev.reason == "endpoint" and self.params.endpointing_ms is not None
        start = ev.start
        self._last_final_end = ev.end
        ahead, self._ahead = self._ahead, None
        if not ev.has_speech:
            self._ahead = ahead
            self._discard_ahead()
            self._out.put_nowait(
                self._results(start, ev.end, None, final=True, speech_final=speech_final,
                              from_finalize=from_finalize)
            )
            return
        if (ahead is not None and ev.reason == "endpoint" and ahead[0] == ev.segment
                and ahead[1] == self.segmenter.last_voiced_end):  # fmt: skip
            fut = ahead[2]
            self.scheduler.used_ahead += 1
        else:
            self._ahead = ahead
            self._discard_ahead()
            fut = self._final_decode(ev.audio, ev.end - ev.start)
        out: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[Hypothesis | None]) -> None:
            if out.done():
                return
            hyp: Hypothesis | None = None
            if not f.cancelled():
                exc = f.exception()
                if exc is not None:
                    logger.error("final decode failed: %s", exc, extra={"request_id": self.request_id})
                else:
                    hyp = f.result()
            if hyp is not None and (hyp.no_speech_prob > NO_SPEECH_MAX or not hyp.words):
                hyp = None
            if hyp is not None:
                self._last_word_end = ev.start + hyp.words[-1].end
                self._previous = (self._previous + " " + hyp.text).strip()[-PREVIOUS_CHARS:]
                self._recent = (*self._recent, (ev.audio, hyp.words))[-RECENT_FINALS:]
            out.set_result(
                self._results(start, ev.end, hyp, final=True, speech_final=speech_final,
                              from_finalize=from_finalize, offset=ev.start)
            )

        fut.add_done_callback(done)
        self._out.put_nowait(out)
        if speech_final:
            self._utterance_pending = True

    def _check_utterance_end(self) -> None:
        p = self.params
        if not (self._utterance_pending and p.interim_results and p.utterance_end_ms is not None):
            return
        if self.segmenter.in_speech:
            return
        if self.segmenter.time - self.segmenter.last_voiced_end < p.utterance_end_ms / 1000:
            return
        self._utterance_pending = False

        def build() -> bytes | None:
            end = self._last_word_end
            if end is None:
                return None
            self._last_word_end = None
            return dg.encode(dg.UtteranceEnd(channel=[0, 1], last_word_end=round(end, 3)))

        self._out.put_nowait(build)

    # ---- output side ------------------------------------------------------------------------
    def _results(
        self,
        start: float,
        end: float,
        hyp: Hypothesis | None,
        *,
        final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
        offset: float | None = None,
    ) -> bytes:
        base = start if offset is None else offset
        words: list[dg.DGWord] = []
        styled = self.params.punctuate or self.params.smart_format
        if hyp is not None:
            source = hyp.words
            if not source:
                from bridge.embedded.engine import estimate_words

                source = tuple(estimate_words(hyp.text, 0.0, end - base))
            for w in source:
                word = plain_word(w.text)
                if not word:
                    continue
                words.append(
                    dg.DGWord(
                        word=word,
                        start=round(base + w.start, 3),
                        end=round(min(base + w.end, end), 3),
                        confidence=round(w.probability or hyp.confidence, 4),
                        punctuated_word=w.text if styled else None,
                    )
                )
        transcript = " ".join((w.punctuated_word or w.word) if styled else w.word for w in words)
        msg = dg.Results(
            channel_index=[0, 1],
            duration=round(max(0.0, end - start), 3),
            start=round(start, 3),
            is_final=final,
            speech_final=speech_final,
            from_finalize=from_finalize,
            channel=dg.DGChannel(
                alternatives=[
                    dg.DGAlternative(
                        transcript=transcript,
                        confidence=round(hyp.confidence, 4) if hyp is not None and words else 0.0,
                        words=words,
                    )
                ]
            ),
            metadata=self._meta,
        )
        return dg.encode(msg)

    def metadata(self) -> bytes:
        msg = dg.Metadata(
            request_id=self.request_id,
            sha256=self._sha.hexdigest(),
            created=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            duration=round(self.audio_seconds, 3),
            channels=1,
            models=[self.model_name],
            model_info={self.model_name: self._meta.model_info},
        )
        return dg.encode(msg)

    def end_output(self) -> None:
        self._out.put_nowait(None)

    def put(self, data: bytes) -> None:
        self._out.put_nowait(data)

    async def run_sender(self, send: Send) -> None:
        """Send queued messages in order until :meth:`end_output`."""
        while True:
            item = await self._out.get()
            if item is None:
                return
            if isinstance(item, bytes):
                data: bytes | None = item
            elif isinstance(item, asyncio.Future):
                data = await item
            else:
                data = item()
            if data is not None:
                await send(data)

    def cancel(self) -> None:
        self.scheduler.cancel_stream(self.request_id)


def decode_final(
    engine: WhisperEngine,
    audio: np.ndarray,
    duration: float,
    recent: Sequence[Recent],
    *,
    beam_size: int,
    hotwords: str,
    previous: str,
    second_decode: bool = True,
) -> tuple[Hypothesis, bool]:
    """A final's hypothesis, and whether it was decoded after the speaker's earlier audio.

    A short final goes after its lead (:func:`lead_context`), whose text is then taken out of the
    prompt's previous words (it is the forced prefix already); if that decode gives nothing new
    or echoes the lead, the segment is decoded alone as any other final. A longer final decoded
    alone with less than :data:`UNSURE_FINAL` confidence is decoded again after its lead and that
    decode kept: on the fixture sets this took 26.0 % to 24.3 % WER (per segment, before the
    recognizer's own filtering) for a second decode of one final in ten; decoding every final
    after its lead did no better (24.8 %) and cost a second of decode per ten finals more. A final
    is decoded twice only when a worker was free as it was queued (``second_decode``).
    """
    room = min(LEAD_MAX_S, engine.max_segment_seconds - duration - LEAD_GAP_S)
    lead = lead_context(recent, room) if room >= LEAD_MIN_S else None
    if lead is not None and duration < SHORT_FINAL_S:
        hyp = _after_lead(engine, audio, lead, beam_size=beam_size, hotwords=hotwords, previous=previous)
        if hyp is not None:
            return hyp, True
    alone = engine.transcribe(audio, beam_size=beam_size, align=True, context_seconds=engine.partial_context(duration),
                              hotwords=hotwords, previous=previous)  # fmt: skip
    unsure = bool(alone.text) and alone.confidence < UNSURE_FINAL
    if second_decode and lead is not None and duration >= SHORT_FINAL_S and unsure:
        hyp = _after_lead(engine, audio, lead, beam_size=beam_size, hotwords=hotwords, previous=previous)
        if hyp is not None:
            return hyp, True
    return alone, False


def _after_lead(
    engine: WhisperEngine, audio: np.ndarray, lead: tuple[np.ndarray, str], *, beam_size: int, hotwords: str,
    previous: str,
) -> Hypothesis | None:
    before = without_lead(previous, lead[1])
    hyp = engine.transcribe_after(audio, lead[0], lead[1], beam_size=beam_size, hotwords=hotwords, previous=before)
    logger.debug("final after %d lead words: %s", len(lead[1].split()), "kept" if hyp else "alone")
    return hyp


def lead_context(
    recent: Sequence[Recent], max_s: float
) -> tuple[np.ndarray, str] | None:
    """The speaker's latest audio (at most ``max_s``, cut between words) and what was said in it.

    Recent finals are joined newest-first while they fit; the oldest one kept may be cut to its
    last words, so the text forced as the decoder's prefix is exactly what the audio holds.
    Each final's text ends with a full stop (:func:`sentence`).
    """
    audios: list[np.ndarray] = []
    texts: list[str] = []
    room = max_s
    for audio, words in reversed(recent):
        length = audio.size / SAMPLE_RATE
        if not words:
            break
        if length > room:
            keep = [i for i, w in enumerate(words) if w.start >= length - room]
            if not keep:
                break
            i = keep[0]
            cut = words[i].start if i == 0 else (words[i - 1].end + words[i].start) / 2
            audio, words = audio[int(cut * SAMPLE_RATE) :], words[i:]
            audios.insert(0, audio)
            texts.insert(0, sentence(words))
            break
        audios.insert(0, audio)
        texts.insert(0, sentence(words))
        room -= length
    if not audios:
        return None
    return np.concatenate(audios), " ".join(texts)


def without_lead(previous: str, lead_text: str) -> str:
    """The speaker's previous words without the lead's (forced as the prefix, they would be said
    twice), compared word by word without punctuation (the lead's finals gained a stop)."""
    led = [plain_word(w) for w in lead_text.split()]
    words = previous.split()
    if led and len(words) >= len(led) and [plain_word(w) for w in words[-len(led) :]] == led:
        return " ".join(words[: -len(led)])
    return previous


def sentence(words: Sequence[EngineWord]) -> str:
    """A final's words as one sentence: a final ends at the speaker's pause, so it ends with a stop.

    The prefix steers the continuation: after "Sure" Whisper hears the next "Yes." as "Yeah.",
    after "Sure." as "Yes." (measured on the short-answer fixtures).
    """
    text = " ".join(w.text for w in words)
    return text + "." if text and text[-1].isalnum() else text


def partial_interval(load: float) -> float:
    """Seconds between partials for a decoder pool at ``load`` (see :data:`PARTIAL_INTERVALS`)."""
    return next(s for limit, s in PARTIAL_INTERVALS if load < limit)


def keep_partial(hyp: Hypothesis) -> bool:
    """A partial is shown unless it is empty or both unlikely speech and unsure."""
    if not hyp.text:
        return False
    return hyp.no_speech_prob <= NO_SPEECH_MAX or hyp.confidence >= PARTIAL_KEEP_CONFIDENCE


def new_request_id() -> str:
    return str(uuid.uuid4())
