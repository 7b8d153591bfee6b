"""A Twilio recordings server on 127.0.0.1: a recording's media the way Twilio serves it.

``GET /2010-04-01/Accounts/{AccountSid}/Recordings/{RecordingSid}.wav`` with HTTP Basic auth
(https://www.twilio.com/docs/voice/api/recording#fetch-a-recording-media-file). Since dual-channel
conference recordings became the default, "the default download for Conference recordings will
continue to be mono-channel, but applications can retrieve the dual-channel file by appending the
RequestedChannels query parameter ... set to 2"
(https://www.twilio.com/en-us/changelog/dual-channel-conference-recordings-as-default-is-now-ga).
So a two-channel recording is served downmixed to one 16-bit PCM channel unless the request asks for
``RequestedChannels=2``; asking that of a mono recording serves it mono and logs warning 16113,
"Cannot download a dual-channel presentation of a mono recording"
(https://www.twilio.com/docs/api/errors/16113), kept in :attr:`TwilioRecordingsServer.warnings`.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import wave

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bridge.audio import parse_wav
from bridge.testing._local import LocalHTTPServer


@dataclasses.dataclass(frozen=True)
class Fetch:
    """One download, for assertions."""

    recording_sid: str
    requested_channels: str | None
    served_channels: int


def downmix(raw: bytes) -> bytes:
    """A WAV file's channels mixed into one 16-bit PCM channel (what a plain ``.wav`` GET returns)."""
    wav = parse_wav(raw)
    mono = np.clip(wav.samples().mean(axis=1) * 32768.0, -32768, 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(wav.sample_rate)
        w.writeframes(mono.tobytes())
    return out.getvalue()


class TwilioRecordingsServer(LocalHTTPServer):
    """``async with TwilioRecordingsServer(account_sid, auth_token) as twilio: url = twilio.add(sid, wav)``."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self._auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.recordings: dict[str, bytes] = {}
        self.fetches: list[Fetch] = []
        #: Twilio debugger warnings raised by requests (16113).
        self.warnings: list[int] = []
        super().__init__()

    def add(self, recording_sid: str, wav: bytes) -> str:
        """Store a recording; returns its ``RecordingUrl`` (no extension, as Twilio's callback sends it)."""
        self.recordings[recording_sid] = wav
        return f"{self.base}/2010-04-01/Accounts/{self.account_sid}/Recordings/{recording_sid}"

    async def _media(self, request: Request) -> Response:
        if request.headers.get("authorization") != self._auth:
            return PlainTextResponse("Authenticate", status_code=401)
        if request.path_params["account"] != self.account_sid:
            return PlainTextResponse("not your account", status_code=403)
        name = request.path_params["name"]
        sid, _, ext = name.partition(".")
        raw = self.recordings.get(sid)
        if raw is None or ext != "wav":
            return PlainTextResponse("The requested resource was not found", status_code=404)
        requested = request.query_params.get("RequestedChannels")
        channels = parse_wav(raw).channels
        if requested == "2" and channels == 1:
            self.warnings.append(16113)
        body = raw if channels == 1 or requested == "2" else downmix(raw)
        self.fetches.append(Fetch(sid, requested, parse_wav(body).channels))
        return Response(body, media_type="audio/x-wav")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/2010-04-01/Accounts/{account}/Recordings/{name}", self._media)])


__all__ = ["Fetch", "TwilioRecordingsServer", "downmix"]
