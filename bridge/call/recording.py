"""Per-call recording: the mu-law audio Twilio sent, written as a WAV file for the batch pass.

Twilio's frames are placed by their ``media.timestamp`` (not by arrival), so a dropped or late frame
leaves mu-law silence where it belongs and the two legs stay aligned sample for sample. With both
tracks the file is stereo: channel 0 = inbound (caller), channel 1 = outbound (agent).
The header is the standard WAVE_FORMAT_MULAW (tag 7) one that sox, ffmpeg and browsers read.

Three rules keep a recording from hurting the call it records:

- a recording never truncates audio already on disk: a call that comes back under the same CallSid
  (a new ``<Start><Stream>`` after the call had ended) appends to its file (:meth:`CallRecording.open`);
- silence is filled for timestamp gaps only as far as the wall clock allows (``elapsed``): a stream
  cannot make the file grow faster than real time by announcing leaps;
- a write that fails (disk full, file size limit, permissions) stops the recording, never the call:
  the error is kept in :attr:`CallRecording.error`, ``on_failure`` is told once, and :meth:`close`
  still writes a header that covers what reached the disk.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

from bridge.audio import MULAW_HEADER_BYTES, SAMPLE_RATE, mulaw_header
from bridge.events import Track
from bridge.files import recording_file

log = logging.getLogger(__name__)

#: Write once this much audio (per channel) is ready; keeps writes large and rare.
_FLUSH_BYTES = SAMPLE_RATE
#: A leg that stops sending is padded with silence once the other is this far ahead.
_MAX_SKEW_BYTES = 2 * SAMPLE_RATE
#: Only a track that grew to this many pending bytes can make a flush or the skew pad due: the
#: shortest track has to reach ``_FLUSH_BYTES``, the longest to pass ``_MAX_SKEW_BYTES``.
_CHECK_BYTES = min(_FLUSH_BYTES, _MAX_SKEW_BYTES)
#: A single timestamp jump larger than this is treated as bogus, not as a gap to fill.
_MAX_GAP_BYTES = 600 * SAMPLE_RATE
#: Silence filled per track may exceed the wall-clock time of the call by this much (network jitter).
SILENCE_SLACK_SECONDS = 5.0
#: How many differently shaped recordings of one CallSid may sit side by side.
_MAX_VARIANTS = 20

_WAVE_FORMAT_MULAW = 7


class RecordingShapeMismatch(ValueError):
    """An existing file of this call cannot be appended to (not ours, or another channel count)."""


def _existing_frames(fh: io.FileIO, path: Path, channels: int) -> int:
    """Frames already in one of our recordings, checked to be appendable; raises the mismatch."""
    head = fh.read(MULAW_HEADER_BYTES)
    if (
        len(head) < MULAW_HEADER_BYTES
        or head[:4] != b"RIFF"
        or head[8:16] != b"WAVEfmt "
        or head[50:54] != b"data"
    ):
        raise RecordingShapeMismatch(f"{path.name} is not a bridge recording")
    tag, file_channels = struct.unpack_from("<HH", head, 20)
    if tag != _WAVE_FORMAT_MULAW or file_channels != channels:
        raise RecordingShapeMismatch(f"{path.name} has {file_channels} channels, not {channels}")
    size = os.fstat(fh.fileno()).st_size
    return max(0, size - MULAW_HEADER_BYTES) // channels


class CallRecording:
    """Writes one call's audio to ``path`` as it arrives; :meth:`close` finalises the header.

    ``elapsed`` (seconds of wall-clock time the call has lasted) bounds the silence filled for gaps;
    without it gaps are only bounded per jump.
    """

    def __init__(
        self,
        path: Path,
        tracks: Sequence[Track],
        *,
        elapsed: Callable[[], float] | None = None,
        on_failure: Callable[[str], None] | None = None,
        append: bool = False,
    ) -> None:
        self.path = path
        self.tracks: tuple[Track, ...] = tuple(tracks)
        self.channels = len(self.tracks)
        if self.channels not in (1, 2):
            raise ValueError("a recording has one or two tracks")
        self._elapsed = elapsed
        self._on_failure = on_failure
        self._pending: dict[Track, bytearray] = {t: bytearray() for t in self.tracks}
        self._filled: dict[Track, int] = dict.fromkeys(self.tracks, 0)
        self._written = 0  # frames (samples per channel) already on disk
        self._base = 0  # call-clock frame of the file's first frame (see :meth:`anchor`)
        #: Frames that were already in the file when this recording was opened (an earlier session).
        self.resumed_frames = 0
        self.gaps_filled = 0  # bytes of silence inserted for missing frames
        #: Timestamp jumps not filled with silence (bogus, or beyond what the wall clock allows).
        self.jumps_ignored = 0
        #: Why the recording stopped early ("" while it is fine).
        self.error = ""
        self._fh: io.FileIO | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if append:
                fh = io.FileIO(path, "r+")
                try:
                    frames = _existing_frames(fh, path, self.channels)
                    fh.truncate(MULAW_HEADER_BYTES + frames * self.channels)
                    fh.seek(0, os.SEEK_END)
                except BaseException:
                    fh.close()
                    raise
                self._fh = fh
                self._written = self.resumed_frames = frames
            else:
                self._fh = io.FileIO(path, "x")  # never truncate a recording
                self._write_all(mulaw_header(self.channels, 0))
        except OSError as exc:
            self._fail(exc)

    @classmethod
    def open(
        cls,
        directory: Path,
        call_sid: str,
        tracks: Sequence[Track],
        *,
        elapsed: Callable[[], float] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> CallRecording:
        """The recording of ``call_sid`` in ``directory``: its existing file continued when there is one.

        A file of another shape (e.g. mono where this stream is stereo) is left alone and a sibling
        ``{sid}.2.wav``… is used. ``call_sid`` must already be a valid CallSid; the path is checked
        again to lie inside ``directory`` (:func:`bridge.files.recording_file`).
        """
        for n in range(1, _MAX_VARIANTS + 1):
            path = recording_file(directory, f"{call_sid}.wav" if n == 1 else f"{call_sid}.{n}.wav")
            exists = path.exists()
            try:
                return cls(path, tracks, elapsed=elapsed, on_failure=on_failure, append=exists)
            except RecordingShapeMismatch as exc:
                log.warning("recording %s: %s; using another file", path.name, exc)
        raise RecordingShapeMismatch(f"{call_sid}: {_MAX_VARIANTS} recordings of other shapes already exist")

    def anchor(self, call_frames: int) -> None:
        """Say which call-clock frame the next audio belongs at: it goes right after what the file holds.

        :meth:`write` offsets are on the call clock; a file that an earlier session of the call already
        filled continues where it stopped, whatever the time between the two sessions.
        """
        self._base = call_frames - self._written

    @property
    def failed(self) -> bool:
        return bool(self.error)

    @property
    def duration(self) -> float:
        return self.frames / SAMPLE_RATE

    @property
    def frames(self) -> int:
        return self._written + max(len(b) for b in self._pending.values())

    def _silence_allowed(self, track: Track, gap: int) -> bool:
        if gap > _MAX_GAP_BYTES:
            return False
        if self._elapsed is None:
            return True
        budget = (self._elapsed() + SILENCE_SLACK_SECONDS) * SAMPLE_RATE
        return self._filled[track] + gap <= budget

    def write(self, track: Track, offset_bytes: int, payload: bytes) -> None:
        """Place ``payload`` at byte ``offset_bytes`` of ``track`` on the call clock (Twilio timestamp times 8)."""
        buf = self._pending.get(track)
        if buf is None or self._fh is None:
            return
        pos = offset_bytes - self._base - self._written
        end = len(buf)
        if pos > end:
            gap = pos - end
            if self._silence_allowed(track, gap):
                buf.extend(b"\xff" * gap)
                self._filled[track] += gap
                self.gaps_filled += gap
            else:
                if not self.jumps_ignored:
                    log.warning("recording %s: not filling a %.1f s timestamp jump with silence",
                                self.path.name, gap / SAMPLE_RATE)  # fmt: skip
                self.jumps_ignored += 1
                pos = end
        if pos < 0:  # a frame for audio already written: keep what is on disk
            payload = payload[-pos:]
            pos = 0
        if pos < len(buf):  # overlap (duplicate or re-sent frame): overwrite in place
            overlap = min(len(buf) - pos, len(payload))
            buf[pos : pos + overlap] = payload[:overlap]
            buf.extend(payload[overlap:])
        else:
            buf.extend(payload)
        if len(buf) >= _CHECK_BYTES:  # below it neither a flush nor the skew pad can be due
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        lengths = [len(b) for b in self._pending.values()]
        ready = min(lengths)
        if max(lengths) - ready > _MAX_SKEW_BYTES:
            # One leg went quiet (no frames at all): pad it so memory stays bounded.
            ready = max(lengths) - _MAX_SKEW_BYTES
            for b in self._pending.values():
                if len(b) < ready:
                    self.gaps_filled += ready - len(b)
                    b.extend(b"\xff" * (ready - len(b)))
        if ready >= _FLUSH_BYTES:
            self._flush(ready)

    def _write_all(self, data: bytes | bytearray) -> None:
        assert self._fh is not None
        view = memoryview(data)
        while view:
            n = self._fh.write(view)
            if not n:
                raise OSError(f"short write to {self.path.name}")
            view = view[n:]

    def _flush(self, n: int) -> None:
        if n <= 0 or self._fh is None:
            return
        out: bytes | bytearray
        if self.channels == 1:
            (buf,) = self._pending.values()
            out = bytes(buf[:n])
        else:
            a, b = (self._pending[t] for t in self.tracks)
            out = bytearray(2 * n)
            out[0::2] = a[:n]
            out[1::2] = b[:n]
        for b in self._pending.values():
            del b[:n]
        try:
            self._write_all(out)
        except OSError as exc:
            self._fail(exc)
            return
        self._written += n

    def _fail(self, exc: OSError) -> None:
        """Stop recording for good; keep what reached the disk readable."""
        self.error = f"{type(exc).__name__}: {exc.strerror or exc}"
        log.error("recording %s stopped: %s (the call goes on)", self.path.name, self.error)
        for b in self._pending.values():
            b.clear()
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                on_disk = max(0, os.fstat(fh.fileno()).st_size - MULAW_HEADER_BYTES) // self.channels
                self._written = on_disk
                fh.seek(0)
                fh.write(mulaw_header(self.channels, on_disk))  # rewrites bytes in place: never grows
            except OSError:
                pass
            finally:
                fh.close()
        if self._on_failure is not None:
            callback, self._on_failure = self._on_failure, None
            callback(self.error)

    def close(self) -> float:
        """Pad the legs to the same length, write everything and the final header; returns seconds.

        Never raises: a failure here is one more recording failure (:attr:`error`).
        """
        if self._fh is None:
            return self._written / SAMPLE_RATE
        longest = max(len(b) for b in self._pending.values())
        for b in self._pending.values():
            b.extend(b"\xff" * (longest - len(b)))
        self._flush(longest)
        fh = self._fh
        if fh is None:  # the last flush failed
            return self._written / SAMPLE_RATE
        try:
            fh.seek(0)
            fh.write(mulaw_header(self.channels, self._written))
            os.fsync(fh.fileno())
        except OSError as exc:
            self._fail(exc)
            return self._written / SAMPLE_RATE
        self._fh = None
        try:
            fh.close()
        except OSError as exc:
            log.warning("closing recording %s: %s", self.path.name, exc)
        return self._written / SAMPLE_RATE


__all__ = ["SILENCE_SLACK_SECONDS", "CallRecording", "RecordingShapeMismatch"]
