"""ElevenLabs Scribe v2 Realtime client
(https://elevenlabs.io/docs/api-reference/speech-to-text/v-1-speech-to-text-realtime).

Scribe differs from Deepgram in ways this module hides behind :class:`RecognizerStream`: audio
travels base64 in JSON chunks (we batch Twilio's 20 ms frames into >= 100 ms), partials carry no
times (we estimate them from the audio sent), and there is no keepalive message, so
:meth:`ElevenLabsStream.keepalive` sends mu-law silence and every time we yield is mapped back onto
the caller's audio clock with that inserted silence taken out.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import logging
import math
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection
from websockets.datastructures import Headers

from bridge.events import Word
from bridge.recognizers.base import (
    RecognizerConnectError,
    RecognizerError,
    RecognizerInputError,
    RecognizerRejected,
    RecognizerThrottled,
    StreamOptions,
    Transcript,
)
from bridge.recognizers.elevenlabs.wire import (
    INPUT_ERRORS,
    REJECTING_ERRORS,
    SOFT_ERRORS,
    THROTTLING_ERRORS,
    CommittedTranscript,
    CommittedTranscriptWithTimestamps,
    ErrorMessage,
    InputAudioChunk,
    PartialTranscript,
    SessionStarted,
    WarningMessage,
    decode_server,
    encode,
)
from bridge.recognizers.websocket import WebSocketStream, open_socket

logger = logging.getLogger(__name__)

#: No ingest limit is documented; the server has one (``queue_overflow``), so replay is paced like
#: Deepgram's documented 1.25x.
ELEVENLABS_INGEST_RATE = 1.25
#: Realtime keyterms: "maximum 50, each at most 20 characters" (the SDK's ``RealtimeAudioOptions``).
MAX_KEYTERMS, MAX_KEYTERM_CHARS = 50, 20


def usable_keyterms(keyterms: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(keyterms Scribe realtime accepts, the ones it would refuse) within its documented limits."""
    fit = [k for k in keyterms if len(k) <= MAX_KEYTERM_CHARS]
    return fit[:MAX_KEYTERMS], [k for k in keyterms if len(k) > MAX_KEYTERM_CHARS] + fit[MAX_KEYTERMS:]


def realtime_query(options: StreamOptions, model_id: str) -> str:
    if options.encoding == "mulaw" and options.sample_rate == 8000:
        audio_format = "ulaw_8000"
    else:
        audio_format = f"pcm_{options.sample_rate}"
    params = {
        "model_id": model_id,
        "audio_format": audio_format,
        "commit_strategy": "vad",
        "include_timestamps": "true",
    }
    if options.utterance_end_ms is not None:
        params["vad_silence_threshold_secs"] = f"{min(3.0, max(0.3, options.utterance_end_ms / 1000)):g}"
    if options.language:
        params["language_code"] = options.language
    keyterms, _ = usable_keyterms(options.keyterms)
    return urlencode([*params.items(), *(("keyterms", k) for k in keyterms)])


def _body(status: int, headers: Headers, body: bytes) -> str:
    return body.decode(errors="replace")[:200]


class ElevenLabsRecognizer:
    """Opens Scribe v2 Realtime streams."""

    def __init__(
        self,
        url: str = "wss://api.elevenlabs.io",
        api_key: str = "",
        model_id: str = "scribe_v2_realtime",
        *,
        name: str = "elevenlabs",
        max_ingest_rate: float | None = ELEVENLABS_INGEST_RATE,
        open_timeout: float = 10.0,
        ping_interval: float | None = 5.0,
        ping_timeout: float | None = 5.0,
        chunk_seconds: float = 0.1,
        max_garbage: int = 10,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.model_id = model_id
        self.name = name
        self.max_ingest_rate = max_ingest_rate
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.chunk_seconds = chunk_seconds
        self.max_garbage = max_garbage

    def realtime_url(self, options: StreamOptions) -> str:
        return f"{self.url}/v1/speech-to-text/realtime?{realtime_query(options, options.model or self.model_id)}"

    async def open(self, options: StreamOptions) -> ElevenLabsStream:
        ws = await open_socket(
            self.realtime_url(options),
            {"xi-api-key": self.api_key} if self.api_key else {},
            options,
            vendor="ElevenLabs",
            open_timeout=self.open_timeout,
            rejects=lambda status: 400 <= status < 500 and status not in (408, 429),
            detail=_body,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
        )
        _, refused = usable_keyterms(options.keyterms)
        if refused:
            logger.warning("ElevenLabs realtime takes at most %d keyterms of <= %d characters; not sent: %s",
                           MAX_KEYTERMS, MAX_KEYTERM_CHARS, ", ".join(refused),
                           extra={"call_sid": options.call_sid, "track": options.track})  # fmt: skip
        return ElevenLabsStream(
            ws, options, chunk_bytes=round(self.chunk_seconds * options.bytes_per_second), max_garbage=self.max_garbage
        )


class ElevenLabsStream(WebSocketStream):
    """One Scribe realtime connection for one call track."""

    vendor = "ElevenLabs"

    def __init__(
        self, ws: ClientConnection, options: StreamOptions, *, chunk_bytes: int = 800, max_garbage: int = 10
    ) -> None:
        self._bps = options.bytes_per_second
        self._chunk_bytes = max(1, chunk_bytes)
        self._pending = bytearray()
        # Audio clock: bytes sent on the connection (caller audio + inserted silence).
        self._conn_bytes = 0
        self._caller_bytes = 0
        # Inserted silence, as parallel sorted lists: connection time it began, its length, and the
        # total silence (seconds) inserted up to and including it.
        self._silence_at: list[float] = []
        self._silence_total: list[float] = []
        self._silence_len: list[float] = []
        self._last_final_end = 0.0
        self._uncommitted = False
        self._held: CommittedTranscript | None = None
        self._committed = asyncio.Event()  # the last commit's final is out (timestamped, or empty)
        self._answered = asyncio.Event()  # any committed transcript since the last commit
        self.session_id = ""
        #: Context for the model, allowed on the session's first chunk only (``InputAudioChunkPayload``).
        self._previous_text = options.previous_text or None
        super().__init__(ws, options, max_garbage=max_garbage)

    # -- sending -------------------------------------------------------------------------------

    async def send(self, audio: bytes) -> None:
        if not audio:
            return
        self._pending += audio
        self._caller_bytes += len(audio)
        if len(self._pending) >= self._chunk_bytes:
            await self._flush()

    async def _flush(self, *, commit: bool = False) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        if data:
            self._uncommitted = True
        if not data and not commit:
            return
        self._conn_bytes += len(data)
        chunk = InputAudioChunk(
            audio_base_64=base64.b64encode(data).decode(), commit=commit, sample_rate=self.options.sample_rate,
            previous_text=self._previous_text,
        )  # fmt: skip
        self._previous_text = None
        await self._send(encode(chunk).decode())

    async def keepalive(self) -> None:
        """No keepalive message exists: send 100 ms of silence, remembered so times can skip it."""
        await self._flush()
        silence = self._chunk_bytes
        seconds = silence / self._bps
        self._silence_at.append(self._conn_bytes / self._bps)
        self._silence_len.append(seconds)
        self._silence_total.append((self._silence_total[-1] if self._silence_total else 0.0) + seconds)
        self._pending += b"\xff" * silence if self.options.encoding == "mulaw" else b"\x00" * silence
        await self._flush()

    async def finalize(self) -> None:
        await self._flush(commit=True)

    async def commit(self) -> None:
        """A chunk with ``commit: true`` (carrying what is pending) makes Scribe commit the segment now
        and answer with its committed transcript, as at close (VAD keeps committing on its own too)."""
        await self._flush(commit=True)

    async def close(self, timeout: float = 5.0) -> None:
        """Commit what is buffered and wait (bounded) for its committed transcript, then close."""
        unanswered = False
        if not self._closing and not self._reader.done():
            self._closing = True
            self._committed.clear()
            self._answered.clear()
            try:
                await self._flush(commit=True)
                if self._uncommitted:
                    try:
                        await asyncio.wait_for(self._committed.wait(), timeout)
                    except TimeoutError:
                        unanswered = not self._answered.is_set()
            except RecognizerError:
                pass
        self._closing = True
        if unanswered and not self._reader.done():
            await self._abandon(f"sent no committed transcript within {timeout:.1f}s of the last commit")
        if not self._reader.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), max(0.1, timeout))
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        else:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 0.1)

    # -- clocks --------------------------------------------------------------------------------

    def caller_time(self, t: float) -> float:
        """Map connection audio time ``t`` onto the caller's audio (inserted silence removed)."""
        i = bisect.bisect_right(self._silence_at, t) - 1
        if i < 0:
            return t
        before = self._silence_total[i] - self._silence_len[i]
        inside = min(t - self._silence_at[i], self._silence_len[i])
        return t - before - inside

    def _audio_end(self) -> float:
        return self._caller_bytes / self._bps

    # -- receiving -----------------------------------------------------------------------------

    def _emit_held(self) -> None:
        """A committed transcript whose timestamped twin never came: yield it with estimated times."""
        held, self._held = self._held, None
        if held is None or not held.text.strip():
            return
        end = max(self._last_final_end, self._audio_end())
        self.emit(Transcript(is_final=True, start=self._last_final_end, end=end, text=held.text.strip()))
        self._last_final_end = end

    def _final(self, message: CommittedTranscriptWithTimestamps) -> None:
        words = [w for w in message.words if w.type == "word" and w.start is not None and w.end is not None]
        mapped = tuple(
            Word(
                word=w.text.strip(),
                start=self.caller_time(w.start or 0.0),
                end=self.caller_time(w.end or 0.0),
                confidence=_confidence(w.logprob),
                punctuated_word=w.text.strip(),
            )
            for w in words
        )
        text = message.text.strip()
        if mapped:
            start, end = mapped[0].start, mapped[-1].end
        else:
            start, end = self._last_final_end, max(self._last_final_end, self._audio_end())
        if not text:
            return
        confidence = sum(w.confidence for w in mapped) / len(mapped) if mapped else 0.0
        self.emit(
            Transcript(
                is_final=True,
                start=start,
                end=end,
                text=text,
                speech_final=True,
                from_finalize=self._closing,
                confidence=confidence,
                words=mapped,
            )
        )
        self._last_final_end = max(self._last_final_end, end)

    def on_message(self, data: str | bytes) -> RecognizerError | None:
        message = decode_server(data)
        if isinstance(message, CommittedTranscript | CommittedTranscriptWithTimestamps):
            self._answered.set()
        if isinstance(message, CommittedTranscriptWithTimestamps):
            self._held = None
            self._uncommitted = False
            self._final(message)
            self._committed.set()
        elif isinstance(message, CommittedTranscript):
            self._emit_held()
            self._uncommitted = False
            self._held = message
            if not message.text.strip():
                self._held = None
                self._committed.set()
        elif isinstance(message, PartialTranscript):
            self._emit_held()
            if message.text.strip():
                self.emit(
                    Transcript(
                        is_final=False,
                        start=self._last_final_end,
                        end=max(self._last_final_end, self._audio_end()),
                        text=message.text.strip(),
                    )
                )
        elif isinstance(message, SessionStarted):
            self.session_id = message.session_id
        elif isinstance(message, WarningMessage):
            logger.warning("ElevenLabs warning: %s", message.warning, extra=self._log_extra)
        elif isinstance(message, ErrorMessage):
            logger.warning("ElevenLabs %s: %s", message.message_type, message.error, extra=self._log_extra)
            kind = message.message_type
            detail = f"ElevenLabs {kind}: {message.error}"
            if kind in INPUT_ERRORS:
                return RecognizerInputError(detail, reason=kind)
            if kind in REJECTING_ERRORS:
                return RecognizerRejected(detail, reason=kind)
            if kind in THROTTLING_ERRORS:
                return RecognizerThrottled(detail, reason=kind)
            if kind not in SOFT_ERRORS:
                return RecognizerConnectError(detail, reason=kind)
        return None

    def on_end(self) -> None:
        self._emit_held()
        self._committed.set()


def _confidence(logprob: float | None) -> float:
    if logprob is None:
        return 0.0
    return max(0.0, min(1.0, math.exp(logprob)))


__all__ = ["ELEVENLABS_INGEST_RATE", "ElevenLabsRecognizer", "ElevenLabsStream", "realtime_query", "usable_keyterms"]
