"""The recording job: what the bridge hands to the batch worker after a call.

It travels as a Redis Stream entry of flat string fields so that a consumer in any language can read
it without this package (lists are comma-separated, numbers are decimal strings).
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec

JobSource = Literal["stream", "twilio"]


class RecordingJob(msgspec.Struct, kw_only=True, frozen=True):
    call_sid: str
    #: Local path of the recording (source ``stream``) or where it is to be downloaded to.
    path: str
    format: str = "wav"
    encoding: str = "mulaw"
    sample_rate: int = 8000
    channels: int = 1
    #: Track of each channel, in channel order (e.g. ``["inbound", "outbound"]``).
    tracks: list[str] = msgspec.field(default_factory=list)
    duration: float = 0.0
    created_at: float = msgspec.field(default_factory=time.time)
    #: ``stream``: written by the bridge from the media stream; ``twilio``: a Twilio recording.
    source: JobSource = "stream"
    recording_url: str = ""

    def to_fields(self) -> dict[str, str]:
        """The flat string fields of the stream entry."""
        return {
            "call_sid": self.call_sid,
            "path": self.path,
            "format": self.format,
            "encoding": self.encoding,
            "sample_rate": str(self.sample_rate),
            "channels": str(self.channels),
            "tracks": ",".join(self.tracks),
            "duration": repr(float(self.duration)),
            "created_at": repr(float(self.created_at)),
            "source": self.source,
            "recording_url": self.recording_url,
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str] | dict[bytes, bytes]) -> RecordingJob:
        """Parse a stream entry; raises ``ValueError``/``msgspec.ValidationError`` on a bad one."""
        f = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        tracks = [t for t in f.get("tracks", "").split(",") if t]
        return msgspec.convert(
            {
                "call_sid": f["call_sid"],
                "path": f.get("path", ""),
                "format": f.get("format", "wav"),
                "encoding": f.get("encoding", "mulaw"),
                "sample_rate": int(f.get("sample_rate", "8000")),
                "channels": int(f.get("channels", "1")),
                "tracks": tracks,
                "duration": float(f.get("duration", "0")),
                "created_at": float(f.get("created_at", "0")),
                "source": f.get("source", "stream"),
                "recording_url": f.get("recording_url", ""),
            },
            cls,
        )


__all__ = ["JobSource", "RecordingJob"]
