"""Twilio identifiers (SIDs): what a CallSid, StreamSid, AccountSid and RecordingSid look like.

A SID is two letters naming its kind and 32 hexadecimal digits
(https://www.twilio.com/docs/glossary/what-is-a-sid). Every SID that reaches the bridge from outside
(a Media Streams ``start``, a webhook form, a REST path) is checked against its shape before it
touches the disk, Redis or a log line: a SID is part of file names and key names, so anything else
(``../x``, ``CA…:finals``, a NUL, a newline) is refused at the door.

The typed wire models use the ``Annotated`` types below, so msgspec rejects a bad SID while decoding.
A regular expression is all this needs: the ``twilio`` package has no validator for SIDs.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

_HEX32 = "[0-9a-fA-F]{32}"

CALL_SID_PATTERN = f"^CA{_HEX32}$"
STREAM_SID_PATTERN = f"^MZ{_HEX32}$"
ACCOUNT_SID_PATTERN = f"^AC{_HEX32}$"
RECORDING_SID_PATTERN = f"^RE{_HEX32}$"

CallSid = Annotated[str, msgspec.Meta(pattern=CALL_SID_PATTERN)]
StreamSid = Annotated[str, msgspec.Meta(pattern=STREAM_SID_PATTERN)]
AccountSid = Annotated[str, msgspec.Meta(pattern=ACCOUNT_SID_PATTERN)]
RecordingSid = Annotated[str, msgspec.Meta(pattern=RECORDING_SID_PATTERN)]

_CALL_SID = re.compile(CALL_SID_PATTERN)
_STREAM_SID = re.compile(STREAM_SID_PATTERN)


def is_call_sid(value: str) -> bool:
    """True when ``value`` has the shape of a Twilio CallSid (``CA`` + 32 hex digits)."""
    return _CALL_SID.fullmatch(value) is not None


def is_stream_sid(value: str) -> bool:
    """True when ``value`` has the shape of a Twilio StreamSid (``MZ`` + 32 hex digits)."""
    return _STREAM_SID.fullmatch(value) is not None


__all__ = [
    "ACCOUNT_SID_PATTERN",
    "CALL_SID_PATTERN",
    "RECORDING_SID_PATTERN",
    "STREAM_SID_PATTERN",
    "AccountSid",
    "CallSid",
    "RecordingSid",
    "StreamSid",
    "is_call_sid",
    "is_stream_sid",
]
