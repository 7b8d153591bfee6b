"""A local fake Twilio: calls in progress that keep streaming their audio, and the Streams REST API.

``FakeTwilio`` serves, on 127.0.0.1, the two requests of the Stream resource
(https://www.twilio.com/docs/voice/api/stream-resource) with HTTP Basic auth (AccountSid or API key):
``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}/Streams.json`` (``Url``, ``Track``,
``StatusCallback``, ``ParameterN.Name``/``.Value``) starts a stream of a call, and
``POST …/Streams/{StreamSid}.json`` with ``Status=stopped`` stops one. At most four streams of a call
run at once; a call that has ended has no streams to start.

A :class:`SimulatedCall` plays its two legs in real time on the call's own clock, one 20 ms frame
per track per tick, to every stream it has open, each stream the way Twilio sends it
(https://www.twilio.com/docs/voice/media-streams/websocket-messages): ``connected``, ``start`` with
the ``customParameters``, then ``media`` with the stream's own ``sequenceNumber``, per-track
``chunk`` and a ``timestamp`` in milliseconds *from that stream's start* (its first frame is the
call's first 20 ms after its ``start`` message: a stream opened 20 s into the call sends it with
timestamp 0), and ``stop`` when the stream or the call ends.
Every stream end (stopped through the API, the call over, or the socket lost because the instance
behind it died) is posted, signed, to the stream's ``StatusCallback`` as ``stream-stopped`` or
``stream-error`` (https://www.twilio.com/docs/voice/twiml/stream#statuscallback).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import email.utils
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from typing import Literal
from urllib.parse import parse_qsl

import httpx
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.testing._local import LocalHTTPServer
from bridge.twilio import models as tm
from bridge.twilio.auth import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

FRAME_MS = 20
FRAME_BYTES = 160
#: Streams of one call that may run at once.
MAX_STREAMS = 4
_API = "/2010-04-01/Accounts/{account}/Calls/{call}"


@dataclasses.dataclass
class StreamRecord:
    """One stream of a call, for assertions: where it went and which call frames it carried."""

    sid: str
    url: str
    status_callback: str
    parameters: dict[str, str]
    #: Call frame (20 ms each) its first media frame carried; ``None`` until it started.
    first_frame: int | None = None
    #: Call frames sent on it so far, per track.
    frames_sent: int = 0
    #: ``stopped`` (API or call end) or ``error`` (its socket was lost); empty while it runs.
    ended: Literal["", "stopped", "error"] = ""
    error: str = ""


class _Stream:
    """One Media Stream socket of a simulated call."""

    def __init__(self, call: SimulatedCall, record: StreamRecord) -> None:
        self.call = call
        self.record = record
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()
        self.seq = 0
        self.chunks = dict.fromkeys(call.tracks, 0)
        self.ws: websockets.ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        #: Frames go to the stream from the first tick after its ``start``: that is its timestamp 0.
        self.started = False
        self.stopping = False

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    async def _send(self, message: tm.TwilioMessage) -> None:
        assert self.ws is not None
        await self.ws.send(tm.encode(message).decode())

    async def run(self) -> None:
        rec, call = self.record, self.call
        headers = {SIGNATURE_HEADER: sign(call.twilio.auth_token, rec.url)}
        reason: Literal["stopped", "error"] = "stopped"
        try:
            async with websockets.connect(rec.url, additional_headers=headers, open_timeout=10) as ws:
                self.ws = ws
                await self._send(tm.Connected())
                info = tm.StartInfo(account_sid=call.twilio.account_sid, stream_sid=rec.sid, call_sid=call.call_sid,
                                    tracks=list(call.tracks), custom_parameters=dict(rec.parameters))  # fmt: skip
                await self._send(tm.Start(sequence_number=self._next(), stream_sid=rec.sid, start=info))
                self.started = True
                while (frame := await self.queue.get()) is not None:
                    if rec.first_frame is None:
                        rec.first_frame = frame
                    stamp = str((frame - rec.first_frame) * FRAME_MS)
                    for track in call.tracks:
                        self.chunks[track] += 1
                        payload = call.audio[track][frame * FRAME_BYTES : (frame + 1) * FRAME_BYTES]
                        media = tm.MediaInfo(track=track, chunk=str(self.chunks[track]), timestamp=stamp,
                                             payload=base64.b64encode(payload).decode())  # fmt: skip
                        await self._send(tm.Media(sequence_number=self._next(), stream_sid=rec.sid, media=media))
                    rec.frames_sent += 1
                stop = tm.StopInfo(account_sid=call.twilio.account_sid, call_sid=call.call_sid)
                await self._send(tm.Stop(sequence_number=self._next(), stream_sid=rec.sid, stop=stop))
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            reason = "error"
            rec.error = f"{type(exc).__name__}: {exc}"[:200]
            log.info("fake twilio: stream %s lost: %s", rec.sid, rec.error)
        finally:
            self.ws = None
            rec.ended = reason
            call.streams.pop(rec.sid, None)
        await call.twilio.status_callback(call, rec, "stream-stopped" if reason == "stopped" else "stream-error")

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.queue.put_nowait(None)


class SimulatedCall:
    """A call in progress: ``await call.answer(twiml)`` starts the TwiML's ``<Start><Stream>``; the
    audio then plays in real time until it runs out (:meth:`finished`)."""

    def __init__(self, twilio: FakeTwilio, call_sid: str, audio: dict[tm.Track, bytes]) -> None:
        self.twilio = twilio
        self.call_sid = call_sid
        self.tracks: tuple[tm.Track, ...] = tuple(audio)
        self.audio = audio
        self.frames = min(len(a) for a in audio.values()) // FRAME_BYTES
        self.streams: dict[str, _Stream] = {}
        #: Every stream the call had, in order.
        self.history: list[StreamRecord] = []
        self.in_progress = True
        self.frame = 0
        self._t0 = 0.0
        self._clock: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def seconds(self) -> float:
        """Call time: seconds of audio played so far."""
        return self.frame * FRAME_MS / 1000

    def open_stream(self, url: str, status_callback: str, parameters: dict[str, str]) -> StreamRecord:
        record = StreamRecord(sid="MZ" + secrets.token_hex(16), url=url, status_callback=status_callback,
                              parameters=parameters)  # fmt: skip
        stream = _Stream(self, record)
        self.streams[record.sid] = stream
        self.history.append(record)
        stream.task = asyncio.create_task(stream.run())
        self._tasks.add(stream.task)
        return record

    async def answer(self, twiml: str) -> StreamRecord:
        """Do what a voice webhook's TwiML asks: its ``<Start><Stream>``; then the call plays."""
        element = ET.fromstring(twiml).find("Start/Stream")
        if element is None:
            raise ValueError("the TwiML starts no stream")
        params = {p.attrib["name"]: p.attrib["value"] for p in element.findall("Parameter")}
        record = self.open_stream(element.attrib["url"], element.attrib.get("statusCallback", ""), params)
        self._t0 = time.monotonic()
        self._clock = asyncio.create_task(self._play())
        return record

    async def _play(self) -> None:
        for frame in range(self.frames):
            self.frame = frame
            delay = self._t0 + frame * FRAME_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for stream in list(self.streams.values()):
                if stream.started and not stream.stopping:
                    stream.queue.put_nowait(frame)
        self.frame = self.frames
        self.hang_up()

    def hang_up(self) -> None:
        self.in_progress = False
        for stream in list(self.streams.values()):
            stream.stop()

    async def at(self, seconds: float) -> None:
        """Wait until call time ``seconds`` (the call plays in real time from :meth:`answer`)."""
        await asyncio.sleep(max(0.0, self._t0 + seconds - time.monotonic()))

    async def finished(self) -> None:
        """Wait until the call is over and every stream's end was reported."""
        if self._clock is not None:
            await self._clock
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            self._tasks = {t for t in self._tasks if not t.done()}

    async def aclose(self) -> None:
        """Hang up now (if still in progress) and wait for the streams' ends to be reported."""
        clock, self._clock = self._clock, None
        if clock is not None:
            clock.cancel()
            await asyncio.gather(clock, return_exceptions=True)
        self.hang_up()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.finished()


class FakeTwilio(LocalHTTPServer):
    """``async with FakeTwilio(account_sid, auth_token) as twilio:`` point ``TWILIO_API_BASE_URL`` at
    ``twilio.base``; ``twilio.call(call_sid, audio)`` places a call."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.calls: dict[str, SimulatedCall] = {}
        #: Every REST request, as (method path, HTTP status), and every callback, as (event, StreamSid, status).
        self.requests: list[tuple[str, int]] = []
        self.callbacks: list[tuple[str, str, int]] = []
        super().__init__()

    def call(self, call_sid: str, audio: dict[tm.Track, bytes]) -> SimulatedCall:
        call = self.calls[call_sid] = SimulatedCall(self, call_sid, audio)
        return call

    async def status_callback(self, call: SimulatedCall, rec: StreamRecord, event: tm.StreamEvent) -> None:
        if not rec.status_callback:
            return
        form = {"AccountSid": self.account_sid, "CallSid": call.call_sid, "StreamSid": rec.sid, "StreamName": rec.sid,
                "StreamEvent": event, "Timestamp": email.utils.formatdate(usegmt=True)}  # fmt: skip
        if event == "stream-error":
            form["StreamError"] = "Stream - WebSocket - Connection Broken"
        headers = {SIGNATURE_HEADER: sign(self.auth_token, rec.status_callback, form)}
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.post(rec.status_callback, data=form, headers=headers)
            self.callbacks.append((event, rec.sid, response.status_code))
        except httpx.HTTPError as exc:
            log.warning("fake twilio: status callback failed: %s", exc)
            self.callbacks.append((event, rec.sid, 0))

    def _error(self, request: Request, status: int, code: int, message: str) -> Response:
        self.requests.append((f"{request.method} {request.url.path}", status))
        return JSONResponse({"code": code, "message": message, "status": status}, status_code=status)

    def _call_of(self, request: Request) -> SimulatedCall | Response:
        if request.headers.get("authorization") != self._auth:
            return self._error(request, 401, 20003, "Authenticate")
        if request.path_params["account"] != self.account_sid:
            return self._error(request, 404, 20404, "The requested resource was not found")
        call = self.calls.get(request.path_params["call"])
        if call is None:
            return self._error(request, 404, 20404, "The requested resource was not found")
        return call

    @staticmethod
    async def _form(request: Request) -> dict[str, str]:
        return dict(parse_qsl((await request.body()).decode(errors="replace"), keep_blank_values=True))

    def _resource(self, call: SimulatedCall, rec: StreamRecord, status: str) -> dict[str, str | None]:
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call.call_sid}/Streams/{rec.sid}.json"
        return {"sid": rec.sid, "account_sid": self.account_sid, "call_sid": call.call_sid, "name": rec.sid,
                "status": status, "date_updated": email.utils.formatdate(usegmt=True), "uri": uri}  # fmt: skip

    async def _create(self, request: Request) -> Response:
        call = self._call_of(request)
        if isinstance(call, Response):
            return call
        form = await self._form(request)
        url, callback = form.get("Url", ""), form.get("StatusCallback", "")
        if not url.startswith(("wss://", "ws://")):
            return self._error(request, 400, 21201, "Url must be a wss:// URL")
        if not call.in_progress:
            return self._error(request, 400, 21220, "Call is not in progress")
        if len(call.streams) >= MAX_STREAMS:
            return self._error(request, 400, 31940, "Too many streams on this call")
        params = {}
        for i in range(1, 100):
            name = form.get(f"Parameter{i}.Name")
            if name is not None:
                params[name] = form.get(f"Parameter{i}.Value", "")
        rec = call.open_stream(url, callback, params)
        self.requests.append((f"POST {request.url.path}", 201))
        return JSONResponse(self._resource(call, rec, "in-progress"), status_code=201)

    async def _update(self, request: Request) -> Response:
        call = self._call_of(request)
        if isinstance(call, Response):
            return call
        form = await self._form(request)
        sid = request.path_params["sid"].removesuffix(".json")
        stream = call.streams.get(sid)
        if form.get("Status") != "stopped":
            return self._error(request, 400, 21218, "Status must be stopped")
        if stream is None:
            return self._error(request, 404, 20404, "The requested resource was not found")
        stream.stop()
        self.requests.append((f"POST {request.url.path}", 200))
        return JSONResponse(self._resource(call, stream.record, "stopped"))

    def app(self) -> Starlette:
        routes = [Route(_API + "/Streams.json", self._create, methods=["POST"]),
                  Route(_API + "/Streams/{sid}", self._update, methods=["POST"])]  # fmt: skip
        return Starlette(routes=routes)

    async def stop(self) -> None:
        for call in list(self.calls.values()):
            await call.aclose()
        await super().stop()


__all__ = ["MAX_STREAMS", "FakeTwilio", "SimulatedCall", "StreamRecord"]
