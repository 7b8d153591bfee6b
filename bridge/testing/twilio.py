"""A hand-driven, signed Twilio Media Stream for tests and tools that need to misbehave (drop mid-call,
reconnect, send frames out of order). For faithful replays of a WAV use :mod:`bridge.twilio.replay`."""

from __future__ import annotations

import base64
import secrets
from types import TracebackType

import websockets
from websockets.asyncio.client import ClientConnection

from bridge.twilio import models as tm
from bridge.twilio.auth import SIGNATURE_HEADER, sign, stream_token

ACCOUNT_SID = "AC" + "0" * 32


class TwilioStream:
    """One Media Stream: ``async with`` sends ``connected`` and ``start``; then ``media()`` frames, and
    ``stop()`` or ``drop()``."""

    def __init__(
        self,
        url: str,
        call_sid: str,
        *,
        auth_token: str,
        tracks: tuple[tm.Track, ...] = ("inbound",),
        custom_parameters: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.call_sid = call_sid
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.auth_token = auth_token
        self.tracks = tracks
        self.custom_parameters = dict(custom_parameters or {})
        self.seq = 0
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> TwilioStream:
        headers = {SIGNATURE_HEADER: sign(self.auth_token, self.url)} if self.auth_token else {}
        self.ws = await websockets.connect(self.url, additional_headers=headers)
        await self._send(tm.Connected())
        params = {**self.custom_parameters}
        if self.auth_token:
            params["token"] = stream_token(self.auth_token, self.call_sid)
        info = tm.StartInfo(account_sid=ACCOUNT_SID, stream_sid=self.stream_sid, call_sid=self.call_sid,
                            tracks=list(self.tracks), custom_parameters=params)  # fmt: skip
        await self._send(tm.Start(sequence_number=self._next(), stream_sid=self.stream_sid, start=info))
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.ws is not None:
            await self.ws.close()

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    async def _send(self, message: tm.TwilioMessage) -> None:
        assert self.ws is not None
        await self.ws.send(tm.encode(message).decode())

    async def media(self, track: tm.Track, timestamp_ms: int, payload: bytes) -> None:
        seq = self._next()
        info = tm.MediaInfo(track=track, chunk=seq, timestamp=str(timestamp_ms),
                            payload=base64.b64encode(payload).decode())  # fmt: skip
        await self._send(tm.Media(sequence_number=seq, stream_sid=self.stream_sid, media=info))

    async def stop(self) -> None:
        """Twilio's ``stop``, then wait for the bridge to close the socket."""
        stop = tm.StopInfo(account_sid=ACCOUNT_SID, call_sid=self.call_sid)
        await self._send(tm.Stop(sequence_number=self._next(), stream_sid=self.stream_sid, stop=stop))
        assert self.ws is not None
        try:
            await self.ws.wait_closed()
        except websockets.ConnectionClosed:
            pass

    async def drop(self) -> None:
        """Vanish without Twilio's ``stop`` (network loss): the TCP connection just closes."""
        assert self.ws is not None
        self.ws.transport.abort()
        self.ws = None


__all__ = ["ACCOUNT_SID", "TwilioStream"]
