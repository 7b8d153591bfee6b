"""Deepgram pre-recorded and ElevenLabs batch engines against a local server replaying recorded responses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.audio import read_wav as read_recording
from bridge.recognizers.deepgram.batch import DeepgramBatchEngine
from bridge.recognizers.elevenlabs.batch import ElevenLabsBatchEngine
from bridge.transcripts import EngineError
from tests.support import FIXTURES
from tests.support import SHORT_CALL as CALL
from tests.support.fakehttp import FakeHttp, Route


@pytest.fixture
def fake() -> Iterator[FakeHttp]:
    server = FakeHttp().start()
    try:
        yield server
    finally:
        server.stop()


async def test_deepgram_prerecorded(fake: FakeHttp) -> None:
    body = (FIXTURES / "deepgram" / "prerecorded_multichannel.json").read_bytes()
    fake.routes[("POST", "/v1/listen")] = Route(200, body)
    rec = read_recording(CALL)
    engine = DeepgramBatchEngine("dg-key", base_url=fake.url)
    utts = await engine.transcribe(rec, ["inbound", "outbound"])
    assert [(u.track, u.speaker, u.text) for u in utts] == [
        ("outbound", "Agent", "Customer support, how can I help?"),
        ("inbound", "Caller", "I forgot my password and cannot log in."),
    ]
    assert utts[1].words[0].start == 4.62 and utts[1].words[-1].punctuated_word == "in."
    req = fake.seen[0]
    assert req.headers["authorization"] == "Token dg-key"
    assert "multichannel=true" in req.path and "utterances=true" in req.path and "model=nova-3" in req.path
    assert req.body == rec.raw  # the WAV goes as-is


async def test_elevenlabs_batch_multichannel(fake: FakeHttp) -> None:
    body = (FIXTURES / "elevenlabs" / "batch_multichannel.json").read_bytes()
    fake.routes[("POST", "/v1/speech-to-text")] = Route(200, body)
    engine = ElevenLabsBatchEngine("el-key", base_url=fake.url)
    utts = await engine.transcribe(read_recording(CALL), ["inbound", "outbound"])
    got = [(u.track, u.text) for u in utts]
    assert got == [
        ("outbound", "Customer support, how can I help?"),
        ("inbound", "I forgot my password."),
        ("inbound", "Thank you, goodbye."),
    ]
    assert all(w.word for u in utts for w in u.words)  # spacing and audio events dropped
    assert utts[0].words[0].word == "customer" and utts[0].words[0].punctuated_word == "Customer"
    req = fake.seen[0]
    assert req.headers["xi-api-key"] == "el-key"
    assert req.headers["content-type"].startswith("multipart/form-data")
    assert b'name="use_multi_channel"' in req.body and b'name="model_id"' in req.body


async def test_http_errors_are_engine_errors(fake: FakeHttp) -> None:
    fake.routes[("POST", "/v1/listen")] = Route(200, b'{"not": "a deepgram response"}')
    with pytest.raises(EngineError, match="unexpected response"):
        await DeepgramBatchEngine("k", base_url=fake.url).transcribe(read_recording(CALL), [])
    with pytest.raises(EngineError, match="HTTP 404"):
        await ElevenLabsBatchEngine("k", base_url=fake.url).transcribe(read_recording(CALL), [])
