"""A hand-driven Twilio Media Stream for tests that need to misbehave (drop mid-call, reconnect)."""

from __future__ import annotations

import json
import secrets
from types import TracebackType

import websockets
from websockets.asyncio.client import ClientConnection

from bridge.twilio_auth import sign, stream_token


class TwilioStream:
    """One Media Stream: ``start()``, ``media()`` frames, then ``stop()`` or ``drop()``."""

    def __init__(self, url: str, call_sid: str, *, auth_token: str, tracks: tuple[str, ...] = ("inbound",)) -> None:
        self.url = url
        self.call_sid = call_sid
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.auth_token = auth_token
        self.tracks = tracks
        self.seq = 0
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> TwilioStream:
        headers = {"X-Twilio-Signature": sign(self.auth_token, self.url)}
        self.ws = await websockets.connect(self.url, additional_headers=headers)
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "start": {
                    "accountSid": "AC" + "0" * 32,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": list(self.tracks),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": {"token": stream_token(self.auth_token, self.call_sid)},
                },
            }
        )
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.ws is not None:
            await self.ws.close()

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    async def _send(self, doc: dict[str, object]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(doc))

    async def media(self, track: str, timestamp_ms: int, payload: bytes) -> None:
        import base64

        await self._send(
            {
                "event": "media",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "media": {
                    "track": track,
                    "chunk": str(self.seq),
                    "timestamp": str(timestamp_ms),
                    "payload": base64.b64encode(payload).decode(),
                },
            }
        )

    async def stop(self) -> None:
        await self._send(
            {
                "event": "stop",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid},
            }
        )
        assert self.ws is not None
        await self.ws.wait_closed()

    async def drop(self) -> None:
        """Vanish without Twilio's ``stop`` (network loss): the TCP connection just closes."""
        assert self.ws is not None
        self.ws.transport.abort()
        self.ws = None
