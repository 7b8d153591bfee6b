"""Deepgram live (``/v1/listen``) wire messages, shared by our client and our embedded server.

Field names and shapes follow Deepgram's published messages exactly
(https://developers.deepgram.com/reference/speech-to-text/listen-streaming) so that the
official SDK parses what the embedded server sends and our client parses what Deepgram sends.
Server messages are a union tagged by ``type``; unknown extra fields are ignored, as Deepgram adds
fields over time.
"""

from __future__ import annotations

import msgspec


class DGWord(msgspec.Struct, omit_defaults=True):
    word: str
    start: float
    end: float
    confidence: float = 0.0
    punctuated_word: str | None = None
    speaker: int | None = None


class DGAlternative(msgspec.Struct):
    transcript: str
    confidence: float = 0.0
    words: list[DGWord] = msgspec.field(default_factory=list)


class DGChannel(msgspec.Struct):
    alternatives: list[DGAlternative]


class DGModelInfo(msgspec.Struct):
    name: str = ""
    version: str = ""
    arch: str = ""


class DGResultsMetadata(msgspec.Struct):
    request_id: str = ""
    model_info: DGModelInfo = msgspec.field(default_factory=DGModelInfo)
    model_uuid: str = ""


class Results(msgspec.Struct, tag_field="type", tag="Results"):
    channel_index: list[int]
    duration: float
    start: float
    is_final: bool
    channel: DGChannel
    speech_final: bool = False
    from_finalize: bool = False
    metadata: DGResultsMetadata = msgspec.field(default_factory=DGResultsMetadata)


class Metadata(msgspec.Struct, tag_field="type", tag="Metadata"):
    request_id: str
    transaction_key: str = "deprecated"
    sha256: str = ""
    created: str = ""
    duration: float = 0.0
    channels: int = 0
    models: list[str] = msgspec.field(default_factory=list)
    model_info: dict[str, DGModelInfo] = msgspec.field(default_factory=dict)


class UtteranceEnd(msgspec.Struct, tag_field="type", tag="UtteranceEnd"):
    channel: list[int]
    last_word_end: float


class SpeechStarted(msgspec.Struct, tag_field="type", tag="SpeechStarted"):
    channel: list[int]
    timestamp: float


class Error(msgspec.Struct, tag_field="type", tag="Error"):
    description: str = ""
    message: str = ""
    variant: str = ""


ServerMessage = Results | Metadata | UtteranceEnd | SpeechStarted | Error


class KeepAlive(msgspec.Struct, tag_field="type", tag="KeepAlive"):
    pass


class Finalize(msgspec.Struct, tag_field="type", tag="Finalize", omit_defaults=True):
    channel: int | None = None


class CloseStream(msgspec.Struct, tag_field="type", tag="CloseStream"):
    pass


ClientMessage = KeepAlive | Finalize | CloseStream

_encoder = msgspec.json.Encoder()
_server_decoder: msgspec.json.Decoder[ServerMessage] = msgspec.json.Decoder(ServerMessage)
_client_decoder: msgspec.json.Decoder[ClientMessage] = msgspec.json.Decoder(ClientMessage)


def encode(message: ServerMessage | ClientMessage) -> bytes:
    return _encoder.encode(message)


def decode_server(data: bytes | str) -> ServerMessage:
    """Parse a server message; raises ``msgspec.DecodeError``/``ValidationError`` on garbage."""
    return _server_decoder.decode(data)


def decode_client(data: bytes | str) -> ClientMessage:
    """Parse a client control message; raises ``msgspec.DecodeError``/``ValidationError``."""
    return _client_decoder.decode(data)


# Close codes and reasons Deepgram uses
# (https://developers.deepgram.com/docs/recovering-from-connection-errors-and-timeouts-when-live-streaming-audio).
CLOSE_DATA_ERROR = 1008
CLOSE_NET_ERROR = 1011
REASON_DATA = "DATA-0000"
REASON_NET_IDLE = "NET-0001"
REASON_NET_SERVER = "NET-0000"
