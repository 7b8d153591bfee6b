"""Finding card data and social security numbers in a recognizer's words.

Recognizers write a spoken number every way there is: ``4111 1111 1111 1111``, ``four one one
one``, ``forty one eleven``, ``double four``, ``oh seven slash twenty six``, with ``uh`` in the middle.
:func:`runs` folds a token list into *digit runs*, each knowing the tokens it came from (so a mask
keeps the words' timings). text2num's ``alpha2digit`` converts number words too, but on a string:
it gives no word offsets, and leaves ``double``, ``oh`` and hesitations as words, so this module
parses the few forms a caller uses to read digits itself.

What is masked (:func:`detect`):

* ``card_number``: a run holding 13-19 digits that pass the Luhn check (a window of the run, so a
  card number said together with its expiry is found too);
* ``card_expiry`` / ``card_cvv``: a run of 2 or more digits while a card request is open (the agent
  asked for the card, its expiry or security code, or a card number was just said);
* ``ssn``: nine digits shaped like a US social security number, formatted ``ddd-dd-dddd`` or said
  while an SSN request is open.

Amounts (``$25``, ``25.50``), ordinals and numbers named as orders, phones or references are not.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

#: Entity kinds a deployment can switch on (``BRIDGE_REDACT``): ``card`` covers number, expiry and CVV.
KINDS = ("card", "ssn")

#: A call's ``redact`` parameter (``bridge/options.py``) -> kinds it adds to ``BRIDGE_REDACT`` (never removes).
CATEGORIES = {"pci": "card", "card": "card", "ssn": "ssn", "pii": "ssn"}


def kinds_for(categories: Sequence[str] | str) -> frozenset[str]:
    """The kinds a call's ``redact`` categories ask for (a comma-separated string or a list); others ignored."""
    items = categories.split(",") if isinstance(categories, str) else categories
    return frozenset(CATEGORIES[c] for c in (i.strip().lower() for i in items) if c in CATEGORIES)


MASKS = {
    "card_number": "[card number]",
    "card_expiry": "[card expiry]",
    "card_cvv": "[security code]",
    "ssn": "[ssn]",
    "number": "[number]",
}

_UNITS = {"zero": 0, "oh": 0, "o": 0, "nought": 0, "naught": 0, "one": 1, "two": 2, "three": 3, "four": 4,
          "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}  # fmt: skip
_TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
          "seventeen": 17, "eighteen": 18, "nineteen": 19}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}  # fmt: skip
_REPEAT = {"double": 2, "triple": 3}
#: Words that may sit inside a run without ending it (hesitations, separators).
_FILLERS = {"uh", "um", "er", "erm", "ah", "hmm", "mm", "dash", "-", "\u2013", "and", "slash", "/"}
_PUNCT = ".,;:!?\"'()[]{}…"
_DIGITS = re.compile(r"\d+(?:[-/ ]\d+)*")
_MONTHS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
           "dec"}  # fmt: skip

#: Requests that open a card context, by what they ask for (matched on lower-case text).
CUES: dict[str, re.Pattern[str]] = {
    "card_number": re.compile(
        r"\b(card(?:'s)? (?:number|details|digits)|numbers? on (?:the|your) card|long number)\b"
    ),
    "card_expiry": re.compile(r"\b(expir\w*|exp date|valid (?:thru|through|until)|expires?)\b"),
    "card_cvv": re.compile(
        r"\b(security (?:code|number)|cvv2?|cvc2?|cv2|verification (?:code|number)|"
        r"(?:three|four|3|4)[- ]digits? (?:code|number )?on the (?:back|front))\b"
    ),
    "ssn": re.compile(r"\b(social security|social|ssn)\b"),
}
#: Words a recognizer writes for a digit it misheard (``for one one one``): tried before a run for the card check.
_HOMOPHONES = {"for": "4", "fore": "4", "to": "2", "too": "2", "won": "1", "ate": "8"}
#: Numbers named as something else are not card data even inside a card context.
_NAMED = re.compile(r"\b(order|phone|telephone|reference|ticket|confirmation|extension|zip|postcode|invoice)\b")


def plain(token: str) -> str:
    return token.lower().strip(_PUNCT)


@dataclasses.dataclass
class Run:
    """Consecutive tokens ``[first, last]`` that spell ``digits`` (fillers inside included)."""

    first: int
    last: int
    digits: str
    #: Written as ``ddd-dd-dddd``.
    ssn_shaped: bool = False


def _token_digits(token: str) -> str | None:
    """Digits a written token holds (``4111-1111`` -> ``41111111``); ``None`` for amounts, decimals, ordinals."""
    t = token.strip(_PUNCT + "-")
    if not t or "$" in t or "%" in t or "£" in t or "€" in t:
        return None
    if _DIGITS.fullmatch(t):
        return re.sub(r"\D", "", t)
    return None


def _word_value(word: str) -> tuple[str, int] | None:
    """``(class, value)`` of a number word: unit, teen, tens, hundred, repeat; ``forty-one`` is a teen-like pair."""
    if word in _UNITS:
        return "unit", _UNITS[word]
    if word in _TEENS:
        return "pair", _TEENS[word]
    if word in _TENS:
        return "tens", _TENS[word]
    if word == "hundred":
        return "hundred", 100
    if word in _REPEAT:
        return "repeat", _REPEAT[word]
    if "-" in word:
        head, _, tail = word.partition("-")
        if head in _TENS and tail in _UNITS and _UNITS[tail]:
            return "pair", _TENS[head] + _UNITS[tail]
    return None


def runs(tokens: Sequence[str]) -> list[Run]:
    """Fold tokens into digit runs (see the module docstring for the forms understood)."""
    out: list[Run] = []
    cur: Run | None = None
    pad = False  # after "<unit> hundred": the next number gives two digits ("one hundred five" -> 105)
    i, n = 0, len(tokens)
    while i < n:
        raw = tokens[i]
        word = plain(raw)
        written = _token_digits(raw)
        value = _word_value(word) if written is None else None
        piece: str | None = None
        consumed = 1
        if written is not None:
            piece = written
        elif value is not None:
            cls, v = value
            if cls == "repeat":
                nxt = plain(tokens[i + 1]) if i + 1 < n else ""
                nv = _word_value(nxt) or (("unit", int(nxt)) if nxt.isdigit() and len(nxt) == 1 else None)
                if nv is not None and nv[0] == "unit":
                    piece, consumed = str(nv[1]) * v, 2
            elif cls == "tens":
                nxt = plain(tokens[i + 1]) if i + 1 < n else ""
                if nxt in _UNITS and _UNITS[nxt] > 0 and nxt not in ("o", "oh"):
                    piece, consumed = str(v + _UNITS[nxt]), 2
                else:
                    piece = str(v)
            elif cls == "hundred":
                # "four hundred" after a unit: the unit already counted, add two digits ("four hundred eleven").
                if cur is not None and cur.last == i - 1 and cur.digits:
                    rest = plain(tokens[i + 1]) if i + 1 < n else ""
                    rv = _word_value(rest)
                    if rv is not None and rv[0] in ("pair", "tens", "unit") and rest not in ("o", "oh"):
                        piece, pad = "", True
                    else:
                        piece = "00"
            else:
                piece = str(v)
        if piece and pad and value is not None and value[0] != "hundred":
            piece, pad = piece.zfill(2), False
        if piece is not None:
            if cur is None:
                cur = Run(first=i, last=i + consumed - 1, digits=piece)
            else:
                cur.last, cur.digits = i + consumed - 1, cur.digits + piece
            if written is not None and re.fullmatch(r"\d{3}-\d{2}-\d{4}", raw.strip(_PUNCT)):
                cur.ssn_shaped = True
            i += consumed
            continue
        if cur is not None and word in _FILLERS:
            i += 1
            continue
        if cur is not None:
            out.append(cur)
            cur = None
        pad = False
        i += 1
    if cur is not None:
        out.append(cur)
    for r in out:  # a run never ends on a filler
        while r.last > r.first and plain(tokens[r.last]) in _FILLERS:
            r.last -= 1
    return [r for r in out if r.digits]


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def has_card(digits: str) -> bool:
    """A 13-19 digit window of ``digits`` passes Luhn (cards said with their expiry, or within a longer run)."""
    n = len(digits)
    if n < 13:
        return False
    for size in range(min(19, n), 12, -1):
        for start in range(n - size + 1):
            window = digits[start : start + size]
            if window[0] in "23456" and luhn(window):
                return True
    return False


def ssn_valid(digits: str) -> bool:
    """Nine digits the SSA could have issued (area not 000, 666 or 9xx; group and serial not zero)."""
    return (
        len(digits) == 9
        and digits[:3] not in ("000", "666")
        and digits[0] != "9"
        and digits[3:5] != "00"
        and digits[5:] != "0000"
    )


def cues(text: str) -> set[str]:
    """Which requests (``CUES``) a text makes; ``other`` when it names another kind of number."""
    low = text.lower()
    found = {kind for kind, pattern in CUES.items() if pattern.search(low)}
    return found | {"other"} if _NAMED.search(low) else found


@dataclasses.dataclass(frozen=True)
class Hit:
    """Tokens ``[first, last]`` to mask as ``kind``."""

    first: int
    last: int
    kind: str


def detect(
    tokens: Sequence[str], *, kinds: frozenset[str], context: str | None = None, ssn_context: bool = False
) -> list[Hit]:
    """Spans of ``tokens`` to mask. ``context`` is the open card request (``card_number``, ``card_expiry``,
    ``card_cvv``) if any; ``ssn_context`` says an SSN was asked for."""
    hits: list[Hit] = []
    card, ssn = "card" in kinds, "ssn" in kinds
    for run in runs(tokens):
        before = " ".join(plain(t) for t in tokens[max(0, run.first - 4) : run.first])
        local = cues(before)
        digits = run.digits
        first = run.first
        if run.first > 0 and plain(tokens[run.first - 1]) in _MONTHS:
            first -= 1  # "July twenty six": the month goes too
        misheard = _HOMOPHONES.get(plain(tokens[run.first - 1])) if run.first > 0 else None
        if card and (has_card(digits) or (misheard is not None and has_card(misheard + digits))):
            hits.append(Hit(run.first - (misheard is not None and not has_card(digits)), run.last, "card_number"))
            context = context or "card_number"  # what follows a card number is likely its expiry and code
            continue
        if ssn and ssn_valid(digits) and (run.ssn_shaped or ssn_context or "ssn" in local):
            hits.append(Hit(run.first, run.last, "ssn"))
            continue
        if not card or len(digits) < 2 or _NAMED.search(before):
            continue
        asked = next((k for k in ("card_cvv", "card_expiry", "card_number") if k in local), None) or context
        if asked is None:
            continue
        if asked == "card_number" and len(digits) < 13:
            # An answer to a card request that is not a whole card: misheard, or the expiry or code said next.
            if len(digits) == 4 and 1 <= int(digits[:2]) <= 12:
                asked = "card_expiry"
            elif len(digits) == 3:
                asked = "card_cvv"
        hits.append(Hit(first if asked == "card_expiry" else run.first, run.last, asked))
    return hits


__all__ = [
    "CATEGORIES", "CUES", "KINDS", "MASKS", "Hit", "Run", "cues", "detect", "has_card", "kinds_for", "luhn", "plain",
    "runs", "ssn_valid",
]
