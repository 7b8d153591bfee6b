"""``WS /browser/media``: a browser's microphone as a call with one track.

The page (``/try``) encodes 8 kHz mu-law in its AudioWorklet, so a frame here is exactly what Twilio
sends: it goes untouched to the same :class:`~bridge.twilio.media.StreamHandler` a Twilio stream
gets from ``app.state.calls`` (session, resilience, recognizer, Redis, fan-out, recording, batch
job). The call has a fresh CallSid and ``source=browser`` on its record; the vendor key stays here.

Close codes (every one with a reason, logged with the call id): 4400 the ``bridge.capture``
subprotocol was not offered, 4401 missing/invalid token, 4403 a token without the capture scope,
4429 too many captures from this address, 4408 the connection's duration cap
(``BRIDGE_CAPTURE_MAX_SECONDS``), 1013 the instance is draining or full, 1003 an unknown message,
1007 a frame that is not JSON or not whole milliseconds of audio, 1008 no audio for
``BRIDGE_MEDIA_IDLE_TIMEOUT`` or audio faster than real time, 1009 a frame too big, 1011 a bug,
1001 the instance is shutting down (its calls have ended), 1000 after the page's ``stop``. However a
capture ends, its call ends with it, its words kept.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Collection
from typing import Any, Protocol

import msgspec
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from bridge.browser import access, wire
from bridge.live.auth import mint
from bridge.options import PARAMETERS
from bridge.settings import Settings
from bridge.twilio import models as tm
from bridge.twilio.media import AdmissionLike, StreamHandler, StreamOpener, StreamRejected

logger = logging.getLogger(__name__)

#: Audio may run ahead of the wall clock by this much (the page's frames come in bursts).
REALTIME_SLACK_SECONDS = 3.0


class _Draining(Protocol):
    """What the capture watches of :class:`~bridge.call.manager.CallManager`."""

    draining: bool


class _Ended(Exception):
    """The capture ends: close with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str, level: int = logging.WARNING) -> None:
        super().__init__(f"{code} {reason}")
        self.code, self.reason, self.level = code, reason, level


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def _limiter(state: Any, settings: Settings) -> access.RateLimiter:
    limiter: access.RateLimiter | None = getattr(state, "capture_limiter", None)
    if limiter is None:
        limiter = state.capture_limiter = access.RateLimiter(settings.capture_per_minute)
    return limiter


def _count(websocket: WebSocket, reason: str) -> None:
    metrics = getattr(websocket.app.state, "metrics", None)
    if metrics is not None:
        metrics.captures_refused.labels(reason).inc()


async def capture_endpoint(websocket: WebSocket) -> None:
    settings: Settings = websocket.app.state.settings
    offered = websocket.scope.get("subprotocols") or ()
    # Accept first, then refuse: a browser only sees close codes and reasons, never an HTTP status.
    await websocket.accept(subprotocol=wire.CAPTURE_SUBPROTOCOL if wire.CAPTURE_SUBPROTOCOL in offered else None)
    client = websocket.client.host if websocket.client is not None else "unknown"
    call_sid = new_call_sid()
    try:
        handler = await _open(websocket, settings, offered, client, call_sid)
    except access.Refused as refused:
        logger.warning("browser capture from %s refused: %s %s", client, refused.code, refused.reason,
                       extra={"call_sid": None})  # fmt: skip
        _count(websocket, str(refused.code))
        await _close(websocket, refused.code, refused.reason, None)
        return
    await _Capture(websocket, settings, handler, call_sid).run()


async def _open(
    websocket: WebSocket, settings: Settings, offered: Collection[str], client: str, call_sid: str
) -> StreamHandler:
    """The call's stream handler, or :class:`access.Refused` saying why there is none."""
    if wire.CAPTURE_SUBPROTOCOL not in offered:
        raise access.Refused(access.CLOSE_BAD_REQUEST, f"offer the {wire.CAPTURE_SUBPROTOCOL} subprotocol")
    wait = _limiter(websocket.app.state, settings).admit(client)
    if wait:
        raise access.Refused(access.CLOSE_RATE_LIMITED,
                             f"too many captures from this address: retry in {math.ceil(wait)} s")  # fmt: skip
    access.check_capture(websocket, settings)
    admission: AdmissionLike | None = getattr(websocket.app.state, "admission", None)
    refusal = admission.refuse("media") if admission is not None else None
    if refusal is not None:
        raise access.Refused(1013, f"{refusal.detail}: try again later")
    query = websocket.query_params  # per-call options, validated like a Twilio stream's <Parameter>s
    stream_sid = "MZ" + secrets.token_hex(16)
    start = tm.Start(
        sequence_number="1", stream_sid=stream_sid,
        start=tm.StartInfo(account_sid=settings.twilio_account_sid, stream_sid=stream_sid, call_sid=call_sid,
                           tracks=["inbound"], custom_parameters={k: query[k] for k in PARAMETERS if k in query}),
    )  # fmt: skip
    opener: StreamOpener = websocket.app.state.calls
    try:
        handler = await opener.open_stream(start)
    except StreamRejected as exc:
        raise access.Refused(exc.code, exc.reason) from None
    state = websocket.app.state
    state.writer.call(call_sid, "source", lambda: state.store.update_call(call_sid, {"source": "browser"}))
    logger.info("browser capture started from %s", client, extra={"call_sid": call_sid})
    return handler


class _Capture:
    """One accepted capture: frames to the call until stop, a violation, the cap or a disconnect."""

    def __init__(self, websocket: WebSocket, settings: Settings, handler: StreamHandler, call_sid: str) -> None:
        self.ws = websocket
        self.settings = settings
        self.handler = handler
        self.call_sid = call_sid
        self.received = 0  # audio bytes so far: the frames' timestamps
        self.calls: _Draining = websocket.app.state.calls

    async def run(self) -> None:
        s = self.settings
        token = ""
        if s.subscriber_secret:  # the page's own read (and commit) token, for this call only
            token = mint(s.subscriber_secret, [self.call_sid], math.ceil(s.capture_max_seconds) + 3600)
        reason = "browser stop"
        try:
            await self.ws.send_text(wire.encode(wire.Started(call_sid=self.call_sid, token=token,
                                                             max_seconds=s.capture_max_seconds)))  # fmt: skip
            reason = await self._loop()
        except _Ended as end:
            reason = f"{end.code} {end.reason}"
            logger.log(end.level, "closing browser capture %s: %s", end.code, end.reason,
                       extra={"call_sid": self.call_sid})  # fmt: skip
            _count(self.ws, str(end.code))
            await _close(self.ws, end.code, end.reason, self.call_sid)
        except WebSocketDisconnect as gone:  # the page left while we were sending to it
            reason = f"browser closed the socket ({gone.code})"
            logger.info("browser capture closed by the page (%s)", gone.code, extra={"call_sid": self.call_sid})
        except Exception:
            logger.exception("browser capture failed", extra={"call_sid": self.call_sid})
            reason = "internal error"
            await _close(self.ws, 1011, "internal error", self.call_sid)
        finally:
            # A browser never comes back under this CallSid: whatever ended the capture ends the call.
            try:
                await self.handler.on_stop(clean=True, reason=reason)
            except Exception:
                logger.exception("ending the browser call failed", extra={"call_sid": self.call_sid})

    async def _loop(self) -> str:
        loop = asyncio.get_running_loop()
        s = self.settings
        began = loop.time()
        deadline = began + s.capture_max_seconds
        while True:
            left = deadline - loop.time()
            if left <= 0:
                cap = f"capture limited to {s.capture_max_seconds:g} s per connection"
                raise _Ended(access.CLOSE_DURATION_CAP, cap, logging.INFO)
            try:
                message = await asyncio.wait_for(self.ws.receive(), min(left, s.media_idle_timeout))
            except TimeoutError:
                if loop.time() < deadline:
                    raise _Ended(1008, f"no audio for {s.media_idle_timeout:g} s") from None
                continue
            if message["type"] == "websocket.disconnect":
                logger.info("browser capture closed by the page (%s)", message.get("code"),
                            extra={"call_sid": self.call_sid})  # fmt: skip
                return f"browser closed the socket ({message.get('code', 1005)})"
            if self.calls.draining:  # this instance is shutting down: its calls have ended
                raise _Ended(1001, "bridge shutting down: start again to reach another instance", logging.INFO)
            data: bytes | None = message.get("bytes")
            if data is not None:
                await self._audio(data, loop.time() - began)
                continue
            text: str = message.get("text") or ""
            if len(text) > wire.MAX_TEXT_BYTES or len(text.encode()) > wire.MAX_TEXT_BYTES:
                raise _Ended(1009, f"text message larger than {wire.MAX_TEXT_BYTES} bytes")
            try:
                wire.decode(text)  # the only message is stop
            except msgspec.ValidationError as exc:
                raise _Ended(1003, f"unsupported message: {exc}") from None
            except msgspec.DecodeError:
                raise _Ended(1007, "text message is not JSON") from None
            logger.info("browser capture stopped by the page", extra={"call_sid": self.call_sid})
            await _close(self.ws, 1000, "stopped", self.call_sid)
            return "browser stop"

    async def _audio(self, data: bytes, elapsed: float) -> None:
        size = len(data)
        if size > wire.MAX_FRAME_BYTES:
            raise _Ended(1009, f"audio frame larger than {wire.MAX_FRAME_BYTES} bytes")
        if not size or size % wire.BYTES_PER_MS:
            raise _Ended(1007, "audio frames must be whole milliseconds of 8 kHz mu-law (multiples of 8 bytes)")
        if (self.received + size) / (1000 * wire.BYTES_PER_MS) > elapsed + REALTIME_SLACK_SECONDS:
            raise _Ended(1008, "audio arrives faster than real time")
        await self.handler.on_media("inbound", self.received // wire.BYTES_PER_MS, data)
        self.received += size


def _reason(text: str) -> str:
    """Close reasons are limited to 123 UTF-8 bytes."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


async def _close(websocket: WebSocket, code: int, reason: str, call_sid: str | None) -> None:
    if WebSocketState.DISCONNECTED in (websocket.client_state, websocket.application_state):
        return
    try:
        await websocket.close(code=code, reason=_reason(reason))
    except Exception:  # the page may already be gone
        logger.debug("close did not complete", extra={"call_sid": call_sid})


capture_route = WebSocketRoute("/browser/media", capture_endpoint, name="browser_media")

__all__ = ["REALTIME_SLACK_SECONDS", "capture_endpoint", "capture_route", "new_call_sid"]
