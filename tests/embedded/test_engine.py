"""The Whisper engine's own features: packed decoding of several finals, and the prompt's context."""

from __future__ import annotations

import json

import pytest

from bridge.audio import mulaw_to_float, read_wav, to_16k
from bridge.embedded.engine import MAX_CONTEXT_TOKENS, load_engine
from bridge.wer import wer
from tests.support import FIXTURES

pytestmark = pytest.mark.timeout(120)


def test_packed_finals_come_back_to_the_piece_they_were_said_in() -> None:
    clips = [c for i, c in enumerate(json.loads((FIXTURES / "audio" / "clips.json").read_text())) if i in (0, 2)]
    audios = [to_16k(mulaw_to_float(read_wav(FIXTURES / "audio" / c["file"]).channel_bytes(0))) for c in clips]
    engine = load_engine("tiny.en", workers=1)
    hyps = engine.transcribe_packed(audios, beam_size=5)
    assert len(hyps) == 2  # 3.3 s + seam + 3.1 s: one window
    for clip, audio, hyp in zip(clips, audios, hyps, strict=True):
        assert wer(clip["text"], hyp.text).rate <= 0.35, (clip["text"], hyp.text)
        assert hyp.words and all(0.0 <= w.start <= w.end <= audio.size / 16000 for w in hyp.words)


def test_the_prompt_holds_keyterms_and_the_end_of_the_previous_words() -> None:
    engine = load_engine("tiny.en", workers=1)
    assert engine.context_tokens() == []
    tokens = engine.context_tokens("Zyphrex", "we talked about the invoice " * 40)
    assert len(tokens) == MAX_CONTEXT_TOKENS
    assert engine.tokenizer.decode(tokens).endswith("the invoice")
    short = engine.context_tokens("Zyphrex", "hello there")
    assert engine.tokenizer.decode(short).strip() == "Zyphrex hello there"
