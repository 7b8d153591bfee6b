"""One call's redactor: masks partials and finals before anything stores or sends them.

A final, once stored and published, cannot be taken back, and a caller reads a card number in
groups the recognizer may end finals between. So a final of a track whose last words are a digit
run that is still open (not masked, nothing said after it) is **held back** until the next final of
that track, and the two are judged together; a partial is judged together with the held finals
before it, and a digit run still open at its end is cut off (it reappears once it closes).

A hold is bounded: after ``hold_seconds`` (wall clock) the held finals are released; a trailing
run of 7 digits or more is then masked as ``[number]`` (at most six digits of a card may be shown,
as on a receipt), a shorter one is released and still joins the next final's first digits for the
card check. The batch pass runs the same redactor with no deadline.

A request (the agent asking for a card number, its expiry, its security code, or an SSN) opens a
context for the other party's answer, in which shorter runs are card data too (see
:func:`bridge.redact.detector.detect`): until the asker speaks again without a request once answered,
names another kind of number, or ``context_seconds`` of call time have passed. A card number just
said opens one for its speaker's next numbers (the expiry and code tend to follow).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence

import msgspec

from bridge import events
from bridge.redact.detector import MASKS, Hit, cues, detect, runs
from bridge.transcripts import Redaction

log = logging.getLogger(__name__)

#: Seconds a final ending in an open digit run is held back at most.
HOLD_SECONDS = 4.0
#: Seconds of call time a request keeps its context open.
CONTEXT_SECONDS = 60.0
#: Digits a trailing run released at the deadline may show (a card's first six, as on a receipt).
SHOWN_DIGITS = 6


def _text_tokens(final: events.Final) -> list[str]:
    return final.text.split()


def _word_tokens(final: events.Final) -> list[str]:
    return [w.punctuated_word or w.word for w in final.words]


def _local(hits: Sequence[Hit], offset: int, size: int) -> list[Hit]:
    """The hits that fall in ``[offset, offset + size)``, in that slice's indices."""
    out = []
    for h in hits:
        first, last = max(h.first, offset), min(h.last, offset + size - 1)
        if first <= last:
            out.append(Hit(first - offset, last - offset, h.kind))
    return out


def _masked_text(tokens: list[str], hits: list[Hit]) -> str:
    out: list[str] = []
    i = 0
    for h in sorted(hits, key=lambda h: h.first):
        out.extend(tokens[i : h.first])
        out.append(MASKS[h.kind] + _trailing_punct(tokens[h.last]))
        i = h.last + 1
    out.extend(tokens[i:])
    return " ".join(out)


def _trailing_punct(token: str) -> str:
    return token[len(token.rstrip(".,;:!?")) :]


def _masked_words(words: list[events.Word], hits: list[Hit]) -> list[events.Word]:
    """Each masked span becomes one word with the span's timings."""
    out: list[events.Word] = []
    i = 0
    for h in sorted(hits, key=lambda h: h.first):
        out.extend(words[i : h.first])
        mask = MASKS[h.kind]
        span = words[h.first : h.last + 1]
        out.append(events.Word(
            word=mask, start=span[0].start, end=span[-1].end,
            confidence=min(w.confidence for w in span), punctuated_word=mask,
        ))  # fmt: skip
        i = h.last + 1
    out.extend(words[i:])
    return out


@dataclasses.dataclass
class _Cue:
    """A request for card data (or an SSN): its words' end, and who asked."""

    at: float
    #: The track that asked: the context applies to the other party's words.
    asker: str
    #: The other party has spoken since.
    answered: bool = False


@dataclasses.dataclass
class _Track:
    held: list[events.Final] = dataclasses.field(default_factory=list)
    #: Tokens of a run released open at the deadline (joined to the next final's first digits).
    tail_text: list[str] = dataclasses.field(default_factory=list)
    tail_words: list[str] = dataclasses.field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class LiveRedactor:
    """Masks one call's events; finals come out through ``emit_final``, possibly later (hold-back)."""

    def __init__(
        self,
        kinds: frozenset[str],
        emit_final: Callable[[events.Final], None],
        *,
        hold_seconds: float | None = HOLD_SECONDS,
        context_seconds: float = CONTEXT_SECONDS,
    ) -> None:
        self.kinds = kinds
        self.emit_final = emit_final
        self.hold_seconds = hold_seconds
        self.context_seconds = context_seconds
        self._tracks: dict[str, _Track] = {}
        #: The open requests, by what they ask for.
        self._cues: dict[str, _Cue] = {}
        #: Every span masked in a final's words (call seconds): what the batch pass silences.
        self.spans: list[Redaction] = []

    @property
    def enabled(self) -> bool:
        return bool(self.kinds)

    def _track(self, track: str) -> _Track:
        return self._tracks.setdefault(track, _Track())

    def _context(self, at: float, track: str) -> tuple[str | None, bool]:
        """The open card request (the latest) and whether an SSN was asked for, for ``track``'s words."""
        live = {k: c.at for k, c in self._cues.items() if at - c.at <= self.context_seconds and c.asker != track}
        card = [k for k in live if k != "ssn"]
        return (max(card, key=lambda k: live[k]) if card else None), "ssn" in live

    def _update_cues(self, track: str, finals: list[events.Final], card_said: bool) -> None:
        """A request opens a context for the other party's answer; it closes when the asker speaks
        again (without a request) after being answered, or names another kind of number."""
        for f in finals:
            asked = cues(f.text)
            for kind, cue in list(self._cues.items()):
                if cue.asker != track:
                    cue.answered = True
                elif cue.answered and not asked - {"other"}:
                    del self._cues[kind]  # answered, and the conversation moved on
            if "other" in asked and not asked & {"card_number", "card_expiry", "card_cvv"}:
                for kind in ("card_number", "card_expiry", "card_cvv"):
                    self._cues.pop(kind, None)  # an order or phone number asked for: not card data
            for kind in asked - {"other"}:
                self._cues[kind] = _Cue(at=f.end, asker=track)
        if card_said and finals:
            # The expiry and code usually follow a card number: its speaker's next numbers are card data
            # until the other party speaks again without a request.
            other = "outbound" if track == "inbound" else "inbound"
            self._cues["card_number"] = _Cue(at=finals[-1].end, asker=other, answered=True)

    def _scan(
        self, lead: list[str], tokens: list[str], at: float, track: str
    ) -> tuple[list[Hit], int | None, str]:
        """Hits over ``lead + tokens``, and where an open unmasked run at the end starts (its digits)."""
        whole = lead + tokens
        context, ssn = self._context(at, track)
        hits = detect(whole, kinds=self.kinds, context=context, ssn_context=ssn)
        found = runs(whole)
        if found and found[-1].last == len(whole) - 1:
            run = found[-1]
            if not any(h.first <= run.last <= h.last for h in hits):
                return hits, run.first, run.digits
        return hits, None, ""

    # -- events -----------------------------------------------------------------------------------

    def partial(self, partial: events.Partial) -> events.Partial | None:
        """The partial masked, with an open trailing run cut off; ``None`` when nothing is left to show
        (or when redaction failed: fail closed)."""
        if not self.enabled:
            return partial
        try:
            return self._partial(partial)
        except Exception as exc:  # a bug must withhold the words, never show them
            log.error("redaction failed (%s): partial withheld", type(exc).__name__,
                      extra={"call_sid": partial.call_sid})  # fmt: skip
            return None

    def _partial(self, partial: events.Partial) -> events.Partial | None:
        st = self._track(partial.track)
        lead = st.tail_text + [t for f in st.held for t in _text_tokens(f)]
        tokens = partial.text.split()
        hits, open_at, _ = self._scan(lead, tokens, partial.start, partial.track)
        local = _local(hits, len(lead), len(tokens))
        if open_at is not None:
            cut = max(0, open_at - len(lead))
            tokens = tokens[:cut]
            local = [h for h in local if h.last < cut]
        text = _masked_text(tokens, local)
        if not text:
            return None
        return msgspec.structs.replace(partial, text=text) if text != partial.text else partial

    def final(self, final: events.Final) -> None:
        if not self.enabled:
            self.emit_final(final)
            return
        self._track(final.track).held.append(final)
        self._safely(final.track, force=False)

    def flush(self) -> None:
        """Release every held final: the call ends, or the batch transcript is complete (no run can
        continue any more, so an open run is judged as it is)."""
        for track in list(self._tracks):
            self._safely(track, force=True, last=True)

    def _deadline(self, track: str) -> None:
        self._track(track).timer = None
        self._safely(track, force=True)

    def _safely(self, track: str, *, force: bool, last: bool = False) -> None:
        """:meth:`_release`, failing closed: a bug withholds the finals in hand, never shows them."""
        st = self._track(track)
        try:
            self._release(track, force=force, last=last)
        except Exception as exc:
            sid = st.held[0].call_sid if st.held else ""
            log.error("redaction failed (%s): %d final(s) withheld", type(exc).__name__, len(st.held),
                      extra={"call_sid": sid})  # fmt: skip
            st.held, st.tail_text, st.tail_words = [], [], []

    def _release(self, track: str, *, force: bool, last: bool = False) -> None:
        st = self._track(track)
        group = st.held
        if not group:
            return
        at = group[0].start
        text_parts = [_text_tokens(f) for f in group]
        word_parts = [_word_tokens(f) for f in group]
        text_all = [t for p in text_parts for t in p]
        word_all = [t for p in word_parts for t in p]
        text_hits, text_open, text_digits = self._scan(st.tail_text, text_all, at, track)
        word_hits, word_open, word_digits = self._scan(st.tail_words, word_all, at, track)
        if (text_open is not None or word_open is not None) and not force:
            if st.timer is None and self.hold_seconds is not None:
                st.timer = asyncio.get_running_loop().call_later(self.hold_seconds, self._deadline, track)
            return
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        # Released with a run still open: mask it if it shows more than a receipt would.
        new_tail_text: list[str] = []
        new_tail_words: list[str] = []
        if last:
            text_open = word_open = None
        if text_open is not None:
            if len(text_digits) > SHOWN_DIGITS:
                text_hits.append(Hit(text_open, len(st.tail_text) + len(text_all) - 1, "number"))
            else:
                new_tail_text = (st.tail_text + text_all)[text_open:]
        if word_open is not None:
            if len(word_digits) > SHOWN_DIGITS:
                word_hits.append(Hit(word_open, len(st.tail_words) + len(word_all) - 1, "number"))
            else:
                new_tail_words = (st.tail_words + word_all)[word_open:]
        t_off, w_off = len(st.tail_text), len(st.tail_words)
        st.held, st.tail_text, st.tail_words = [], new_tail_text, new_tail_words
        for final, tp, wp in zip(group, text_parts, word_parts, strict=True):
            th, wh = _local(text_hits, t_off, len(tp)), _local(word_hits, w_off, len(wp))
            t_off += len(tp)
            w_off += len(wp)
            for h in wh:
                span = final.words[h.first : h.last + 1]
                self.spans.append(Redaction(track=final.track, start=span[0].start, end=span[-1].end, kind=h.kind))
            if th or wh:
                final = msgspec.structs.replace(
                    final,
                    text=_masked_text(tp, th) if th else final.text,
                    words=_masked_words(final.words, wh) if wh else final.words,
                )
            self.emit_final(final)
        self._update_cues(track, group, any(h.kind == "card_number" for h in text_hits + word_hits))

    def close(self) -> None:
        """Cancel the deadlines (held finals are dropped: call :meth:`flush` first to keep them)."""
        for st in self._tracks.values():
            if st.timer is not None:
                st.timer.cancel()
                st.timer = None


__all__ = ["CONTEXT_SECONDS", "HOLD_SECONDS", "SHOWN_DIGITS", "LiveRedactor"]
