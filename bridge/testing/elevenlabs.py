"""A scripted ElevenLabs Scribe v2 Realtime server on 127.0.0.1, for tests and the soak run.

Every message it sends is one of the client's wire structs (:mod:`bridge.recognizers.elevenlabs.wire`),
which follow the official SDK's types, so the fake cannot drift from what the client parses. Like
:class:`~bridge.testing.deepgram.ScriptedDeepgramServer`, its words are a pure function of the audio:
every full window (1 s) of a session's audio is one committed segment whose single word is a
checksum of that window (:func:`~bridge.testing.deepgram.window_word`), with a ``partial_transcript``
every 200 ms; a ``commit: true`` chunk commits what is pending.

It behaves like Scribe where a client can get it wrong
(https://elevenlabs.io/docs/api-reference/speech-to-text/v-1-speech-to-text-realtime): a wrong
``xi-api-key`` gets ``auth_error``; an ``audio_format`` outside the SDK's ``AudioFormat``, or
keyterms beyond "50, each at most 20 characters", get ``invalid_request``; a chunk whose
``sample_rate`` disagrees with the session's format, or with invalid base64, or with
``previous_text`` after the first chunk, gets ``input_error``. Each error is sent as its
``Scribe*ErrorPayload`` and the session closes, as the SDK expects.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import uuid
from urllib.parse import parse_qsl, urlsplit

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bridge.recognizers.elevenlabs import wire
from bridge.testing._local import AsyncServer
from bridge.testing.deepgram import window_word

logger = logging.getLogger(__name__)

#: ``elevenlabs.realtime.scribe.AudioFormat`` -> sample rate.
AUDIO_FORMATS = {"pcm_8000": 8000, "pcm_16000": 16000, "pcm_22050": 22050, "pcm_24000": 24000,
                 "pcm_44100": 44100, "pcm_48000": 48000, "ulaw_8000": 8000}  # fmt: skip


@dataclasses.dataclass
class ScribeConnection:
    """What one client session sent, for assertions."""

    path: str
    headers: Headers
    audio: bytearray = dataclasses.field(default_factory=bytearray)
    chunks: list[wire.InputAudioChunk] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.path).query, keep_blank_values=True)

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.query if k == name), None)

    @property
    def previous_texts(self) -> list[str]:
        return [c.previous_text for c in self.chunks if c.previous_text is not None]


class ScriptedScribeServer(AsyncServer):
    """``async with ScriptedScribeServer() as server:`` then point a client at ``server.url``."""

    def __init__(self, *, window_seconds: float = 1.0, partial_seconds: float = 0.2, api_key: str | None = None):
        self.window_seconds = window_seconds
        self.partial_seconds = partial_seconds
        #: When set, sessions without ``xi-api-key: <api_key>`` get ``auth_error``.
        self.api_key = api_key
        self.connections: list[ScribeConnection] = []
        self.port = 0
        self._server: Server | None = None
        self._active: set[ServerConnection] = set()
        self._fail_next: wire.ErrorType | None = None
        self._reject: int | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", self.port, process_request=self._process_request,
                                   compression=None, max_size=2**22)  # fmt: skip
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        """Kill the server: sessions are aborted (no close frame), the port stops listening."""
        if self._server is None:
            return
        for ws in list(self._active):
            ws.transport.abort()
        self._server.close(close_connections=False)
        await self._server.wait_closed()
        self._server = None

    # -- fault hooks -------------------------------------------------------------------------

    def fail_next_audio(self, kind: wire.ErrorType) -> None:
        """Answer the next audio chunk (any session) with an error of ``kind``, then close."""
        self._fail_next = kind

    def reject(self, status: int | None) -> None:
        """Refuse upgrades with HTTP ``status`` (``None``: accept again)."""
        self._reject = status

    async def drop_all(self) -> None:
        for ws in list(self._active):
            ws.transport.abort()

    # -- protocol ----------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/v1/speech-to-text/realtime":
            return connection.respond(404, "no such endpoint\n")
        if self._reject is not None:
            return connection.respond(self._reject, '{"detail": "scripted rejection"}')
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        record = ScribeConnection(path=ws.request.path, headers=ws.request.headers)
        self.connections.append(record)
        self._active.add(ws)
        try:
            await _Session(self, ws, record).run()
        except ConnectionClosed:
            pass
        except Exception:  # a misbehaving client ends its session, never the server
            logger.exception("scripted scribe session failed")
        finally:
            self._active.discard(ws)


class _Session:
    def __init__(self, server: ScriptedScribeServer, ws: ServerConnection, record: ScribeConnection) -> None:
        self.server, self.ws, self.record = server, ws, record
        self.format = record.param("audio_format") or ""
        self.rate = AUDIO_FORMATS.get(self.format, 0)
        self.bps = self.rate * (1 if self.format.startswith("ulaw") else 2)
        self.timestamps = record.param("include_timestamps") == "true"
        self.window = bytearray()
        self.window_start = 0
        self.next_partial = 0

    async def _send(self, message: wire.ServerMessage | wire.ErrorMessage) -> None:
        await self.ws.send(wire.encode(message).decode())

    async def _error(self, kind: wire.ErrorType, detail: str) -> None:
        self.record.errors.append(kind)
        await self._send(wire.ErrorMessage(message_type=kind, error=detail))
        await self.ws.close(1008 if kind in ("auth_error", "invalid_request", "input_error") else 1011, kind)

    async def run(self) -> None:
        api_key = self.server.api_key
        if api_key is not None and self.record.headers.get("xi-api-key") != api_key:
            return await self._error("auth_error", "Invalid API key")
        if not self.rate:
            return await self._error("invalid_request", f"audio_format {self.format!r} is not supported")
        keyterms = [v for k, v in self.record.query if k == "keyterms"]
        if len(keyterms) > 50 or any(len(k) > 20 for k in keyterms):
            return await self._error("invalid_request", "at most 50 keyterms of at most 20 characters")
        self.window_bytes = max(1, round(self.server.window_seconds * self.bps))
        self.partial_bytes = max(1, round(self.server.partial_seconds * self.bps))
        self.next_partial = self.partial_bytes
        config = wire.SessionConfig(
            sample_rate=self.rate, audio_format=self.format, language_code=self.record.param("language_code"),
            commit_strategy=self.record.param("commit_strategy") or "manual", model_id=self.record.param("model_id"),
            include_timestamps=self.timestamps, keyterms=keyterms or None,
        )  # fmt: skip
        await self._send(wire.SessionStarted(session_id=uuid.uuid4().hex, config=config))
        async for message in self.ws:
            try:
                chunk = wire.decode_client(message)
                audio = base64.b64decode(chunk.audio_base_64, validate=True)
            except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error):
                return await self._error("input_error", "invalid input chunk")
            if chunk.sample_rate != self.rate:
                return await self._error("input_error", f"sample_rate {chunk.sample_rate} != the session's {self.rate}")
            if chunk.previous_text is not None and self.record.chunks:
                return await self._error("input_error", "previous_text is only allowed with the first chunk")
            if audio and self.server._fail_next is not None:
                kind, self.server._fail_next = self.server._fail_next, None
                return await self._error(kind, f"scripted {kind}")
            self.record.chunks.append(chunk)
            self.record.audio += audio
            await self._audio(audio)
            if chunk.commit:
                await self._commit()

    async def _audio(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            take = data[pos : pos + self.window_bytes - len(self.window)]
            pos += len(take)
            self.window += take
            while self.next_partial < self.window_bytes and len(self.window) >= self.next_partial:
                await self._send(wire.PartialTranscript(text=window_word(bytes(self.window[: self.next_partial]))))
                self.next_partial += self.partial_bytes
            if len(self.window) == self.window_bytes:
                await self._commit()

    async def _commit(self) -> None:
        data = bytes(self.window)
        if data:
            word = window_word(data)
            t0, t1 = self.window_start / self.bps, (self.window_start + len(data)) / self.bps
            await self._send(wire.CommittedTranscript(text=word))
            if self.timestamps:
                words = [wire.ELWord(text=word, start=t0, end=t1, type="word", speaker_id="speaker_0", logprob=0.0,
                                     characters=list(word))]  # fmt: skip
                await self._send(wire.CommittedTranscriptWithTimestamps(text=word, language_code="en", words=words))
        else:
            await self._send(wire.CommittedTranscript(text=""))
        self.window_start += len(data)
        self.window.clear()
        self.next_partial = self.partial_bytes


__all__ = ["AUDIO_FORMATS", "ScribeConnection", "ScriptedScribeServer"]
