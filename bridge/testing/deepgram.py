"""Test doubles that ship with the product (like httpx's ``MockTransport``).

:class:`ScriptedDeepgramServer` is a real Deepgram-protocol WebSocket server on 127.0.0.1 whose
transcripts are a pure function of the audio it received: every full window (1 s by default) of
audio becomes one final whose single word is a checksum of that window's bytes; partials come every
200 ms of audio. Windows are counted from the start of each connection, and a reconnecting client
replays from the end of its last final, so a run with faults yields, segment by segment, the same
finals as a clean run. Hooks let tests drop, reject, stall, hang and garble connections.

It behaves like Deepgram where a client can get it wrong
(https://developers.deepgram.com/docs/recovering-from-connection-errors-and-timeouts-when-live-streaming-audio):

- with ``ingest_rate`` set (Deepgram: 1.25) it takes audio no faster than that multiple of real time
  (after a ``ingest_burst_seconds`` allowance): faster audio waits, so its results come late, and the
  wait is counted in :attr:`ScriptedConnection.throttled_seconds`;
- audio it cannot decode (a container header such as ``RIFF`` sent as raw audio with an ``encoding``,
  or anything after :meth:`ScriptedDeepgramServer.refuse_audio`) closes the connection
  ``1008 DATA-0000``;
- ``idle_timeout`` (Deepgram: 10 s) without audio or ``KeepAlive`` closes it ``1011 NET-0001``
  (other control messages do not count).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import uuid
import zlib
from urllib.parse import parse_qsl, urlsplit

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bridge.audio import MULAW_SILENCE as SILENCE
from bridge.recognizers.deepgram import wire
from bridge.testing._local import AsyncServer

logger = logging.getLogger(__name__)

#: Magic bytes of audio containers: sent with a raw ``encoding``, Deepgram cannot decode them.
_CONTAINERS = (b"RIFF", b"OggS", b"fLaC", b"ID3", b"\x1aE\xdf\xa3")


def window_word(window: bytes) -> str:
    """The word the scripted server hears in ``window`` (deterministic in the bytes only)."""
    return f"w{zlib.crc32(window):08x}"


def scripted_finals(
    audio: bytes, *, bytes_per_second: int = 8000, window_seconds: float = 1.0
) -> list[tuple[float, float, str]]:
    """``(start, end, text)`` of the finals a clean run of ``audio`` (closed with CloseStream) yields."""
    size = round(window_seconds * bytes_per_second)
    return [
        (i / bytes_per_second, min(i + size, len(audio)) / bytes_per_second, window_word(audio[i : i + size]))
        for i in range(0, len(audio), size)
    ]


@dataclasses.dataclass
class ScriptedConnection:
    """What one client connection sent, for assertions."""

    path: str
    headers: Headers
    audio: bytearray = dataclasses.field(default_factory=bytearray)
    frames: list[int] = dataclasses.field(default_factory=list)  # binary frame sizes
    controls: list[str] = dataclasses.field(default_factory=list)  # control message types
    close_code: int | None = None
    close_reason: str = ""
    #: Seconds this connection's audio had to wait to stay under the ingest rate.
    throttled_seconds: float = 0.0

    @property
    def query(self) -> dict[str, str]:
        return dict(self.query_items)

    @property
    def query_items(self) -> list[tuple[str, str]]:
        """The query as sent, repeated parameters (``keyterm``) included."""
        return parse_qsl(urlsplit(self.path).query, keep_blank_values=True)


class ScriptedDeepgramServer(AsyncServer):
    """A deterministic Deepgram live server for tests and load benchmarks.

    ``async with ScriptedDeepgramServer() as server:`` then point a client at ``server.url``.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        window_seconds: float = 1.0,
        partial_seconds: float = 0.2,
        idle_timeout: float = 10.0,
        api_key: str | None = None,
        ingest_rate: float | None = None,
        ingest_burst_seconds: float = 1.0,
        script: list[str] | None = None,
    ) -> None:
        self.port = port
        #: What is "said" in each window of a connection, in order (then the checksum words): a final
        #: carries the window's words, a partial the share of them heard so far (like a streaming
        #: recognizer's growing hypothesis). Lets a test put chosen words, digits say, on the wire.
        self.script = list(script or [])
        self.window_seconds = window_seconds
        self.partial_seconds = partial_seconds
        #: NET-0001: close 1011 when neither audio nor KeepAlive arrives for this long.
        self.idle_timeout = idle_timeout
        #: Fastest audio is taken, as a multiple of real time (``None``: as fast as it comes).
        self.ingest_rate = ingest_rate
        self.ingest_burst_seconds = ingest_burst_seconds
        #: When set, upgrades without ``Authorization: Token <api_key>`` get HTTP 401.
        self.api_key = api_key
        self.connections: list[ScriptedConnection] = []
        self.finals_sent = 0
        #: Audio bytes received over all connections, and upgrades refused by :meth:`reject`/auth.
        self.received_bytes = 0
        self.rejected = 0
        self._progress = asyncio.Condition()
        #: Garbage text messages sent before every final (tests of client robustness).
        self.garbage_before_finals = 0
        self._server: Server | None = None
        self._active: set[ServerConnection] = set()
        self._reject: tuple[int, str] | None = None
        self._reject_times: int | None = None
        self._drop_after: tuple[int, bool] | None = None
        self._stall_until = 0.0
        self._refuse_audio = False
        self._hung = asyncio.Event()
        self._stopping = asyncio.Event()
        self._opening: set[ServerConnection] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._hung.clear()
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            process_request=self._process_request,
            compression=None,
            max_size=2**22,
        )
        sockets = list(self._server.sockets)
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Kill the server: connections are aborted (no close frame), the port stops listening."""
        if self._server is None:
            return
        self._stopping.set()  # wakes what hang() holds
        for ws in [*self._active, *self._opening]:
            ws.transport.abort()
        self._server.close(close_connections=False)
        await self._server.wait_closed()
        self._server = None
        self._stopping.clear()

    # -- fault hooks -------------------------------------------------------------------------

    def reject(self, status: int, dg_error: str = "", *, times: int | None = None) -> None:
        """Refuse the next ``times`` upgrades (all when ``None``) with HTTP ``status``."""
        self._reject = (status, dg_error or f"scripted rejection {status}")
        self._reject_times = times

    def accept(self) -> None:
        self._reject = None

    def drop_after(self, nbytes: int, *, before_final: bool = True) -> None:
        """Abort the next connection that has received ``nbytes`` of audio (one shot).

        With ``before_final`` the final of a window completed by that very byte is not sent.
        """
        self._drop_after = (nbytes, before_final)

    def stall(self, seconds: float) -> None:
        """Stop reading and answering on every connection for ``seconds``."""
        self._stall_until = asyncio.get_running_loop().time() + seconds

    def hang(self) -> None:
        """Stop answering for good, the way a wedged server does: open connections are neither read
        (so WebSocket pings go unanswered) nor written, and new upgrades never complete."""
        self._hung.set()
        for ws in list(self._active):
            ws.transport.pause_reading()

    def refuse_audio(self) -> None:
        """From now on, audio cannot be decoded: every connection closes ``1008 DATA-0000`` on it."""
        self._refuse_audio = True

    @property
    def throttled_seconds(self) -> float:
        """Seconds audio waited, over all connections, to stay under :attr:`ingest_rate`."""
        return sum(c.throttled_seconds for c in self.connections)

    async def close_all(self, code: int = wire.CLOSE_NET_ERROR, reason: str = wire.REASON_NET_SERVER) -> None:
        """Close every live connection with a close frame ``code``/``reason``."""
        for ws in list(self._active):
            with contextlib.suppress(ConnectionClosed):
                await ws.close(code, reason)

    async def send_garbage(self, data: str | bytes = "{not json") -> None:
        for ws in list(self._active):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(data)

    async def wait_for_audio(self, nbytes: int, timeout: float = 10.0) -> None:
        """Wait until ``nbytes`` of audio have arrived over all connections so far."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: self.received_bytes >= nbytes)

    async def _advance(self, nbytes: int) -> None:
        self.received_bytes += nbytes
        async with self._progress:
            self._progress.notify_all()

    # -- protocol ----------------------------------------------------------------------------

    def new_session(self, ws: ServerConnection, record: ScriptedConnection) -> ScriptedSession:
        """The per-connection protocol state (subclasses measure or change what is sent)."""
        return ScriptedSession(self, ws, record)

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self._hung.is_set():  # never answers; the client's open timeout ends it
            self._opening.add(connection)
            await self._stopping.wait()
            self._opening.discard(connection)
            return self._refuse(connection, 503, "stopped")
        if urlsplit(request.path).path != "/v1/listen":
            return self._refuse(connection, 404, "no such endpoint")
        if self._reject is not None:
            status, error = self._reject
            if self._reject_times is not None:
                self._reject_times -= 1
                if self._reject_times <= 0:
                    self._reject = None
            return self._refuse(connection, status, error)
        if self.api_key is not None and request.headers.get("Authorization") != f"Token {self.api_key}":
            return self._refuse(connection, 401, "Invalid credentials.")
        return None

    def _refuse(self, connection: ServerConnection, status: int, error: str) -> Response:
        self.rejected += 1
        response = connection.respond(status, f"{error}\n")
        response.headers["dg-error"] = error
        response.headers["dg-request-id"] = str(uuid.uuid4())
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        record = ScriptedConnection(path=ws.request.path, headers=ws.request.headers)
        self.connections.append(record)
        self._active.add(ws)
        try:
            await self.new_session(ws, record).run()
        except ConnectionClosed:
            pass
        except Exception:  # a dropped or misbehaving client ends its session, never the server
            logger.exception("scripted session failed")
        finally:
            self._active.discard(ws)
            record.close_code = ws.close_code
            record.close_reason = ws.close_reason or ""


class ScriptedSession:
    """The per-connection state of the scripted server."""

    def __init__(self, server: ScriptedDeepgramServer, ws: ServerConnection, record: ScriptedConnection):
        self.server = server
        self.ws = ws
        self.record = record
        q = record.query
        self.interim = q.get("interim_results") == "true"
        self.vad_events = q.get("vad_events") == "true"
        self.utterance_end = self.interim and "utterance_end_ms" in q
        rate = int(q.get("sample_rate", "8000"))
        self.encoding = q.get("encoding", "")
        self.bps = rate * (1 if self.encoding in ("mulaw", "alaw", "") else 2)
        self.window_bytes = max(1, round(server.window_seconds * self.bps))
        self.partial_bytes = max(1, round(server.partial_seconds * self.bps))
        self.window = bytearray()
        self.window_start = 0  # bytes from connection start
        self.next_partial = self.partial_bytes
        self.total = 0
        self.request_id = str(uuid.uuid4())
        self.spoke_in_previous = False
        self.speech_started_sent = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        began = alive = loop.time()
        while True:
            stall = self.server._stall_until - loop.time()
            if stall > 0:
                await asyncio.sleep(stall)
            if self.server._hung.is_set():
                self.ws.transport.pause_reading()
                await self.server._stopping.wait()  # wedged until the server is stopped
                return
            try:
                message = await asyncio.wait_for(self.ws.recv(), self.server.idle_timeout - (loop.time() - alive))
            except TimeoutError:
                if self.server._hung.is_set():
                    await self.server._stopping.wait()  # a wedged server closes nothing either
                    return
                await self.ws.close(wire.CLOSE_NET_ERROR, wire.REASON_NET_IDLE)
                return
            if isinstance(message, bytes):
                if not message or not self._decodable(message):
                    await self.ws.close(wire.CLOSE_DATA_ERROR, wire.REASON_DATA)
                    return
                alive = loop.time()
                await self._ingest(len(message), began)
                if not await self._audio(message):
                    return
                continue
            try:
                control = wire.decode_client(message)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.record.controls.append("garbage")
                continue
            self.record.controls.append(type(control).__name__)
            if isinstance(control, wire.KeepAlive):
                alive = loop.time()
            elif isinstance(control, wire.Finalize):
                await self._flush(from_finalize=True)
            elif isinstance(control, wire.CloseStream):
                await self._flush(from_finalize=False)
                await self._send(
                    wire.Metadata(
                        request_id=self.request_id,
                        sha256=hashlib.sha256(self.record.audio).hexdigest(),
                        duration=self.total / self.bps,
                        channels=1,
                        models=[str(uuid.UUID(int=0))],
                    )
                )
                await self.ws.close(1000, "")
                return

    def _decodable(self, data: bytes) -> bool:
        if self.server._refuse_audio:
            return False
        # A file's header sent as raw audio: the encoding parameter is wrong.
        return not (self.encoding and not self.total and data.startswith(_CONTAINERS))

    async def _ingest(self, nbytes: int, began: float) -> None:
        """Take ``nbytes`` no faster than the ingest rate allows since the connection opened."""
        rate = self.server.ingest_rate
        if rate is None:
            return
        allowed = (self.server.ingest_burst_seconds + rate * (asyncio.get_running_loop().time() - began)) * self.bps
        wait = (self.total + nbytes - allowed) / (rate * self.bps)
        if wait > 0:
            self.record.throttled_seconds += wait
            await asyncio.sleep(wait)

    async def _send(self, message: wire.ServerMessage) -> None:
        await self.ws.send(wire.encode(message).decode())

    def _said(self, start: int, data: bytes) -> list[str]:
        index = start // self.window_bytes
        script = self.server.script
        if index >= len(script):
            return [window_word(data)]
        words = script[index].split()
        return words[: max(1, -(-len(words) * len(data) // self.window_bytes))]

    def _results(self, start: int, data: bytes, *, is_final: bool, from_finalize: bool = False) -> wire.Results:
        said = self._said(start, data)
        t0, t1 = start / self.bps, (start + len(data)) / self.bps
        step = (t1 - t0) / len(said)
        return wire.Results(
            channel_index=[0, 1],
            duration=t1 - t0,
            start=t0,
            is_final=is_final,
            from_finalize=from_finalize,
            channel=wire.DGChannel(
                alternatives=[
                    wire.DGAlternative(
                        transcript=" ".join(said),
                        confidence=1.0,
                        words=[wire.DGWord(word=w, start=t0 + i * step, end=t0 + (i + 1) * step, confidence=1.0,
                                           punctuated_word=w) for i, w in enumerate(said)],
                    )
                ]
            ),
            metadata=wire.DGResultsMetadata(request_id=self.request_id),
        )

    async def _audio(self, data: bytes) -> bool:
        """Take audio; returns False when a drop hook ended the connection."""
        drop = self.server._drop_after
        dropping = drop is not None and self.total + len(data) >= drop[0]
        if dropping and drop is not None:
            data = data[: drop[0] - self.total]
            self.server._drop_after = None
        self.record.audio += data
        self.record.frames.append(len(data))
        self.total += len(data)
        await self.server._advance(len(data))
        pos = 0
        while pos < len(data):
            take = data[pos : pos + self.window_bytes - len(self.window)]
            pos += len(take)
            self.window += take
            if self.vad_events and not self.speech_started_sent and any(b != SILENCE for b in take):
                self.speech_started_sent = True
                await self._send(wire.SpeechStarted(channel=[0, 1], timestamp=self.window_start / self.bps))
            while self.interim and self.next_partial < self.window_bytes and len(self.window) >= self.next_partial:
                partial = bytes(self.window[: self.next_partial])
                await self._send(self._results(self.window_start, partial, is_final=False))
                self.next_partial += self.partial_bytes
            if len(self.window) == self.window_bytes:
                if dropping and drop is not None and drop[1] and pos == len(data):
                    break
                await self._final(from_finalize=False)
        if dropping:
            self.ws.transport.abort()
            return False
        return True

    async def _final(self, *, from_finalize: bool) -> None:
        data = bytes(self.window)
        for _ in range(self.server.garbage_before_finals):
            await self.ws.send('{"type": "Results", "garbage": ')
        await self._send(self._results(self.window_start, data, is_final=True, from_finalize=from_finalize))
        self.server.finals_sent += 1
        spoke = any(b != SILENCE for b in data)
        if self.utterance_end and self.spoke_in_previous and not spoke:
            await self._send(wire.UtteranceEnd(channel=[0, 1], last_word_end=self.window_start / self.bps))
        self.spoke_in_previous = spoke
        self.window_start += len(data)
        self.window.clear()
        self.next_partial = self.partial_bytes
        self.speech_started_sent = False

    async def _flush(self, *, from_finalize: bool) -> None:
        if self.window:
            await self._final(from_finalize=from_finalize)


__all__ = ["ScriptedConnection", "ScriptedDeepgramServer", "ScriptedSession", "scripted_finals", "window_word"]
