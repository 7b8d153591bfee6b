"""Redacting the compliance transcript, and the spans of the recording to silence.

The batch transcript goes through the same :class:`~bridge.redact.live.LiveRedactor` as the live
finals (utterances in time order, as finals, with no deadline), so both transcripts mask the same
things. The recording's spans are the masked words' timings, the whole turn they were said in, and
the caller's channel from an agent's request for a card number, expiry or security code until the
agent speaks again: a recognizer that misheard (or mistimed) the digits must not leave them audible.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec

from bridge import events
from bridge.redact.audio import redact_file
from bridge.redact.detector import MASKS, cues, kinds_for
from bridge.redact.live import LiveRedactor
from bridge.store import Store
from bridge.transcripts import BatchTranscript, Redaction, Utterance

log = logging.getLogger(__name__)

#: Seconds added on both sides of a span before silencing it (word timings are approximate).
WIDEN_SECONDS = 0.2
#: The caller's answer to a card request is looked for this many seconds after it at most.
ANSWER_WINDOW_SECONDS = 20.0
_CARD_REQUESTS = {"card_number", "card_expiry", "card_cvv"}


def _as_final(call_sid: str, u: Utterance) -> events.Final:
    track: events.Track = "outbound" if u.track == "outbound" else "inbound"
    return events.Final(
        call_sid=call_sid, id=u.id, track=track, start=u.start, end=u.end, text=u.text,
        confidence=u.confidence, words=u.words,
    )  # fmt: skip


def answer_spans(utterances: list[Utterance]) -> list[Redaction]:
    """The caller's channel from the end of each card request of the agent until the agent speaks
    again (at most ``ANSWER_WINDOW_SECONDS``): the answer, however it was (mis)recognised or timed."""
    agent = sorted((u for u in utterances if u.track == "outbound"), key=lambda u: u.start)
    spans: list[Redaction] = []
    for i, ask in enumerate(agent):
        if not cues(ask.text) & _CARD_REQUESTS:
            continue
        nxt = next((u.start for u in agent[i + 1 :] if u.start > ask.end), None)
        end = ask.end + ANSWER_WINDOW_SECONDS if nxt is None else min(nxt, ask.end + ANSWER_WINDOW_SECONDS)
        spans.append(Redaction(track="inbound", start=ask.end, end=end, kind="card_answer"))
    return spans


def widen(spans: list[Redaction], seconds: float = WIDEN_SECONDS, duration: float | None = None) -> list[Redaction]:
    """Spans widened by ``seconds`` each side (clipped to the recording); overlapping spans of one
    track and kind merged; sorted."""
    out: list[Redaction] = []
    for s in sorted(spans, key=lambda s: (s.track, s.kind, s.start)):
        start = round(max(0.0, s.start - seconds), 3)
        end = round(s.end + seconds if duration is None else min(duration, s.end + seconds), 3)
        last = out[-1] if out else None
        if last is not None and (last.track, last.kind) == (s.track, s.kind) and start <= last.end:
            last.end = max(last.end, end)
            continue
        out.append(Redaction(track=s.track, start=start, end=end, kind=s.kind))
    return sorted(out, key=lambda s: (s.track, s.start, s.end))


def redact_transcript(transcript: BatchTranscript, kinds: frozenset[str]) -> tuple[BatchTranscript, list[Redaction]]:
    """The transcript with card data (``kinds``) masked, and the spans of the recording to silence
    (widened, on the track that spoke them). With no kinds, the transcript as it is and no spans."""
    if not kinds:
        return transcript, []
    by_id: dict[tuple[str, str], events.Final] = {}
    redactor = LiveRedactor(kinds, lambda f: by_id.__setitem__((f.track, f.id), f), hold_seconds=None)
    ordered = sorted(transcript.utterances, key=lambda u: (u.start, u.channel))
    for u in ordered:
        redactor.final(_as_final(transcript.call_sid, u))
    redactor.flush()
    utterances = []
    whole: list[Redaction] = []  # a turn that held card data is silenced whole (the words around it too)
    kind_of = {mask: kind for kind, mask in MASKS.items()}
    for u in transcript.utterances:
        f = by_id.get((u.track, u.id))
        if f is None:
            utterances.append(u)
            continue
        utterances.append(msgspec.structs.replace(u, text=f.text, words=f.words))
        masked = [kind_of[w.word] for w in f.words if w.word in kind_of]
        if masked:
            whole.append(Redaction(track=u.track, start=u.start, end=u.end, kind=masked[0]))
    spans = widen(redactor.spans + whole + answer_spans(transcript.utterances), duration=transcript.duration)
    return msgspec.structs.replace(transcript, utterances=utterances), spans


async def redact_recording(
    store: Store, transcript: BatchTranscript, path: Path, tracks: list[str], *, kinds: frozenset[str],
    keep_original: bool,
) -> BatchTranscript:
    """The batch pass's redaction step, before anything of the transcript is stored: the transcript
    masked, its spans stored (with those of an earlier attempt: a redelivered job transcribes audio
    already silenced), then silenced in the recording; returns the masked transcript."""
    sid = transcript.call_sid
    info = await store.get_call(sid)
    if info is not None:
        kinds |= kinds_for(info.custom.get("redact", ""))  # the call's own ``redact`` parameter adds kinds
    redacted, spans = redact_transcript(transcript, kinds)
    earlier = await store.redactions(sid) or []
    merged = sorted({(s.track, s.start, s.end, s.kind): s for s in earlier + spans}.values(),
                    key=lambda s: (s.track, s.start, s.end))  # fmt: skip
    await store.save_redactions(sid, merged)
    seconds = 0.0
    if merged:
        seconds = await asyncio.to_thread(redact_file, path, merged, tracks, keep_original=keep_original)
    log.info("recording redacted: %d span(s), %.1f s silenced", len(merged), seconds, extra={"call_sid": sid})
    return redacted


__all__ = [
    "ANSWER_WINDOW_SECONDS", "WIDEN_SECONDS", "answer_spans", "redact_recording", "redact_transcript", "widen",
]
