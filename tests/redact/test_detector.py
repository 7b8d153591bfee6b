"""The detector: spoken and written numbers to digit runs, and which runs are card data or SSNs.

Precision and recall over the whole text fixture set are ``bridge bench redaction``'s; here each
form is pinned down, and hypothesis checks the properties that must hold for any number."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.bench.redaction import load_cases, score
from bridge.redact.detector import detect, has_card, luhn, runs, ssn_valid
from tests.support import FIXTURES

CARD = frozenset({"card"})
ALL = frozenset({"card", "ssn"})
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _kinds(text: str, kinds: frozenset[str] = ALL, **kw: object) -> list[str]:
    return [h.kind for h in detect(text.split(), kinds=kinds, **kw)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("4111 1111 1111 1111", "4111111111111111"),
        ("four one one one, one one one one", "41111111"),
        ("forty one eleven", "4111"),
        ("double four triple seven", "44777"),
        ("oh seven slash twenty six", "0726"),
        ("four uh one um one one", "4111"),
        ("4111-1111-1111-1111.", "4111111111111111"),
        ("-4 -1 -1", "411"),
        ("one hundred five", "105"),
        ("forty-one eleven", "4111"),
    ],
)
def test_spoken_and_written_forms_fold_into_one_run(text: str, digits: str) -> None:
    found = runs(text.split())
    assert [r.digits for r in found] == [digits]


def test_amounts_ordinals_and_decimals_are_not_digits() -> None:
    assert runs("$25 and 25.50 on the 21st".split()) == []


def test_luhn_and_card_windows() -> None:
    assert luhn("4111111111111111") and not luhn("4111111111111112")
    assert has_card("41111111111111110928")  # the card said together with its expiry
    assert not has_card("411111111111")  # twelve digits are no card
    assert ssn_valid("123456789") and not ssn_valid("666123456") and not ssn_valid("123006789")


@pytest.mark.parametrize(
    "text",
    [
        "my card is 4111 1111 1111 1111",
        "it's four one one one one one one one one one one one one one one one",
        "forty one eleven eleven eleven eleven eleven eleven eleven",
        "5555 5555 5555 4444 thanks",
        "three seven eight two eight two two four six three one double zero zero five",
    ],
)
def test_card_numbers_are_found_however_said(text: str) -> None:
    assert _kinds(text, CARD) == ["card_number"]


@pytest.mark.parametrize(
    "text",
    [
        "my order number is four five seven two nine",
        "call me on 555 123 4567",
        "it costs twenty five dollars",
        "the invoice came to $1,250.00",
        "my flight is on the 21st of March",
        "4111 1111 1111 1112",  # fails Luhn: not a card
    ],
)
def test_other_numbers_are_left_alone(text: str) -> None:
    assert _kinds(text) == []


def test_expiry_and_cvv_are_masked_only_after_a_card_request() -> None:
    assert _kinds("it expires oh nine twenty eight") == ["card_expiry"]
    assert _kinds("the security code is seven three seven") == ["card_cvv"]
    assert _kinds("seven three seven") == []
    assert _kinds("seven three seven", context="card_cvv") == ["card_cvv"]
    assert _kinds("July twenty six", context="card_expiry") == ["card_expiry"]
    # ...unless the number is named as something else.
    assert _kinds("my order number is 45729", context="card_cvv") == []


def test_ssn_needs_its_shape_or_a_request_and_its_kind() -> None:
    assert _kinds("it is 123-45-6789") == ["ssn"]
    assert _kinds("it is 123 45 6789") == []
    assert _kinds("it is 123 45 6789", ssn_context=True) == ["ssn"]
    assert _kinds("it is 123-45-6789", CARD) == []


def _luhn_complete(prefix: list[int]) -> list[int]:
    for check in range(10):
        if luhn("".join(map(str, [*prefix, check]))):
            return [*prefix, check]
    raise AssertionError


@settings(max_examples=200, deadline=None)
@given(
    body=st.lists(st.integers(0, 9), min_size=14, max_size=17),
    first=st.sampled_from([3, 4, 5, 6]),
    style=st.sampled_from(["digits", "words", "groups"]),
    filler=st.sampled_from(["", "uh", "um"]),
    before=st.sampled_from(["", "sure it is", "okay so"]),
)
def test_any_valid_card_is_masked_whole_however_it_is_read(
    body: list[int], first: int, style: str, filler: str, before: str
) -> None:
    digits = _luhn_complete([first, *body])
    if style == "digits":
        said = [str(d) for d in digits]
    elif style == "words":
        said = [WORDS[d] for d in digits]
    else:
        text = "".join(map(str, digits))
        said = [text[i : i + 4] for i in range(0, len(text), 4)]
    if filler:
        said.insert(len(said) // 2, filler)
    tokens = before.split() + said + ["thanks"]
    hits = detect(tokens, kinds=CARD)
    assert len(hits) == 1 and hits[0].kind == "card_number"
    masked = set(range(hits[0].first, hits[0].last + 1))
    assert {i for i, t in enumerate(tokens) if any(c.isdigit() for c in t) or t in WORDS} <= masked
    assert tokens[hits[0].last] != "thanks"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=12))
def test_twelve_digits_or_fewer_outside_a_card_request_are_never_masked(digits: list[int]) -> None:
    assert detect([WORDS[d] for d in digits], kinds=CARD) == []


def test_the_text_fixture_set_scores_full_recall() -> None:
    result = score(load_cases(FIXTURES / "redaction" / "texts.toml"))
    assert result.recall == 1.0 and result.precision >= 0.95, result
