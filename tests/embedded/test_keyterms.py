"""Per-stream keyterms (Deepgram's ``keyterm``, ``keywords``) bias the embedded recognizer's decoding.

The fixture clips name products no model has heard of (``fixtures/make_audio.py keyterms``): without
the keyterm the recognizer writes something else, with it the name comes out as spelled.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from bridge.audio import read_wav
from bridge.embedded.params import ParamError, parse_params
from tests.embedded.test_transcripts import QUERY, finals_text, transcribe
from tests.support import FIXTURES

pytestmark = pytest.mark.timeout(120)
CLIPS = json.loads((FIXTURES / "audio" / "keyterms.json").read_text())


@pytest.mark.parametrize("clip", CLIPS, ids=[c["keyterm"] for c in CLIPS])
async def test_a_rare_product_name_is_recognised_with_its_keyterm_only(
    two_pass_recognizer_url: str, clip: dict[str, str]
) -> None:
    audio = read_wav(FIXTURES / "audio" / clip["file"]).channel_bytes(0)
    term = clip["keyterm"]
    plain = finals_text(await transcribe(two_pass_recognizer_url, audio))
    biased = finals_text(await transcribe(two_pass_recognizer_url, audio, query=f"{QUERY}&keyterm={quote(term)}"))
    assert "subscription" in plain.lower() and term not in plain
    assert term in biased, biased


def test_keyterm_parameters_are_validated() -> None:
    class Query(dict[str, str]):
        def __init__(self, pairs: list[tuple[str, str]]) -> None:
            super().__init__(pairs)
            self.pairs = pairs

        def getlist(self, name: str) -> list[str]:
            return [v for k, v in self.pairs if k == name]

    params = parse_params(Query([("keyterm", "Zyphrex"), ("keyterm", "Vantrix Pro"), ("keywords", "Acme:2.5")]))
    assert params.keyterms == ("Zyphrex", "Vantrix Pro", "Acme")
    with pytest.raises(ParamError, match="boost"):
        parse_params(Query([("keywords", "Acme:lots")]))
    with pytest.raises(ParamError, match="at most"):
        parse_params(Query([("keyterm", f"t{i}") for i in range(101)]))
