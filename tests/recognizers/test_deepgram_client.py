"""The Deepgram live client against recorded wire fixtures and the scripted server, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from websockets.asyncio.server import ServerConnection, serve

from bridge.audio import frames
from bridge.audio import to_twilio_mulaw as read_mulaw_wav
from bridge.recognizers.base import (
    RecognizerConnectError,
    RecognizerEvent,
    RecognizerInputError,
    RecognizerProtocolError,
    RecognizerRejected,
    SpeechStarted,
    StreamOptions,
    Transcript,
    UtteranceEnded,
)
from bridge.recognizers.deepgram.live import DeepgramRecognizer, DeepgramStream
from bridge.testing import ScriptedDeepgramServer, scripted_finals
from tests.support import SHORT_CALL

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "deepgram"
OPTIONS = StreamOptions(call_sid="CAtest", track="inbound")

pytestmark = pytest.mark.timeout(30)


def call_audio() -> bytes:
    return read_mulaw_wav(SHORT_CALL)[0]


async def collect(stream: DeepgramStream) -> list[RecognizerEvent]:
    return [event async for event in stream.events()]


@contextlib.asynccontextmanager
async def replay_server(fixture: str, received: list[str | bytes] | None = None) -> AsyncIterator[str]:
    """A server that answers any connection with the recorded messages of ``fixture``, then closes."""
    lines = (FIXTURES / fixture).read_text().splitlines()

    async def handler(ws: ServerConnection) -> None:
        for line in lines:
            await ws.send(line)
        async for message in ws:
            if received is not None:
                received.append(message)
            if message == '{"type":"CloseStream"}':
                break
        await ws.close()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def test_recorded_session_maps_to_typed_events() -> None:
    received: list[str | bytes] = []
    async with replay_server("live_session.jsonl", received) as url:
        stream = await DeepgramRecognizer(url, model="nova-3").open(OPTIONS)
        reader = asyncio.create_task(collect(stream))
        await stream.send(b"\xff" * 160)
        await stream.close(timeout=5)
        events = await reader
    assert received[0] == b"\xff" * 160
    assert received[-1] == '{"type":"CloseStream"}'
    assert stream.metadata is not None and stream.metadata.duration == 4.9
    assert events[0] == SpeechStarted(timestamp=0.54)
    partial, final = events[1], events[2]
    assert isinstance(partial, Transcript) and not partial.is_final and partial.text == "i forgot my"
    assert isinstance(final, Transcript) and final.is_final and final.speech_final
    assert (final.start, final.end) == (0.0, 3.09)
    assert final.text == "I forgot my password and cannot log in."
    assert [w.punctuated_word for w in final.words][-1] == "in."
    assert events[3] == UtteranceEnded(last_word_end=2.86)
    empty = events[4]
    assert isinstance(empty, Transcript) and empty.is_final and empty.text == "" and empty.words == ()
    last = events[5]
    assert isinstance(last, Transcript) and last.from_finalize and last.text == "Thank you."
    assert last.end == pytest.approx(4.9)
    assert len(events) == 6


async def test_garbage_from_server_is_skipped_and_counted() -> None:
    async with replay_server("garbage.jsonl") as url:
        stream = await DeepgramRecognizer(url).open(OPTIONS)
        reader = asyncio.create_task(collect(stream))
        await stream.close(timeout=5)
        events = await reader
    assert [e.text for e in events if isinstance(e, Transcript)] == ["still here"]
    assert stream.garbage_count == 3


async def test_repeated_garbage_fails_the_stream() -> None:
    async with replay_server("garbage.jsonl") as url:
        stream = await DeepgramRecognizer(url, max_garbage=2).open(OPTIONS)
        with pytest.raises(RecognizerProtocolError):
            await collect(stream)
        await stream.close(timeout=1)


async def test_audio_arrives_untranscoded_with_exact_query_and_auth() -> None:
    audio = call_audio()
    async with ScriptedDeepgramServer(api_key="sekrit") as server:
        recognizer = DeepgramRecognizer(server.url, api_key="sekrit", model="nova-3")
        stream = await recognizer.open(OPTIONS)
        reader = asyncio.create_task(collect(stream))
        for frame in frames(audio):
            await stream.send(frame)
        await stream.send(b"")  # never forwarded as an empty frame
        await stream.close(timeout=5)
        events = await reader
    record = server.connections[0]
    assert urlsplit(record.path).query == (
        "model=nova-3&language=en&encoding=mulaw&sample_rate=8000&channels=1&interim_results=true"
        "&endpointing=300&utterance_end_ms=1000&vad_events=true&punctuate=true&smart_format=false"
    )
    assert record.headers["Authorization"] == "Token sekrit"
    assert bytes(record.audio) == audio
    assert record.frames == [len(f) for f in frames(audio)] and 0 not in record.frames
    assert record.controls == ["CloseStream"]
    finals = [(e.start, e.end, e.text) for e in events if isinstance(e, Transcript) and e.is_final]
    assert finals == scripted_finals(audio)
    assert any(isinstance(e, Transcript) and not e.is_final for e in events)
    assert stream.metadata is not None and stream.metadata.duration == pytest.approx(len(audio) / 8000)


async def test_query_without_interim_results_or_endpointing() -> None:
    options = StreamOptions(
        call_sid="CAq", track="outbound", interim_results=False, endpointing_ms=None, model="nova-2"
    )
    url = DeepgramRecognizer("ws://h", extra_params={"keyterm": "Twilio"}).listen_url(options)
    assert url == (
        "ws://h/v1/listen?model=nova-2&language=en&encoding=mulaw&sample_rate=8000&channels=1"
        "&interim_results=false&endpointing=false&vad_events=true&punctuate=true&smart_format=false"
        "&keyterm=Twilio"
    )


async def test_close_drains_the_last_finals() -> None:
    audio = call_audio()[: 8000 * 3 + 1234]
    async with ScriptedDeepgramServer() as server:
        stream = await DeepgramRecognizer(server.url).open(OPTIONS)
        for frame in frames(audio):
            await stream.send(frame)
        # Nothing read yet: close must still deliver every final, including the 1234-byte tail.
        await stream.close(timeout=5)
        events = await collect(stream)
    finals = [(e.start, e.end, e.text) for e in events if isinstance(e, Transcript) and e.is_final]
    assert finals == scripted_finals(audio)
    assert finals[-1][1] == pytest.approx(len(audio) / 8000)


async def test_finalize_flushes_the_open_window() -> None:
    async with ScriptedDeepgramServer() as server:
        stream = await DeepgramRecognizer(server.url).open(OPTIONS)
        await stream.send(b"\x10" * 4000)
        await stream.finalize()
        async for event in stream.events():
            if isinstance(event, Transcript) and event.is_final:
                assert event.from_finalize and event.end == 0.5
                break
        await stream.close(timeout=5)
    assert server.connections[0].controls == ["Finalize", "CloseStream"]


@pytest.mark.parametrize(("status", "error"), [(401, "INVALID_AUTH"), (403, "INSUFFICIENT_PERMISSIONS"), (400, "")])
async def test_refused_upgrade_is_rejected(status: int, error: str) -> None:
    async with ScriptedDeepgramServer() as server:
        server.reject(status, error)
        with pytest.raises(RecognizerRejected) as info:
            await DeepgramRecognizer(server.url, api_key="bad").open(OPTIONS)
    assert info.value.code == status
    assert info.value.retryable is False
    assert info.value.reason == (error or f"scripted rejection {status}")


async def test_wrong_key_is_rejected() -> None:
    async with ScriptedDeepgramServer(api_key="right") as server:
        with pytest.raises(RecognizerRejected) as info:
            await DeepgramRecognizer(server.url, api_key="wrong").open(OPTIONS)
    assert info.value.code == 401


@pytest.mark.parametrize("status", [429, 503])
async def test_overload_is_a_retryable_connect_error(status: int) -> None:
    async with ScriptedDeepgramServer() as server:
        server.reject(status)
        with pytest.raises(RecognizerConnectError) as info:
            await DeepgramRecognizer(server.url).open(OPTIONS)
    assert info.value.code == status and info.value.retryable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_connection_refused_is_a_connect_error() -> None:
    with pytest.raises(RecognizerConnectError):
        await DeepgramRecognizer(f"ws://127.0.0.1:{_free_port()}").open(OPTIONS)


async def test_open_timeout_is_a_connect_error() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts TCP but never answers the upgrade
    try:
        port = listener.getsockname()[1]
        with pytest.raises(RecognizerConnectError):
            await DeepgramRecognizer(f"ws://127.0.0.1:{port}", open_timeout=0.3).open(OPTIONS)
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (lambda s: s.close_all(1011, "NET-0000"), 1011, "NET-0000"),
        (lambda s: s.close_all(1000, ""), 1000, ""),
    ],
)
async def test_unexpected_close_raises_with_code_and_reason(
    fault: Callable[[ScriptedDeepgramServer], object], code: int, reason: str
) -> None:
    async with ScriptedDeepgramServer() as server:
        stream = await DeepgramRecognizer(server.url).open(OPTIONS)
        await stream.send(b"\x20" * 160)
        await server.wait_for_audio(160)
        await fault(server)  # type: ignore[misc]
        with pytest.raises(RecognizerConnectError) as info:
            await collect(stream)
        assert (info.value.code, info.value.reason) == (code, reason)
        with pytest.raises(RecognizerConnectError):
            await stream.send(b"\x20" * 160)
        await stream.close(timeout=1)


async def test_idle_connection_is_closed_net_0001() -> None:
    async with ScriptedDeepgramServer(idle_timeout=0.3) as server:
        stream = await DeepgramRecognizer(server.url).open(OPTIONS)
        with pytest.raises(RecognizerConnectError) as info:
            await collect(stream)
        assert (info.value.code, info.value.reason) == (1011, "NET-0001")
        await stream.close(timeout=1)


async def test_keepalive_holds_an_idle_connection() -> None:
    async with ScriptedDeepgramServer(idle_timeout=0.4) as server:
        stream = await DeepgramRecognizer(server.url).open(OPTIONS)
        await stream.send(b"\x30" * 800)
        for _ in range(8):  # 1.2 s of silence, four times the idle timeout
            await asyncio.sleep(0.15)
            await stream.keepalive()
        await stream.close(timeout=5)
        events = await collect(stream)
    assert server.connections[0].controls == ["KeepAlive"] * 8 + ["CloseStream"]
    assert [e.end for e in events if isinstance(e, Transcript) and e.is_final] == [0.1]


async def test_abrupt_drop_raises_connect_error() -> None:
    async with ScriptedDeepgramServer() as server:
        server.drop_after(8000 + 400)
        stream = await DeepgramRecognizer(server.url).open(OPTIONS)
        for frame in frames(b"\x40" * 16000):
            with contextlib.suppress(RecognizerConnectError):
                await stream.send(frame)
        events: list[RecognizerEvent] = []
        with pytest.raises(RecognizerConnectError):
            async for event in stream.events():
                events.append(event)
        await stream.close(timeout=1)
    assert [(e.start, e.end) for e in events if isinstance(e, Transcript) and e.is_final] == [(0.0, 1.0)]


async def test_close_1008_data_is_an_input_error_never_retried() -> None:
    async with ScriptedDeepgramServer() as server:
        server.refuse_audio()
        stream = await DeepgramRecognizer(server.url).open(OPTIONS)
        await stream.send(b"\x20" * 160)
        with pytest.raises(RecognizerInputError) as info:
            await collect(stream)
        await stream.close(timeout=1)
    assert (info.value.code, info.value.reason, info.value.retryable) == (1008, "DATA-0000", False)
    assert "cannot decode the audio" in str(info.value)
    assert server.connections[0].close_code == 1008


async def test_other_1008_closes_are_rejections() -> None:
    async with ScriptedDeepgramServer() as server:
        stream = await DeepgramRecognizer(server.url).open(OPTIONS)
        await stream.send(b"\x20" * 160)
        await server.wait_for_audio(160)
        await server.close_all(1008, "policy")
        with pytest.raises(RecognizerRejected) as info:
            await collect(stream)
        await stream.close(timeout=1)
    assert not isinstance(info.value, RecognizerInputError) and info.value.code == 1008


@pytest.mark.parametrize(
    ("model", "keyterms_as", "param"),
    [("nova-3", None, "keyterm"), ("nova-3-medical", None, "keyterm"), ("nova-2", None, "keywords"),
     ("tiny.en", "keyterm", "keyterm")],
)  # fmt: skip
def test_keyterms_go_out_in_the_models_form(model: str, keyterms_as: str | None, param: str) -> None:
    options = StreamOptions(call_sid="CAk", track="inbound", keyterms=("Acme Cloud", "Zephyr"))
    url = DeepgramRecognizer("ws://h", model=model, keyterms_as=keyterms_as).listen_url(options)  # type: ignore[arg-type]
    query = parse_qsl(urlsplit(url).query)
    assert [v for k, v in query if k == param] == ["Acme Cloud", "Zephyr"]
    assert {"keyterm", "keywords"} - {param} not in {k for k, _ in query}
    assert ("model", model) in query


async def test_idle_timer_counts_only_audio_and_keepalive() -> None:
    """NET-0001 comes after the idle timeout without audio or KeepAlive: a Finalize does not count."""
    async with ScriptedDeepgramServer(idle_timeout=0.4) as server:
        stream = await DeepgramRecognizer(server.url).open(OPTIONS)
        await stream.send(b"\x30" * 160)
        for _ in range(6):  # 0.6 s of Finalize only, every 0.1 s
            await asyncio.sleep(0.1)
            with contextlib.suppress(RecognizerConnectError):
                await stream.finalize()
        assert server.connections[0].controls[:3] == ["Finalize"] * 3
        with pytest.raises(RecognizerConnectError) as info:
            await collect(stream)
        await stream.close(timeout=1)
    assert (info.value.code, info.value.reason) == (1011, "NET-0001")


async def test_a_hung_server_is_detected_by_websocket_pings() -> None:
    async with ScriptedDeepgramServer() as server:
        recognizer = DeepgramRecognizer(server.url, ping_interval=0.2, ping_timeout=0.3, open_timeout=0.5)
        stream = await recognizer.open(OPTIONS)
        await stream.send(b"\x30" * 160)
        await server.wait_for_audio(160)
        server.hang()
        with pytest.raises(RecognizerConnectError) as info:
            async with asyncio.timeout(5):  # without pings this would wait for ever
                await collect(stream)
        await stream.close(timeout=1)
        assert info.value.retryable and info.value.code == 1006  # the ping timed out: no close handshake
        with pytest.raises(RecognizerConnectError):
            await recognizer.open(OPTIONS)  # new upgrades never complete either


async def test_deepgram_is_asked_to_redact_what_the_bridge_redacts_and_the_embedded_recognizer_is_not() -> None:
    """Deepgram's own redaction is a second line of defence (the bridge masks anyway); the embedded
    recognizer refuses parameters it does not honour, so it is never sent one."""
    from bridge.recognizers.factory import make_recognizer

    async with ScriptedDeepgramServer() as server:
        recognizer = make_recognizer("deepgram", server.url, api_key="k", redact=("card", "ssn"))
        stream = await recognizer.open(OPTIONS)
        await stream.close(timeout=5)
    assert [v for k, v in server.connections[0].query_items if k == "redact"] == ["pci", "ssn"]
    embedded = make_recognizer("embedded", "ws://h", redact=("card",))
    assert "redact" not in embedded.listen_url(OPTIONS)  # type: ignore[attr-defined]


async def test_an_unparseable_vendor_message_is_logged_without_its_content(caplog: pytest.LogCaptureFixture) -> None:
    """Regression: the garbage warning quoted the message, and a malformed transcript message carries
    what the caller said (a card number) into the logs."""
    garbled = '{"type":"Results","duration":"long","channel":{"alternatives":[{"transcript":"4111 1111 1111 1111"}]}}'

    async def handler(ws: ServerConnection) -> None:
        await ws.send(garbled)
        async for message in ws:
            if message == '{"type":"CloseStream"}':
                break
        await ws.close()

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"
        stream = await DeepgramRecognizer(url).open(OPTIONS)
        reader = asyncio.create_task(collect(stream))
        await stream.close(timeout=5)
        await reader
    assert stream.garbage_count == 1
    assert "unparseable" in caplog.text and "4111" not in caplog.text


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_binary_frames_built_for_the_hot_path_are_what_websockets_reads(size: int) -> None:
    """The frames :func:`binary_frame` writes parse as one whole masked binary message, each with a
    fresh mask key (RFC 6455 section 5.3)."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    from bridge.recognizers.websocket import binary_frame

    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frames = [binary_frame(payload) for _ in range(3)]
    keys = set()
    for raw in frames:
        reader = StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        parser = Frame.parse(reader.read_exact, mask=True)
        try:
            next(parser)
        except StopIteration as done:
            frame = done.value
        assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload
        head = 2 + (0 if size < 126 else 2 if size < 65536 else 8)
        keys.add(raw[head : head + 4])
        assert len(raw) == head + 4 + size
    assert len(keys) == 3
