"""``WS /twilio/media``: Twilio Media Streams in, typed events out to the call layer.

Two layers: :class:`StreamProtocol` is a pure state machine (text frame in, typed event out, or a
:class:`ProtocolViolation` carrying the close code) and is tested without sockets; the endpoint
checks the signature before accepting, feeds frames through it and drives a
:class:`StreamHandler` obtained from ``app.state.calls`` (a :class:`StreamOpener`).

Close codes: 1007 invalid payload (bad JSON/base64/shape, a SID not shaped like Twilio's), 1008
policy (wrong order, wrong call, bad token, unannounced track, no ``start`` within
``BRIDGE_MEDIA_START_TIMEOUT``, no frame for ``BRIDGE_MEDIA_IDLE_TIMEOUT``), 1009 frame too big,
1003 unsupported data (binary, unknown event), 1013 this instance is draining or already carries
``BRIDGE_MAX_MEDIA_STREAMS`` sockets. Every stream refused or closed for bad input is counted in
``bridge_streams_rejected_total{reason}``.
"""

from __future__ import annotations

import asyncio
import binascii
import enum
import logging
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from bridge.settings import Settings
from bridge.twilio import models as tm
from bridge.twilio.auth import SignatureError, check_signature, verify_stream_token

logger = logging.getLogger(__name__)

WS_NORMAL = 1000
WS_PROTOCOL_ERROR = 1002
WS_UNSUPPORTED_DATA = 1003
WS_INVALID_PAYLOAD = 1007
WS_POLICY_VIOLATION = 1008
WS_MESSAGE_TOO_BIG = 1009
WS_INTERNAL_ERROR = 1011
WS_TRY_AGAIN_LATER = 1013

#: ``bridge_streams_rejected_total`` reason of each close code.
_REJECT_REASONS = {
    WS_PROTOCOL_ERROR: "protocol_error",
    WS_UNSUPPORTED_DATA: "unsupported_data",
    WS_INVALID_PAYLOAD: "invalid_payload",
    WS_POLICY_VIOLATION: "policy",
    WS_MESSAGE_TOO_BIG: "too_big",
    WS_INTERNAL_ERROR: "internal_error",
    WS_TRY_AGAIN_LATER: "unavailable",
}


class StreamHandler(Protocol):
    """One media stream as seen by the call layer (implemented by :mod:`bridge.call.session`)."""

    async def on_media(self, track: Literal["inbound", "outbound"], timestamp_ms: int, payload: bytes) -> None:
        """Raw mu-law/8000 bytes; ``timestamp_ms`` is Twilio's presentation time from stream start."""

    async def on_dtmf(self, digit: str) -> None: ...

    async def on_mark(self, name: str) -> None: ...

    async def on_stop(self, *, clean: bool, reason: str) -> None:
        """Called exactly once: ``clean`` on Twilio ``stop``, False on a drop or a violation."""


@runtime_checkable
class ImmediateHandler(Protocol):
    """A :class:`StreamHandler` that can take a frame without waiting, from the socket's read
    callback: the steady state then costs no task switch and no coroutine chain per frame."""

    def on_media_nowait(self, track: Literal["inbound", "outbound"], timestamp_ms: int, payload: bytes) -> None:
        """:meth:`StreamHandler.on_media`, with nothing in it that waits."""


class StreamOpener(Protocol):
    async def open_stream(self, start: tm.Start) -> StreamHandler:
        """Create the handler for a stream; raise :class:`StreamRejected` to refuse it."""
        ...


class StreamRejected(Exception):
    """Raised by :meth:`StreamOpener.open_stream` to close the socket with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class ProtocolViolation(Exception):
    """The peer broke the Media Streams protocol; close with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class StreamState(enum.Enum):
    AWAIT_CONNECTED = "await_connected"
    AWAIT_START = "await_start"
    STREAMING = "streaming"
    STOPPED = "stopped"


class MediaFrame(msgspec.Struct, frozen=True):
    """A decoded ``media`` message."""

    track: tm.Track
    timestamp_ms: int
    payload: bytes


ProtocolEvent = tm.Connected | tm.Start | MediaFrame | tm.Dtmf | tm.Mark | tm.Stop


class StreamProtocol:
    """Pure per-stream state machine: AWAIT_CONNECTED -> AWAIT_START -> STREAMING -> STOPPED."""

    __slots__ = ("max_frame_bytes", "start", "state", "tracks")

    def __init__(self, *, max_frame_bytes: int = 64 * 1024) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.state = StreamState.AWAIT_CONNECTED
        self.start: tm.Start | None = None
        self.tracks: frozenset[str] = frozenset()

    @property
    def call_sid(self) -> str | None:
        return self.start.start.call_sid if self.start is not None else None

    def receive(self, text: str | bytes) -> ProtocolEvent:
        """Validate one text frame (as ``str``, or as its UTF-8 bytes) against the protocol and the
        current state."""
        msg = self._parse(text)
        if type(msg) is tm.Media:
            return self._media(msg)
        return self._control(msg)

    def receive_media(self, text: str | bytes) -> MediaFrame | None:
        """:meth:`receive` for a ``media`` message; ``None`` (and no state change) for any other."""
        msg = self._parse(text)
        return self._media(msg) if type(msg) is tm.Media else None

    def _parse(self, text: str | bytes) -> tm.TwilioMessage:
        limit = self.max_frame_bytes
        size = len(text)
        if size > limit or (size * 4 > limit and type(text) is str and len(text.encode()) > limit):
            raise ProtocolViolation(WS_MESSAGE_TOO_BIG, f"frame larger than {limit} bytes")
        try:
            return tm.parse(text)
        except tm.UnknownEvent as exc:
            raise ProtocolViolation(WS_UNSUPPORTED_DATA, str(exc)) from None
        except tm.TwilioParseError as exc:
            raise ProtocolViolation(WS_INVALID_PAYLOAD, f"invalid message: {exc}") from None

    def _media(self, msg: tm.Media) -> MediaFrame:
        if self.state is not StreamState.STREAMING:
            raise self._out_of_order("media")
        media = msg.media
        if media.track not in self.tracks:
            raise ProtocolViolation(WS_POLICY_VIOLATION, f"media on track {media.track!r} not in start")
        self._check_stream(msg)
        try:
            payload = binascii.a2b_base64(media.payload, strict_mode=True)
            timestamp = int(media.timestamp)
        except (binascii.Error, ValueError):
            raise ProtocolViolation(WS_INVALID_PAYLOAD, "media payload/timestamp is not valid") from None
        return MediaFrame(media.track, timestamp, payload)

    def _control(self, msg: tm.TwilioMessage) -> ProtocolEvent:
        state = self.state
        if type(msg) is tm.Connected:
            if state is not StreamState.AWAIT_CONNECTED:
                raise self._out_of_order("connected")
            self.state = StreamState.AWAIT_START
            return msg
        if type(msg) is tm.Start:
            if state is not StreamState.AWAIT_START:
                raise self._out_of_order("start")
            info = msg.start
            if info.stream_sid != msg.stream_sid:
                raise ProtocolViolation(WS_INVALID_PAYLOAD, "start: streamSid differs inside and out")
            if not info.tracks:
                raise ProtocolViolation(WS_INVALID_PAYLOAD, "start announces no tracks")
            if info.media_format.encoding != tm.MULAW_ENCODING or info.media_format.sample_rate != tm.SAMPLE_RATE:
                raise ProtocolViolation(WS_UNSUPPORTED_DATA, "only audio/x-mulaw 8000 Hz is supported")
            self.start = msg
            self.tracks = frozenset(info.tracks)
            self.state = StreamState.STREAMING
            return msg
        if type(msg) is tm.Stop:
            if state is not StreamState.STREAMING:
                raise self._out_of_order("stop")
            self._check_stream(msg)
            if msg.stop.call_sid != self.call_sid:
                raise ProtocolViolation(WS_POLICY_VIOLATION, "stop for another call")
            self.state = StreamState.STOPPED
            return msg
        if isinstance(msg, tm.Dtmf | tm.Mark):
            if state is not StreamState.STREAMING:
                raise self._out_of_order(type(msg).__name__.lower())
            self._check_stream(msg)
            return msg
        raise ProtocolViolation(WS_UNSUPPORTED_DATA, f"unsupported event {type(msg).__name__}")

    def _check_stream(self, msg: tm.Media | tm.Dtmf | tm.Mark | tm.Stop) -> None:
        assert self.start is not None
        if msg.stream_sid != self.start.stream_sid:
            raise ProtocolViolation(WS_POLICY_VIOLATION, "streamSid does not match start")

    def _out_of_order(self, event: str) -> ProtocolViolation:
        expected = {
            StreamState.AWAIT_CONNECTED: "expected 'connected' first",
            StreamState.AWAIT_START: "expected 'start'",
            StreamState.STREAMING: "stream already started",
            StreamState.STOPPED: "stream already stopped",
        }[self.state]
        return ProtocolViolation(WS_POLICY_VIOLATION, f"unexpected {event!r}: {expected}")


def _reason(text: str) -> str:
    """Close reasons are limited to 123 UTF-8 bytes."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


def _rejected(state: Any, reason: str) -> None:
    metrics = getattr(state, "metrics", None)
    if metrics is not None:
        metrics.frames_rejected.labels(reason).inc()


class _Sockets:
    """Media sockets open in this process (``app.state.media_sockets``), against the cap."""

    def __init__(self) -> None:
        self.open = 0


def _sockets(state: Any) -> _Sockets:
    sockets: _Sockets | None = getattr(state, "media_sockets", None)
    if sockets is None:
        sockets = state.media_sockets = _Sockets()
    return sockets


class RefusalLike(Protocol):
    detail: str


class AdmissionLike(Protocol):
    """:class:`bridge.call.admission.Admission` as this edge sees it."""

    def refuse(self, where: Literal["voice", "media"]) -> RefusalLike | None: ...


class Refused(msgspec.Struct, frozen=True):
    """Why an upgrade is refused: with an HTTP ``status`` before the handshake (a proxy can retry
    another instance), or, with ``status`` 0, accepted and closed at once with ``code``."""

    status: int
    text: str = ""
    code: int = WS_POLICY_VIOLATION


def screen_upgrade(conn: HTTPConnection, state: Any) -> Refused | None:
    """The checks before a media socket is accepted: Twilio's signature, admission, the socket cap."""
    settings: Settings = state.settings
    try:
        check_signature(conn, settings)
    except SignatureError as exc:
        logger.warning("media stream refused before accept: %s", exc, extra={"call_sid": None})
        _rejected(state, "signature")
        return Refused(403)
    admission: AdmissionLike | None = getattr(state, "admission", None)
    refusal = admission.refuse("media") if admission is not None else None
    if refusal is not None:
        logger.warning("media stream refused before the upgrade (503): %s", refusal.detail, extra={"call_sid": None})
        return Refused(503, f"{refusal.detail}: try another instance", WS_TRY_AGAIN_LATER)
    sockets = _sockets(state)
    if sockets.open >= settings.max_media_streams:
        logger.warning("media stream refused: %d sockets open (BRIDGE_MAX_MEDIA_STREAMS)", sockets.open,
                       extra={"call_sid": None})  # fmt: skip
        _rejected(state, "capacity")
        return Refused(0, "too many media streams on this instance", WS_TRY_AGAIN_LATER)
    return None


class PeerGone(Exception):
    """The peer's side of the socket is gone (``code`` as received, 1005 without one, 1006 on a drop)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class MediaSocket(Protocol):
    """One accepted media WebSocket as :class:`MediaSession` drives it, whatever carries it: Starlette's
    ASGI WebSocket (:func:`media_endpoint`) or the bridge's own RFC 6455 server
    (:mod:`bridge.twilio.rawsocket`)."""

    async def receive(self) -> str | bytes:
        """The next whole text message; raises :class:`PeerGone`, or :class:`ProtocolViolation`
        for a binary one."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame unless the socket is already closed; never raises."""
        ...


@runtime_checkable
class ImmediateSocket(Protocol):
    """A :class:`MediaSocket` that can offer each whole text message to a synchronous taker as it is
    read (the bridge's own RFC 6455 server does); what the taker declines is queued for ``receive``."""

    def offer_messages(self, taker: Callable[[bytes], bool] | None) -> None:
        """From now on offer every message to ``taker`` while nothing is queued (``None``: stop)."""


async def run_media_socket(socket: MediaSocket, state: Any) -> None:
    """Drive an accepted socket to its end, counted against ``BRIDGE_MAX_MEDIA_STREAMS``."""
    sockets = _sockets(state)
    metrics = getattr(state, "metrics", None)
    sockets.open += 1
    if metrics is not None:
        metrics.media_streams.set(sockets.open)
    try:
        await MediaSession(socket, state).run()
    finally:
        sockets.open -= 1
        if metrics is not None:
            metrics.media_streams.set(sockets.open)


class _AsgiSocket:
    """:class:`MediaSocket` over Starlette's WebSocket."""

    __slots__ = ("ws",)

    def __init__(self, websocket: WebSocket) -> None:
        self.ws = websocket

    async def receive(self) -> str | bytes:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise PeerGone(message.get("code", 1005))
        text: str | None = message.get("text")
        if text is None:
            raise ProtocolViolation(WS_UNSUPPORTED_DATA, "binary frames are not supported")
        return text

    async def close(self, code: int, reason: str) -> None:
        ws = self.ws
        if ws.client_state is WebSocketState.DISCONNECTED or ws.application_state is WebSocketState.DISCONNECTED:
            return
        try:
            await ws.close(code=code, reason=reason)
        except Exception:  # the peer may already be gone
            logger.debug("close did not complete", extra={"call_sid": None})


async def media_endpoint(websocket: WebSocket) -> None:
    """The media socket as an ASGI route (any ASGI server; ``bridge serve`` answers this path with
    :mod:`bridge.twilio.rawsocket` instead, which costs a fraction per frame)."""
    state = websocket.app.state
    refused = screen_upgrade(websocket, state)
    if refused is not None:
        if refused.status == 403:
            await websocket.close(code=WS_POLICY_VIOLATION)  # before accept: the client sees HTTP 403
        elif refused.status:
            await _deny(websocket, refused.status, refused.text)
        else:
            await websocket.accept()
            await websocket.close(code=refused.code, reason=refused.text)
        return
    await websocket.accept()
    await run_media_socket(_AsgiSocket(websocket), state)


async def _deny(websocket: WebSocket, status: int, text: str) -> None:
    """Refuse the upgrade with an HTTP status, or a close (uvicorn answers 403) from servers without
    the WebSocket Denial Response extension."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(text, status_code=status))
    else:
        await websocket.close(code=WS_TRY_AGAIN_LATER)


class MediaSession:
    """Drives one accepted socket; guarantees ``on_stop`` exactly once after a successful open.

    A watchdog (one timer per socket, nothing per frame but a counter) closes a socket that sends no
    ``start`` in time, or stops sending frames while we wait for them.
    """

    def __init__(self, socket: MediaSocket, state: Any) -> None:
        self.socket = socket
        self.state = state
        self.settings: Settings = state.settings
        self.protocol = StreamProtocol(max_frame_bytes=self.settings.max_frame_bytes)
        self.handler: StreamHandler | None = None
        self._frames = 0
        self._seen = 0
        self._receiving = False
        self._expired: tuple[int, str, str] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._now: Callable[[Literal["inbound", "outbound"], int, bytes], None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._accepted = self._progress = loop.time()
        period = max(0.05, min(1.0, self.settings.media_start_timeout / 4, self.settings.media_idle_timeout / 4))
        self._watchdog = loop.call_later(period, self._watch, loop, task, period)
        try:
            await self._loop()
        except asyncio.CancelledError:
            if self._expired is None:
                raise
            task.uncancel()
            code, reason, label = self._expired
            await self._fail(code, reason, log_level=logging.WARNING, label=label)
        except ProtocolViolation as exc:
            await self._fail(exc.code, exc.reason, log_level=logging.WARNING)
        except StreamRejected as exc:
            await self._fail(exc.code, exc.reason, log_level=logging.INFO)
        except Exception:
            logger.exception("media stream failed", extra={"call_sid": self.protocol.call_sid})
            await self._fail(WS_INTERNAL_ERROR, "internal error", log_level=None)
        finally:
            self._now = None
            if isinstance(self.socket, ImmediateSocket):
                self.socket.offer_messages(None)
            if self._watchdog is not None:
                self._watchdog.cancel()

    def _take_now(self, text: bytes) -> bool:
        """A ``media`` message handled inside the socket's read callback (the steady state). Anything
        else, or anything wrong, is declined: the session task takes it in order and says why."""
        now = self._now
        if now is None or self._expired is not None:
            return False
        try:
            frame = self.protocol.receive_media(text)
        except ProtocolViolation:
            return False  # raised again by the task, after the messages before it
        if frame is None:
            return False
        self._frames += 1
        now(frame.track, frame.timestamp_ms, frame.payload)  # what it raises, the socket queues
        return True

    def _watch(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], period: float) -> None:
        now = loop.time()
        state = self.protocol.state
        s = self.settings
        if state in (StreamState.AWAIT_CONNECTED, StreamState.AWAIT_START):
            if now - self._accepted >= s.media_start_timeout:
                self._expire(task, f"no start within {s.media_start_timeout:g} s", "start_timeout")
                return
        elif state is StreamState.STREAMING:
            if self._frames != self._seen or not self._receiving:
                self._seen = self._frames
                self._progress = now
            elif now - self._progress >= s.media_idle_timeout:
                self._expire(task, f"no media for {s.media_idle_timeout:g} s", "idle_timeout")
                return
        else:
            return
        self._watchdog = loop.call_later(period, self._watch, loop, task, period)

    def _expire(self, task: asyncio.Task[Any], reason: str, label: str) -> None:
        self._expired = (WS_POLICY_VIOLATION, reason, label)
        self._watchdog = None
        task.cancel()

    async def _loop(self) -> None:
        protocol = self.protocol
        receive = self.socket.receive
        while True:
            self._receiving = True
            try:
                text = await receive()
            except PeerGone as gone:
                self._receiving = False
                await self._stop(clean=False, reason=f"socket closed by peer ({gone.code})")
                logger.info("media stream dropped before stop (code %s)", gone.code,
                            extra={"call_sid": protocol.call_sid})  # fmt: skip
                return
            self._receiving = False
            self._frames += 1
            event = protocol.receive(text)
            handler = self.handler
            if type(event) is MediaFrame:
                assert handler is not None
                await handler.on_media(event.track, event.timestamp_ms, event.payload)
            elif type(event) is tm.Start:
                await self._open(event)
            elif type(event) is tm.Dtmf:
                assert handler is not None
                await handler.on_dtmf(event.dtmf.digit)
            elif type(event) is tm.Mark:
                assert handler is not None
                await handler.on_mark(event.mark.name)
            elif type(event) is tm.Stop:
                await self._stop(clean=True, reason="twilio stop")
                logger.info("media stream stopped", extra={"call_sid": protocol.call_sid})
                await self.socket.close(WS_NORMAL, "stream stopped")  # Twilio may hang up first: fine
                return

    async def _open(self, start: tm.Start) -> None:
        settings = self.settings
        call_sid = start.start.call_sid
        if settings.verify_signatures:
            token = start.start.custom_parameters.get("token", "")
            if not verify_stream_token(settings.twilio_auth_token, call_sid, token):
                raise ProtocolViolation(WS_POLICY_VIOLATION, "missing or invalid stream token")
        opener: StreamOpener = self.state.calls
        self.handler = handler = await opener.open_stream(start)
        if isinstance(handler, ImmediateHandler) and isinstance(self.socket, ImmediateSocket):
            self._now = handler.on_media_nowait
            self.socket.offer_messages(self._take_now)
        logger.info(
            "media stream started: %s tracks=%s",
            start.start.stream_sid,
            ",".join(start.start.tracks),
            extra={"call_sid": call_sid},
        )

    async def _stop(self, *, clean: bool, reason: str) -> None:
        self._now = None
        handler, self.handler = self.handler, None
        if handler is not None:
            await handler.on_stop(clean=clean, reason=reason)

    async def _fail(self, code: int, reason: str, *, log_level: int | None, label: str = "") -> None:
        call_sid = self.protocol.call_sid
        _rejected(self.state, label or _REJECT_REASONS.get(code, str(code)))
        if log_level is not None:
            logger.log(log_level, "closing media stream %s: %s", code, reason, extra={"call_sid": call_sid})
        try:
            await self._stop(clean=False, reason=f"{code} {reason}")
        except Exception:
            logger.exception("on_stop failed", extra={"call_sid": call_sid})
        await self.socket.close(code, _reason(reason))


media_route = WebSocketRoute("/twilio/media", media_endpoint, name="twilio_media")

__all__ = [
    "ImmediateHandler",
    "ImmediateSocket",
    "MediaFrame",
    "MediaSession",
    "MediaSocket",
    "PeerGone",
    "ProtocolEvent",
    "ProtocolViolation",
    "Refused",
    "StreamHandler",
    "StreamOpener",
    "StreamProtocol",
    "StreamRejected",
    "StreamState",
    "media_endpoint",
    "media_route",
    "run_media_socket",
    "screen_upgrade",
]
