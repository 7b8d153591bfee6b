"""The live redactor: what leaves it (the only way a final or partial reaches Redis and subscribers)
never shows a card number, even one split across finals or still being spoken in a partial."""

from __future__ import annotations

import asyncio
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import events
from bridge.redact.live import LiveRedactor

CARD = frozenset({"card"})
SID = "CA" + "0" * 32
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def final(track: events.Track, start: float, text: str) -> events.Final:
    words = [events.Word(word=w, start=start + i * 0.4, end=start + i * 0.4 + 0.3, punctuated_word=w)
             for i, w in enumerate(text.split())]  # fmt: skip
    end = words[-1].end if words else start
    return events.Final(call_sid=SID, id=events.final_id(track, start), track=track, start=start, end=end,
                        text=text, words=words)  # fmt: skip


def partial(track: events.Track, text: str) -> events.Partial:
    return events.Partial(call_sid=SID, track=track, start=0.0, end=1.0, text=text)


def digits_shown(f: events.Final | events.Partial) -> list[str]:
    texts = [f.text] + ([w.word for w in f.words] if isinstance(f, events.Final) else [])
    return [run for t in texts for run in re.findall(r"\d[\d ]*\d|\d", t)]


def test_a_card_split_across_two_finals_is_held_back_and_never_shown() -> None:
    out: list[events.Final] = []
    r = LiveRedactor(CARD, out.append, hold_seconds=None)
    r.final(final("inbound", 1.0, "my card is 4111 1111"))
    assert out == []  # held: its last words are a digit run that may go on
    r.final(final("outbound", 2.0, "go on"))  # the other track is not held up
    assert [f.track for f in out] == ["outbound"]
    r.final(final("inbound", 3.0, "1111 1111 thanks"))
    caller = [f for f in out if f.track == "inbound"]
    assert [f.text for f in caller] == ["my card is [card number]", "[card number] thanks"]
    assert [w.word for w in caller[0].words] == ["my", "card", "is", "[card number]"]
    mask = caller[0].words[-1]
    assert (mask.start, mask.end) == (caller[0].words[2].start + 0.4, 1.0 + 4 * 0.4 + 0.3)  # the masked words' span
    assert all(not digits_shown(f) for f in caller)
    assert [(s.track, s.kind) for s in r.spans] == [("inbound", "card_number")] * 2


def test_a_partial_never_shows_an_open_digit_run() -> None:
    r = LiveRedactor(CARD, lambda f: None, hold_seconds=None)
    shown = r.partial(partial("inbound", "my card is 4111 1111"))
    assert shown is not None and shown.text == "my card is"
    assert r.partial(partial("inbound", "4111 1111")) is None  # nothing left to show
    closed = r.partial(partial("inbound", "order 45729 please"))
    assert closed is not None and closed.text == "order 45729 please"  # a closed short run is shown


def test_a_partial_continuing_a_held_final_is_judged_with_it() -> None:
    r = LiveRedactor(CARD, lambda f: None, hold_seconds=None)
    r.final(final("inbound", 1.0, "it's 4111 1111"))
    shown = r.partial(partial("inbound", "1111 1111 thanks"))
    assert shown is not None and shown.text == "[card number] thanks"


@settings(max_examples=100, deadline=None)
@given(
    split=st.integers(1, 15),
    as_words=st.booleans(),
    cut_partials=st.integers(1, 6),
)
def test_no_event_ever_shows_a_full_card_whatever_the_finals_and_partials(
    split: int, as_words: bool, cut_partials: int
) -> None:
    """A streaming recognizer's view of the caller reading 4111 1111 1111 1111: growing partials,
    then two finals split anywhere."""
    digits = "4111111111111111"
    said = [WORDS[int(d)] if as_words else d for d in digits]
    tokens = ["sure", "it", "is", *said, "thanks"]
    out: list[events.Final] = []
    r = LiveRedactor(CARD, out.append, hold_seconds=None)
    shown: list[events.Partial | events.Final] = []
    cut = 3 + split
    for n in range(1, cut + 1, cut_partials):
        if (p := r.partial(partial("inbound", " ".join(tokens[:n])))) is not None:
            shown.append(p)
    r.final(final("inbound", 0.0, " ".join(tokens[:cut])))
    for n in range(1, len(tokens) - cut + 1, cut_partials):
        if (p := r.partial(partial("inbound", " ".join(tokens[cut : cut + n])))) is not None:
            shown.append(p)
    r.final(final("inbound", 10.0, " ".join(tokens[cut:])))
    r.flush()
    shown += out
    for ev in shown:
        seen = "".join(c for c in ev.text if c.isdigit())
        spoken = [w for w in ev.text.split() if w in WORDS]
        assert len(seen) <= 6 and len(spoken) <= 6, ev.text
    assert any("[card number]" in f.text for f in out)


async def test_a_held_final_is_released_at_the_deadline_and_a_long_open_run_masked() -> None:
    out: list[events.Final] = []
    released = asyncio.Event()
    r = LiveRedactor(CARD, lambda f: (out.append(f), released.set())[0], hold_seconds=0.05)
    r.final(final("inbound", 1.0, "it is 4111 1111"))
    await asyncio.wait_for(released.wait(), 10)
    assert [f.text for f in out] == ["it is [number]"]


async def test_a_short_run_released_at_the_deadline_still_joins_the_next_final() -> None:
    out: list[events.Final] = []
    released = asyncio.Event()
    r = LiveRedactor(CARD, lambda f: (out.append(f), released.set())[0], hold_seconds=0.05)
    r.final(final("inbound", 1.0, "it is 4111"))
    await asyncio.wait_for(released.wait(), 10)
    assert [f.text for f in out] == ["it is 4111"]  # six digits or fewer may show (as on a receipt)
    r.final(final("inbound", 9.0, "1111 1111 1111 thanks"))
    assert out[-1].text == "[card number] thanks"


def test_flush_releases_everything_held_at_the_end_of_the_call() -> None:
    out: list[events.Final] = []
    r = LiveRedactor(CARD, out.append, hold_seconds=None)
    r.final(final("inbound", 1.0, "call me on 555 123 4567"))
    assert out == []
    r.flush()
    assert [f.text for f in out] == ["call me on 555 123 4567"]


def test_expiry_and_cvv_after_the_agent_asks() -> None:
    out: list[events.Final] = []
    r = LiveRedactor(CARD, out.append, hold_seconds=None)
    for track, at, text in [
        ("outbound", 0.0, "and the expiry date?"), ("inbound", 3.0, "oh nine twenty eight."),
        ("outbound", 6.0, "and the security code on the back?"), ("inbound", 9.0, "737."),
        ("outbound", 12.0, "thanks, what's your order number?"), ("inbound", 15.0, "45729."),
    ]:  # fmt: skip
        r.final(final(track, at, text))  # type: ignore[arg-type]
    r.flush()
    assert [f.text for f in out if f.track == "inbound"] == ["[card expiry].", "[security code].", "45729."]


def test_redaction_off_passes_everything_through() -> None:
    out: list[events.Final] = []
    r = LiveRedactor(frozenset(), out.append)
    f = final("inbound", 1.0, "4111 1111 1111 1111")
    r.final(f)
    p = partial("inbound", "4111 1111")
    assert out == [f] and r.partial(p) is p


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12).filter(lambda t: t.strip() == t and " " not in t), max_size=30))
def test_any_words_are_judged_without_error(tokens: list[str]) -> None:
    """Whatever a recognizer sends (unicode digits, punctuation, huge runs), the redactor answers."""
    out: list[events.Final] = []
    r = LiveRedactor(frozenset({"card", "ssn"}), out.append, hold_seconds=None)
    text = " ".join(t for t in tokens if t.strip())
    r.partial(partial("inbound", text))
    r.final(final("inbound", 0.0, text))
    r.flush()
    assert len(out) == 1


def test_a_redaction_bug_withholds_the_final_rather_than_showing_it() -> None:
    out: list[events.Final] = []
    r = LiveRedactor(CARD, out.append, hold_seconds=None)
    broken = final("inbound", 0.0, "my card is 4111 1111 1111 1111")
    broken.words = broken.words[:2]  # words that do not match the text cannot break the masking...
    r.final(broken)
    assert out and "4111" not in out[0].text
    r._scan = None  # type: ignore[method-assign, assignment]  # ...but a bug in it withholds the final
    r.final(final("inbound", 5.0, "4111 1111 1111 1111 thanks"))
    assert r.partial(partial("inbound", "4111")) is None
    assert len(out) == 1
