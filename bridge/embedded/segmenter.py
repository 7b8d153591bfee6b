"""Voice-activity segmentation: turns a stream of PCM into speech segments for Whisper.

Whisper is not a streaming model, so streaming is a policy around it: webrtcvad marks 20 ms frames
as speech, an onset opens a segment (with a little pre-roll), silence of ``endpoint`` seconds closes
it, partial decodes are requested periodically while it is open, and a segment is cut before it
outgrows the encoder context. The endpoint's silence counts from the end of the speech's energy: a
frame :data:`QUIET_DB` below the segment's loudest is silence even while webrtcvad still calls it
voiced (its decisions trail the last word by ~0.13 s, which every final used to wait out). The
first partial comes ``first_partial_s`` after the onset (not after the pre-roll) so a word shows
early; the owner may shorten the next wait (:meth:`Segmenter.retry_partial`) or change
:attr:`Segmenter.partial_frames` with load. All times are seconds of audio from stream start.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import webrtcvad

from bridge.audio import Upsampler, pcm16_to_float

FRAME_S = 0.02
#: How many frames webrtcvad's decisions may trail the audio.
VAD_LAG_FRAMES = 5
#: A frame this far below the open segment's loudest counts as silence for the endpoint.
QUIET_DB = -35.0


@dataclass(frozen=True)
class SpeechOnset:
    timestamp: float


@dataclass(frozen=True)
class PartialDue:
    segment: int
    start: float
    end: float
    audio: np.ndarray


@dataclass(frozen=True)
class SegmentClosed:
    segment: int
    start: float
    end: float
    audio: np.ndarray
    #: "endpoint" (silence), "max" (context cap), "flush" (Finalize/close)
    reason: str
    has_speech: bool


@dataclass(frozen=True)
class SegmentPausing:
    """The open segment has been silent for a moment: its final can be decoded ahead of the endpoint
    (kept if the speaker does not resume before it, thrown away if they do)."""

    segment: int
    start: float
    end: float
    audio: np.ndarray
    #: End of the last voiced frame: the same at the endpoint means nobody spoke since.
    voiced_end: float


SegmentEvent = SpeechOnset | PartialDue | SegmentPausing | SegmentClosed


class Segmenter:
    """Feed native-rate 16-bit PCM; get :data:`SegmentEvent` values back."""

    def __init__(
        self,
        sample_rate: int,
        *,
        endpoint_s: float = 0.3,
        max_segment_s: float = 9.5,
        partial_interval_s: float = 0.5,
        first_partial_s: float = 0.02,
        preroll_s: float = 0.3,
        vad_mode: int = 2,
        pausing_s: float = 0.1,
        quiet_db: float | None = QUIET_DB,
    ) -> None:
        if sample_rate not in (8000, 16000):
            raise ValueError("sample_rate must be 8000 or 16000")
        self.rate = sample_rate
        self.vad = webrtcvad.Vad(vad_mode)
        self.frame_bytes = int(sample_rate * FRAME_S) * 2
        self.endpoint_frames = max(1, round(endpoint_s / FRAME_S))
        #: Silence after which :class:`SegmentPausing` is announced (only when shorter than the endpoint).
        self.pausing_frames = max(1, round(pausing_s / FRAME_S))
        self.max_frames = int(max_segment_s / FRAME_S)
        self.partial_frames = max(1, round(partial_interval_s / FRAME_S))
        self.first_partial_frames = max(1, round(first_partial_s / FRAME_S))
        self._up = Upsampler() if sample_rate == 8000 else None
        self._carry = b""
        self._frames_seen = 0
        self._preroll: collections.deque[np.ndarray] = collections.deque(maxlen=round(preroll_s / FRAME_S))
        self._recent: collections.deque[bool] = collections.deque(maxlen=6)
        self._seg: list[np.ndarray] = []
        self._voiced: list[bool] = []
        self._seg_start_frame = 0
        self._silence_run = 0
        self._since_partial = 0
        self._due = self.first_partial_frames
        self._segment_id = 0
        #: Level (RMS) under which a frame is silence for the endpoint: ``quiet_ratio`` x the loudest.
        self.quiet_ratio = 0.0 if quiet_db is None else 10 ** (quiet_db / 20)
        #: Whether quiet frames count as silence now (the owner turns it off under load: more,
        #: shorter segments cost a busy recognizer decodes).
        self.energy_endpoint = quiet_db is not None
        self._peak = 0.0
        self.in_speech = False
        #: End time (s) of the last frame of speech: voiced, and in a segment not quiet either.
        self.last_voiced_end = 0.0

    @property
    def time(self) -> float:
        return self._frames_seen * FRAME_S

    @property
    def segment_id(self) -> int:
        return self._segment_id

    def feed(self, pcm: bytes) -> list[SegmentEvent]:
        data = self._carry + pcm
        n = len(data) // self.frame_bytes * self.frame_bytes
        self._carry = data[n:]
        out: list[SegmentEvent] = []
        for i in range(0, n, self.frame_bytes):
            self._frame(data[i : i + self.frame_bytes], out)
        return out

    def _to16k(self, frame: bytes) -> np.ndarray:
        x = pcm16_to_float(frame)
        return self._up(x) if self._up is not None else x

    def _frame(self, frame: bytes, out: list[SegmentEvent]) -> None:
        voiced = self.vad.is_speech(frame, self.rate)
        samples = self._to16k(frame)
        index = self._frames_seen
        self._frames_seen += 1
        self._recent.append(voiced)
        if not self.in_speech:
            if voiced:
                self.last_voiced_end = self._frames_seen * FRAME_S
            self._preroll.append(samples)
            if sum(self._recent) >= 4:
                self._open(index - len(self._preroll) + 1)
                onset = (index - sum(self._recent) + 1) * FRAME_S
                out.append(SpeechOnset(max(onset, self._seg_start_frame * FRAME_S)))
            return
        self._seg.append(samples)
        self._voiced.append(voiced)
        level = float(np.sqrt(np.mean(samples * samples)))
        self._peak = max(self._peak, level)
        silent = not voiced or (self.energy_endpoint and level < self._peak * self.quiet_ratio)
        if silent:
            self._silence_run += 1
        else:
            self._silence_run = 0
            self.last_voiced_end = self._frames_seen * FRAME_S
        self._since_partial += 1
        if self._silence_run >= self.endpoint_frames:
            out.append(self._close("endpoint", len(self._seg)))
            return
        if self._silence_run == self.pausing_frames < self.endpoint_frames:
            start, now = self._seg_start_frame * FRAME_S, self._frames_seen * FRAME_S
            out.append(SegmentPausing(self._segment_id, start, now, np.concatenate(self._seg), self.last_voiced_end))
        if len(self._seg) >= self.max_frames:
            out.append(self._cut())
            return
        if self._since_partial >= self._due and self._silence_run == 0:
            self._since_partial = 0
            self._due = self.partial_frames
            out.append(
                PartialDue(
                    self._segment_id,
                    self._seg_start_frame * FRAME_S,
                    self._frames_seen * FRAME_S,
                    np.concatenate(self._seg),
                )
            )

    def _open(self, start_frame: int) -> None:
        self.in_speech = True
        self._segment_id += 1
        self._seg = list(self._preroll)
        self._voiced = [True] * len(self._seg)
        self._peak = max(float(np.sqrt(np.mean(x * x))) for x in self._seg)
        self._preroll.clear()
        self._seg_start_frame = max(0, start_frame)
        self._silence_run = 0
        self._since_partial = 0
        self._due = self.first_partial_frames

    def _close(self, reason: str, upto: int) -> SegmentClosed:
        seg = self._seg[:upto]
        closed = SegmentClosed(
            self._segment_id,
            self._seg_start_frame * FRAME_S,
            (self._seg_start_frame + upto) * FRAME_S,
            np.concatenate(seg) if seg else np.zeros(0, dtype=np.float32),
            reason,
            any(self._voiced[:upto]),
        )
        rest, rest_voiced = self._seg[upto:], self._voiced[upto:]
        self._seg_start_frame += upto
        if reason == "max":
            self._segment_id += 1
            self._seg, self._voiced = rest, rest_voiced
            self._since_partial = len(rest)
            self._due = self.partial_frames
        else:
            self.in_speech = False
            self._seg, self._voiced = [], []
            self._recent.clear()
        return closed

    def _cut(self) -> SegmentClosed:
        """Close a segment that reached the encoder's limit at its longest pause in the second half
        (the latest of equals), in the middle of it; at the cap only if the speaker never paused.

        The words before the cut become a final now and the rest stays open, so a long monologue is
        finalised piece by piece, never truncated; a pause (rather than the latest unvoiced frame,
        which may sit inside a word) keeps words whole on both sides of the cut.
        """
        half = len(self._voiced) // 2
        best_len, best_end = 0, len(self._voiced)
        run = 0
        for i in range(half, len(self._voiced)):
            run = 0 if self._voiced[i] else run + 1
            if run and run >= best_len:
                best_len, best_end = run, i + 1
        if not best_len:
            return self._close("max", len(self._voiced))
        # The VAD's decisions trail the audio (it holds "voiced" over a pause's start and is late to
        # hear speech resume), so the cut goes in the middle of the quietest frames around the run.
        lo = max(half, best_end - best_len - VAD_LAG_FRAMES)
        energy = [float(np.mean(self._seg[i] ** 2)) for i in range(lo, best_end)]
        floor = min(energy)
        quiet = [lo + k for k, e in enumerate(energy) if e <= 2 * floor + 1e-10]
        return self._close("max", quiet[len(quiet) // 2] + 1)

    def set_partial_interval(self, seconds: float) -> None:
        """Regular partial spacing from now on (the session widens it under load)."""
        frames = max(1, round(seconds / FRAME_S))
        if self._due == self.partial_frames:
            self._due = frames
        self.partial_frames = frames

    def retry_partial(self, segment: int, after_s: float) -> None:
        """Ask for the next partial of ``segment`` sooner (the last one came back empty)."""
        if self.in_speech and segment == self._segment_id:
            self._due = min(self._due, self._since_partial + max(1, round(after_s / FRAME_S)))

    def flush(self) -> SegmentClosed | None:
        """Close the open segment now (Finalize / end of stream)."""
        if not self.in_speech or not self._seg:
            self.in_speech = False
            return None
        return self._close("flush", len(self._seg))
