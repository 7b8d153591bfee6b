"""The ElevenLabs Scribe v2 Realtime client against a local server replaying recorded messages."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from bridge.audio import frames
from bridge.recognizers.base import (
    RecognizerConnectError,
    RecognizerError,
    RecognizerEvent,
    RecognizerInputError,
    RecognizerRejected,
    RecognizerThrottled,
    StreamOptions,
    Transcript,
)
from bridge.recognizers.elevenlabs.live import ElevenLabsRecognizer, ElevenLabsStream
from bridge.recognizers.elevenlabs.wire import (
    ERROR_TYPES,
    SOFT_ERRORS,
    ErrorMessage,
    InputAudioChunk,
    SessionStarted,
    decode_server,
    encode,
)
from bridge.recognizers.resilience import RetryPolicy
from bridge.testing import ScriptedScribeServer, scripted_finals
from tests.support import eventually
from tests.support.streams import Run

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "elevenlabs"
OPTIONS = StreamOptions(call_sid="CAel", track="inbound")
BPS = 8000

pytestmark = pytest.mark.timeout(30)


def lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


@dataclasses.dataclass
class FakeScribe:
    """Answers like Scribe: session_started, the VAD session after 2 s of audio, a reply per commit."""

    after_audio: list[str] = dataclasses.field(default_factory=lambda: lines("vad_session.jsonl"))
    on_commit: list[str] = dataclasses.field(default_factory=lambda: lines("commit_response.jsonl"))
    on_connect: list[str] = dataclasses.field(default_factory=list)
    reject_status: int | None = None
    path: str = ""
    headers: Headers | None = None
    chunks: list[dict[str, object]] = dataclasses.field(default_factory=list)
    audio: bytearray = dataclasses.field(default_factory=bytearray)
    url: str = ""

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.path, self.headers = request.path, request.headers
        if self.reject_status is not None:
            return connection.respond(self.reject_status, '{"detail": "invalid_api_key"}')
        return None

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(lines("session_started.json")[0])
        for line in self.on_connect:
            await ws.send(line)
        sent_vad = False
        async for message in ws:
            chunk = json.loads(message)
            self.chunks.append(chunk)
            self.audio += base64.b64decode(str(chunk["audio_base_64"]))
            if not sent_vad and len(self.audio) >= 2 * BPS:
                sent_vad = True
                for line in self.after_audio:
                    await ws.send(line)
            if chunk["commit"]:
                for line in self.on_commit:
                    await ws.send(line)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeScribe]:
        async with serve(self.handler, "127.0.0.1", 0, process_request=self.process_request) as server:
            self.url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"
            yield self


async def collect(stream: ElevenLabsStream) -> list[RecognizerEvent]:
    return [event async for event in stream.events()]


async def test_session_query_auth_batching_and_transcripts() -> None:
    audio = bytes(range(256)) * 94  # 3.008 s
    async with FakeScribe().running() as scribe:
        stream = await ElevenLabsRecognizer(scribe.url, api_key="xi-key").open(OPTIONS)
        reader = asyncio.create_task(collect(stream))
        for frame in frames(audio):
            await stream.send(frame)
        await stream.close(timeout=5)
        events = await reader
    assert urlsplit(scribe.path).path == "/v1/speech-to-text/realtime"
    assert dict(parse_qsl(urlsplit(scribe.path).query)) == {
        "model_id": "scribe_v2_realtime",
        "audio_format": "ulaw_8000",
        "commit_strategy": "vad",
        "include_timestamps": "true",
        "vad_silence_threshold_secs": "1",
        "language_code": "en",
    }
    assert scribe.headers is not None and scribe.headers["xi-api-key"] == "xi-key"
    assert stream.session_id == "0b0a72b5c6e84b4f9a3c1d2e3f405162"
    # Untranscoded bytes, batched into >= 100 ms chunks; the last one commits.
    assert bytes(scribe.audio) == audio
    sizes = [len(base64.b64decode(str(c["audio_base_64"]))) for c in scribe.chunks]
    assert all(size >= 800 for size in sizes[:-1])
    assert [c["commit"] for c in scribe.chunks] == [False] * (len(sizes) - 1) + [True]
    assert all(c["message_type"] == "input_audio_chunk" and c["sample_rate"] == 8000 for c in scribe.chunks)
    assert all("previous_text" not in c for c in scribe.chunks)

    partials = [e for e in events if isinstance(e, Transcript) and not e.is_final]
    finals = [e for e in events if isinstance(e, Transcript) and e.is_final]
    assert [p.text for p in partials] == ["I forgot", "I forgot my password", "Thank you"]
    assert partials[0].start == 0.0 and 2.0 <= partials[0].end <= 3.008
    assert [(f.start, f.end, f.text) for f in finals] == [
        (0.5, 1.9, "I forgot my password."),
        (2.2, 2.8, "Thank you."),
    ]
    assert [w.word for w in finals[0].words] == ["I", "forgot", "my", "password."]
    assert finals[0].words[1].start == 0.62 and 0.9 < finals[0].words[0].confidence < 1.0
    assert finals[1].from_finalize  # produced by the commit at close


async def test_keepalive_silence_is_taken_out_of_the_clock() -> None:
    async with FakeScribe().running() as scribe:
        stream = await ElevenLabsRecognizer(scribe.url).open(OPTIONS)
        reader = asyncio.create_task(collect(stream))
        for frame in frames(b"\x10" * 4800):  # 0.6 s of speech
            await stream.send(frame)
        await stream.keepalive()
        await stream.keepalive()  # 0.2 s of silence inserted at 0.6 s
        for frame in frames(b"\x20" * 20000):
            await stream.send(frame)
        await stream.close(timeout=5)
        events = await reader
    assert scribe.audio[4800:6400] == b"\xff" * 1600
    assert scribe.headers is not None and "xi-api-key" not in scribe.headers
    finals = [e for e in events if isinstance(e, Transcript) and e.is_final]
    # Scribe's clock: "I" 0.5-0.6 (before the silence), "forgot" 0.62-0.98 partly inside it.
    words = [(w.word, round(w.start, 3), round(w.end, 3)) for w in finals[0].words]
    assert words == [("I", 0.5, 0.6), ("forgot", 0.6, 0.78), ("my", 0.8, 1.1), ("password.", 1.12, 1.7)]
    assert (round(finals[1].start, 3), round(finals[1].end, 3)) == (2.0, 2.6)


#: What each realtime error type (``errors.jsonl``, one of each in the SDK's union) does to the stream.
ERROR_KINDS: dict[str, type[Exception]] = {
    "auth_error": RecognizerRejected,
    "quota_exceeded": RecognizerRejected,
    "unaccepted_terms": RecognizerRejected,
    "invalid_request": RecognizerRejected,
    "input_error": RecognizerInputError,
    "rate_limited": RecognizerThrottled,
    "transcriber_error": RecognizerConnectError,
    "session_time_limit_exceeded": RecognizerConnectError,
    "queue_overflow": RecognizerConnectError,
    "resource_exhausted": RecognizerConnectError,
    "insufficient_audio_activity": RecognizerConnectError,
    "error": RecognizerConnectError,
}


ENDING_ERRORS = [line for line in lines("errors.jsonl") if json.loads(line)["message_type"] in ERROR_KINDS]


@pytest.mark.parametrize("line", ENDING_ERRORS)
async def test_error_messages_end_the_stream(line: str) -> None:
    kind = json.loads(line)["message_type"]
    async with FakeScribe(on_connect=[line]).running() as scribe:
        stream = await ElevenLabsRecognizer(scribe.url).open(OPTIONS)
        with pytest.raises(RecognizerError) as info:
            await collect(stream)
        await stream.close(timeout=1)
    assert type(info.value) is ERROR_KINDS[kind]
    assert info.value.reason == kind and kind in str(info.value)
    assert info.value.retryable is (ERROR_KINDS[kind] in (RecognizerThrottled, RecognizerConnectError))


def test_every_error_type_of_the_sdk_union_is_classified() -> None:
    recorded = {json.loads(line)["message_type"] for line in lines("errors.jsonl")}
    assert recorded == ERROR_TYPES
    assert recorded - set(ERROR_KINDS) == SOFT_ERRORS


def test_an_unknown_message_with_an_error_is_a_generic_error() -> None:
    message = decode_server('{"message_type":"brand_new_error","error":"boom"}')
    assert isinstance(message, ErrorMessage) and message.message_type == "error" and "boom" in message.error
    assert decode_server('{"message_type":"speakers_merged","from_speaker_id":"a","to_speaker_id":"b"}') is None


async def test_soft_errors_and_garbage_do_not_end_the_stream() -> None:
    soft = [line for line in lines("errors.jsonl") if json.loads(line)["message_type"] in SOFT_ERRORS]
    noise = [*soft, "{nope", '{"message_type": 3}', '{"message_type":"speakers_merged"}']
    async with FakeScribe(on_connect=noise).running() as scribe:
        stream = await ElevenLabsRecognizer(scribe.url).open(OPTIONS)
        reader = asyncio.create_task(collect(stream))
        for frame in frames(b"\x30" * 24000):
            await stream.send(frame)
        await stream.close(timeout=5)
        events = await reader
    assert stream.garbage_count == 2
    assert [e.text for e in events if isinstance(e, Transcript) and e.is_final] == [
        "I forgot my password.",
        "Thank you.",
    ]


async def test_committed_without_timestamps_still_yields_a_final() -> None:
    plain = [line for line in lines("commit_response.jsonl") if "with_timestamps" not in line]
    async with FakeScribe(after_audio=[], on_commit=plain).running() as scribe:
        stream = await ElevenLabsRecognizer(scribe.url).open(OPTIONS)
        reader = asyncio.create_task(collect(stream))
        for frame in frames(b"\x30" * 4000):
            await stream.send(frame)
        await stream.close(timeout=0.5)
        events = await reader
    finals = [e for e in events if isinstance(e, Transcript) and e.is_final]
    assert [(f.start, f.end, f.text) for f in finals] == [(0.0, 0.5, "Thank you.")]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, RecognizerRejected),
        (403, RecognizerRejected),
        (429, RecognizerThrottled),
        (503, RecognizerConnectError),
    ],
)
async def test_refused_upgrade(status: int, kind: type[Exception]) -> None:
    async with FakeScribe(reject_status=status).running() as scribe:
        with pytest.raises(RecognizerError) as info:
            await ElevenLabsRecognizer(scribe.url, api_key="bad").open(OPTIONS)
    assert type(info.value) is kind


def test_decode_reads_every_recorded_error() -> None:
    for line in lines("errors.jsonl"):
        message = decode_server(line)
        assert isinstance(message, ErrorMessage) and message.message_type == json.loads(line)["message_type"]


def test_regression_quota_exceeded_error_is_not_a_name_scribe_sends() -> None:
    """The old fixture's ``quota_exceeded_error`` is in no SDK type: decoded as generic, not as quota."""
    message = decode_server('{"message_type":"quota_exceeded_error","error":"x"}')
    assert isinstance(message, ErrorMessage) and message.message_type == "error"


# -- against the scripted Scribe server (bridge.testing.elevenlabs), messages in the SDK's shapes ----

SCRIPTED_AUDIO = bytes(range(256)) * 110  # 3.52 s


async def test_scripted_scribe_session_yields_the_scripted_finals() -> None:
    async with ScriptedScribeServer(api_key="xi") as server:
        stream = await ElevenLabsRecognizer(server.url, api_key="xi").open(OPTIONS)
        reader = asyncio.create_task(collect(stream))
        for frame in frames(SCRIPTED_AUDIO):
            await stream.send(frame)
        await stream.close(timeout=5)
        events = await reader
    finals = [(round(e.start, 3), round(e.end, 3), e.text) for e in events if isinstance(e, Transcript) and e.is_final]
    assert finals == [(round(s, 3), round(e, 3), w) for s, e, w in scripted_finals(SCRIPTED_AUDIO)]
    assert bytes(server.connections[0].audio) == SCRIPTED_AUDIO
    assert server.connections[0].errors == []


async def test_scripted_scribe_refuses_a_wrong_key_with_auth_error() -> None:
    async with ScriptedScribeServer(api_key="right") as server:
        stream = await ElevenLabsRecognizer(server.url, api_key="wrong").open(OPTIONS)
        with pytest.raises(RecognizerRejected) as info:
            await collect(stream)
        await stream.close(timeout=1)
    assert info.value.reason == "auth_error" and server.connections[0].errors == ["auth_error"]


async def test_regression_input_error_is_not_retried() -> None:
    """``input_error`` ("unsupported audio format or invalid input") used to be retried up to ten
    times per track, replaying the same audio each time; it now fails the track at once."""
    policy = RetryPolicy(keepalive_interval=0.15, backoff_base=0.01, backoff_cap=0.02, max_ingest_rate=math.inf)
    async with ScriptedScribeServer() as server:
        server.fail_next_audio("input_error")
        run = Run(ElevenLabsRecognizer(server.url), OPTIONS, policy=policy)
        await run.start()
        await run.feed(SCRIPTED_AUDIO[:8000])
        await run.close(timeout=2)
    assert isinstance(run.error, RecognizerInputError) and run.error.reason == "input_error"
    assert len(server.connections) == 1
    assert run.state_names == ["connecting", "connected", "failed"]


async def test_a_mismatched_sample_rate_is_an_input_error_from_the_fake() -> None:
    """The fake checks what Scribe checks: chunks at the session's rate (here: PCM 16 kHz session,
    8 kHz chunks)."""
    async with ScriptedScribeServer() as server:
        ws = await websockets.connect(f"{server.url}/v1/speech-to-text/realtime?model_id=m&audio_format=pcm_16000")
        chunk = InputAudioChunk(audio_base_64=base64.b64encode(b"\x00" * 320).decode(), commit=False, sample_rate=8000)
        await ws.send(encode(chunk).decode())
        messages = []
        with contextlib.suppress(websockets.ConnectionClosedError):
            async for m in ws:
                messages.append(decode_server(m))
    assert ws.close_code == 1008
    assert isinstance(messages[0], SessionStarted) and messages[0].config.sample_rate == 16000
    assert isinstance(messages[1], ErrorMessage) and messages[1].message_type == "input_error"
    assert server.connections[0].errors == ["input_error"]


async def test_previous_text_is_sent_after_a_reconnect_and_keyterms_as_scribe_takes_them() -> None:
    options = dataclasses.replace(OPTIONS, keyterms=("Acme", "Zephyr Cloud", "a keyterm far too long for Scribe"))
    policy = RetryPolicy(keepalive_interval=5, backoff_base=0.01, backoff_cap=0.02, max_ingest_rate=math.inf)
    async with ScriptedScribeServer() as server:
        run = Run(ElevenLabsRecognizer(server.url), options, policy=policy)
        await run.start()
        await run.feed(SCRIPTED_AUDIO[: 2 * 8000 + 800])
        await eventually(lambda: len(run.finals) == 2)
        await server.drop_all()
        await run.feed(SCRIPTED_AUDIO[2 * 8000 + 800 :])
        await run.close(timeout=5)
    assert run.error is None and len(server.connections) == 2
    first, second = server.connections
    assert [v for k, v in first.query if k == "keyterms"] == ["Acme", "Zephyr Cloud"]
    assert first.previous_texts == []
    words = [w for _, _, w in scripted_finals(SCRIPTED_AUDIO)]
    assert second.previous_texts == [" ".join(words[:2])]
    assert second.chunks[0].previous_text is not None  # allowed on the first chunk only
    assert [w for _, _, w in run.finals] == words
