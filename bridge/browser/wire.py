"""The messages of ``WS /browser/media`` (the capture page's socket), typed.

Client to server: binary frames of 8 kHz mu-law audio (the page sends 20 ms, 160 bytes; any whole
number of milliseconds up to :data:`MAX_FRAME_BYTES` is accepted), and JSON text messages tagged by
``type`` (:class:`Stop`). Server to client: one :class:`Started` as soon as the call exists, then the
close frame, whose code and reason say why the capture ended.
"""

from __future__ import annotations

import msgspec

#: The subprotocol the capture socket speaks (a token travels as a second, ``bridge.token.…``).
CAPTURE_SUBPROTOCOL = "bridge.capture"
#: Bytes of audio per millisecond (8 kHz mu-law): frames are whole milliseconds.
BYTES_PER_MS = 8
#: Largest audio frame accepted: 200 ms (the page sends 20 ms frames).
MAX_FRAME_BYTES = 1600
#: Largest text message accepted.
MAX_TEXT_BYTES = 1024


class Stop(msgspec.Struct, tag_field="type", tag="stop", forbid_unknown_fields=True):
    """The speaker pressed stop: the call ends normally (its last words kept, recording queued)."""


ClientMessage = Stop


class Started(msgspec.Struct, tag_field="type", tag="started", kw_only=True):
    """The call this capture feeds: its CallSid, the token that reads it (empty when subscriber
    auth is off), and how long the connection may last."""

    call_sid: str
    token: str
    max_seconds: float


_decoder = msgspec.json.Decoder(ClientMessage)
_encoder = msgspec.json.Encoder()


def decode(text: str) -> ClientMessage:
    """Raises ``msgspec.DecodeError``/``ValidationError`` on anything but a known message."""
    return _decoder.decode(text)


def encode(message: Started) -> str:
    return _encoder.encode(message).decode()


__all__ = [
    "BYTES_PER_MS",
    "CAPTURE_SUBPROTOCOL",
    "MAX_FRAME_BYTES",
    "MAX_TEXT_BYTES",
    "ClientMessage",
    "Started",
    "Stop",
    "decode",
    "encode",
]
