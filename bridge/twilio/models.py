"""Typed Twilio wire messages: Media Streams frames (Twilio to us) and the callback forms.

The bridge only listens: it never sends audio back on a stream, so the bidirectional messages
(``media``/``mark``/``clear`` from us) are not modelled
(https://www.twilio.com/docs/voice/media-streams/websocket-messages).

Twilio spells everything in camelCase and sends ``sequenceNumber``, ``chunk`` and ``timestamp`` as
strings; the structs keep the wire types (so a message re-encodes byte-for-byte the way Twilio
sent it) and expose ``int`` helpers. Unknown fields are ignored so an additive Twilio change does
not break a live call; an unknown ``event`` is a distinct error (:class:`UnknownEvent`).

Every SID is checked against Twilio's shape while decoding (:mod:`bridge.sids`): a ``start``, a
``stop`` or a callback form with a bad CallSid, StreamSid, AccountSid or RecordingSid never gets past
the parser. ``media`` frames are not re-checked: their StreamSid must equal the ``start``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeVar

import msgspec

from bridge.sids import AccountSid, CallSid, RecordingSid, StreamSid

Track = Literal["inbound", "outbound"]
StreamEvent = Literal["stream-started", "stream-stopped", "stream-error"]

#: The only media format Twilio streams ("always", per the Media Streams docs).
MULAW_ENCODING = "audio/x-mulaw"
SAMPLE_RATE = 8000


class TwilioParseError(ValueError):
    """A Media Streams frame is not a valid Twilio message."""


class MalformedMessage(TwilioParseError):
    """Not JSON, or JSON of the wrong shape for its ``event``."""


class UnknownEvent(TwilioParseError):
    """Well-formed JSON with an ``event`` we do not know."""

    def __init__(self, event: str) -> None:
        super().__init__(f"unknown event {event!r}")
        self.event = event


# --------------------------------------------------------------------------------------------
# Twilio -> us


class MediaFormat(msgspec.Struct, rename="camel", kw_only=True):
    encoding: str = MULAW_ENCODING
    sample_rate: int = SAMPLE_RATE
    channels: int = 1


class StartInfo(msgspec.Struct, rename="camel", kw_only=True):
    account_sid: AccountSid
    stream_sid: StreamSid
    call_sid: CallSid
    tracks: list[Track]
    media_format: MediaFormat = msgspec.field(default_factory=MediaFormat)
    custom_parameters: dict[str, str] = msgspec.field(default_factory=dict)


class MediaInfo(msgspec.Struct, kw_only=True):
    track: Track
    chunk: str
    timestamp: str
    payload: str

    @property
    def chunk_number(self) -> int:
        return int(self.chunk)

    @property
    def timestamp_ms(self) -> int:
        return int(self.timestamp)


class DtmfInfo(msgspec.Struct, kw_only=True):
    digit: str
    track: str = "inbound_track"


class MarkInfo(msgspec.Struct, kw_only=True):
    name: str


class StopInfo(msgspec.Struct, rename="camel", kw_only=True):
    account_sid: AccountSid
    call_sid: CallSid


class _Message(msgspec.Struct, tag_field="event", rename="camel", kw_only=True):
    pass


class _Sequenced(_Message):
    sequence_number: str
    stream_sid: str

    @property
    def sequence(self) -> int:
        return int(self.sequence_number)


class Connected(_Message, tag="connected"):
    protocol: str = "Call"
    version: str = "1.0.0"


class Start(_Sequenced, tag="start"):
    stream_sid: StreamSid
    start: StartInfo

    @property
    def call_sid(self) -> str:
        return self.start.call_sid


class Media(_Sequenced, tag="media"):
    media: MediaInfo


class Dtmf(_Sequenced, tag="dtmf"):
    dtmf: DtmfInfo


class Mark(_Sequenced, tag="mark"):
    mark: MarkInfo


class Stop(_Sequenced, tag="stop"):
    stop: StopInfo


TwilioMessage = Connected | Start | Media | Dtmf | Mark | Stop

EVENTS: frozenset[str] = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})

# --------------------------------------------------------------------------------------------
# codec

_decoder = msgspec.json.Decoder(TwilioMessage)
_encoder = msgspec.json.Encoder()


class _EventOnly(msgspec.Struct):
    event: str


_event_decoder = msgspec.json.Decoder(_EventOnly)


def parse(text: str | bytes) -> TwilioMessage:
    """Decode one Media Streams frame; raises :class:`MalformedMessage` or :class:`UnknownEvent`."""
    try:
        message: TwilioMessage = _decoder.decode(text)
        return message
    except msgspec.ValidationError as exc:
        # Slow path only: tell "unknown event" apart from "known event, wrong shape".
        try:
            event = _event_decoder.decode(text).event
        except msgspec.MsgspecError:
            raise MalformedMessage(str(exc)) from None
        if event not in EVENTS:
            raise UnknownEvent(event) from None
        raise MalformedMessage(f"{event}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"invalid JSON: {exc}") from None


def encode(message: TwilioMessage) -> bytes:
    """JSON bytes, shaped exactly like the wire (what :mod:`bridge.twilio.replay` and the test doubles send)."""
    return _encoder.encode(message)


# --------------------------------------------------------------------------------------------
# Callback forms (application/x-www-form-urlencoded; every value is a string on the wire)


class FormError(ValueError):
    """A callback form lacks a required field or has an unusable value."""


class VoiceForm(msgspec.Struct, rename="pascal", kw_only=True):
    """The voice webhook: an incoming call (https://www.twilio.com/docs/voice/twiml#request-parameters)."""

    call_sid: CallSid
    account_sid: AccountSid
    from_: str = msgspec.field(default="", name="From")
    to: str = ""


class CallStatusForm(msgspec.Struct, rename="pascal", kw_only=True):
    """Call status callback (``StatusCallback`` on the call)."""

    call_sid: CallSid
    account_sid: AccountSid
    call_status: Literal[
        "queued",
        "initiated",
        "ringing",
        "in-progress",
        "completed",
        "busy",
        "failed",
        "no-answer",
        "canceled",
    ]
    from_: str = msgspec.field(default="", name="From")
    to: str = ""
    direction: str = ""
    call_duration: int | None = None
    timestamp: str = ""
    sequence_number: int | None = None
    callback_source: str = ""
    parent_call_sid: str = ""  # not used; never stored or logged


class StreamStatusForm(msgspec.Struct, rename="pascal", kw_only=True):
    """``<Stream statusCallback>``: stream started / stopped / failed."""

    call_sid: CallSid
    account_sid: AccountSid
    stream_sid: StreamSid
    stream_event: StreamEvent
    stream_name: str = ""
    stream_error: str = ""
    timestamp: str = ""


class RecordingStatusForm(msgspec.Struct, rename="pascal", kw_only=True):
    """``recordingStatusCallback``: a recording is in progress, completed or absent."""

    call_sid: CallSid
    account_sid: AccountSid
    recording_sid: RecordingSid
    recording_status: Literal["in-progress", "completed", "absent", "failed"]
    recording_url: str = ""
    recording_duration: int | None = None
    recording_channels: int | None = None
    recording_start_time: str = ""
    recording_source: str = ""
    recording_track: str = ""
    error_code: str = ""


FormT = TypeVar("FormT", VoiceForm, CallStatusForm, StreamStatusForm, RecordingStatusForm)


def parse_form(form_type: type[FormT], form: Mapping[str, str]) -> FormT:
    """Validate a callback form; numeric fields are converted from their string form."""
    try:
        return msgspec.convert(dict(form), type=form_type, strict=False)
    except msgspec.ValidationError as exc:
        raise FormError(str(exc)) from None


__all__ = [
    "EVENTS",
    "MULAW_ENCODING",
    "SAMPLE_RATE",
    "CallStatusForm",
    "Connected",
    "Dtmf",
    "DtmfInfo",
    "FormError",
    "MalformedMessage",
    "Mark",
    "MarkInfo",
    "Media",
    "MediaFormat",
    "MediaInfo",
    "RecordingStatusForm",
    "Start",
    "StartInfo",
    "Stop",
    "StopInfo",
    "StreamEvent",
    "StreamStatusForm",
    "Track",
    "TwilioMessage",
    "TwilioParseError",
    "UnknownEvent",
    "VoiceForm",
    "encode",
    "parse",
    "parse_form",
]
