"""Transcript exports as subtitle files: WebVTT and SubRip, one cue per final or utterance, the
speaker as a label (Caller for ``inbound``, Agent for ``outbound``).

- WebVTT (https://www.w3.org/TR/webvtt1/): ``WEBVTT`` header, ``hh:mm:ss.ttt`` timestamps, the speaker
  as a voice span ``<v Agent>``; ``&``, ``<`` and ``>`` escaped so a transcript cannot forge markup
  or a ``-->`` line;
- SubRip (``.srt``): numbered cues, ``hh:mm:ss,ttt`` timestamps, ``Agent: text``.

Times are call seconds (the call's clock: 0 is the start of the call and of its recording).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from starlette.responses import Response

from bridge import events, transcripts

FORMATS = ("vtt", "srt")
MEDIA_TYPES = {"vtt": "text/vtt; charset=utf-8", "srt": "application/x-subrip; charset=utf-8"}


@dataclasses.dataclass(frozen=True, slots=True)
class Cue:
    track: str
    start: float
    end: float
    text: str

    @property
    def speaker(self) -> str:
        return events.SPEAKER.get(self.track, self.track)


def live_cues(finals: Iterable[events.Final]) -> list[Cue]:
    """Cues of the live transcript (finals in audio order)."""
    return [Cue(f.track, f.start, f.end, f.text) for f in finals]


def batch_cues(transcript: transcripts.BatchTranscript) -> list[Cue]:
    return [Cue(u.track, u.start, u.end, u.text) for u in transcripts.in_order(transcript.utterances)]


def timestamp(seconds: float, separator: str = ".") -> str:
    """``hh:mm:ss.ttt`` (``,`` before the milliseconds for SubRip); negative times are 0."""
    ms = max(0, round(seconds * 1000))
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _times(cue: Cue, separator: str) -> str:
    start = max(0.0, cue.start)
    end = max(cue.end, start + 0.001)  # a cue ends after it starts
    return f"{timestamp(start, separator)} --> {timestamp(end, separator)}"


def _one_line(text: str) -> str:
    """Cue text on one line: a blank line would end the cue early."""
    return " ".join(text.split())


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt(cues: Iterable[Cue]) -> str:
    out = ["WEBVTT", ""]
    n = 0
    for cue in cues:
        text = _one_line(cue.text)
        if not text:
            continue
        n += 1
        out += [str(n), _times(cue, "."), f"<v {_vtt_escape(cue.speaker)}>{_vtt_escape(text)}", ""]
    return "\n".join(out) + "\n"


def srt(cues: Iterable[Cue]) -> str:
    out: list[str] = []
    n = 0
    for cue in cues:
        text = _one_line(cue.text)
        if not text:
            continue
        n += 1
        out += [str(n), _times(cue, ","), f"{cue.speaker}: {text}", ""]
    return "\n".join(out) + ("\n" if out else "")


def subtitles(fmt: str, cues: list[Cue], call_sid: str) -> Response:
    """A ``vtt`` or ``srt`` download (``call_sid`` is a validated CallSid: safe in a file name)."""
    body = vtt(cues) if fmt == "vtt" else srt(cues)
    headers = {"content-disposition": f'inline; filename="{call_sid}.{fmt}"'}
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)


__all__ = ["FORMATS", "MEDIA_TYPES", "Cue", "batch_cues", "live_cues", "srt", "subtitles", "timestamp", "vtt"]
