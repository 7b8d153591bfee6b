"""The one resilience layer around any :class:`~bridge.recognizers.base.RecognizerStream`.

A :class:`ResilientStream` looks like a single stream that never drops: it keeps the audio not yet
covered by a final in a bounded buffer, forwards audio from a pump task (so ``send`` never waits on
the network), sends keepalives during silence, reconnects with capped exponential backoff and full
jitter, replays the uncovered audio on the new connection, rebases every timestamp onto the call's
clock and drops finals whose audio span an earlier final already covered (by time, never by text).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable

import msgspec

from bridge.events import RecognizerState, Word
from bridge.recognizers.base import (
    Recognizer,
    RecognizerConnectError,
    RecognizerError,
    RecognizerEvent,
    RecognizerStream,
    SpeechStarted,
    StreamOptions,
    Transcript,
    UtteranceEnded,
)
from bridge.retry import Backoff

logger = logging.getLogger(__name__)

#: Finals ending within this much of the covered time count as already covered (rounding slack).
_EPS = 1e-3


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Timings of keepalive, reconnect and replay. Tests shrink them; production keeps the defaults."""

    keepalive_interval: float = 4.0
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    #: This many failures within ``failure_window`` seconds end the stream as ``failed``.
    max_failures: int = 10
    failure_window: float = 120.0
    #: A connection that lived this long resets the backoff to ``backoff_base``.
    stable_after: float = 10.0
    #: Seconds of audio not yet covered by a final that are kept for replay.
    buffer_seconds: float = 60.0
    #: Largest single send when replaying (seconds of audio).
    replay_chunk_seconds: float = 0.5
    #: Bound on opening one connection.
    connect_timeout: float = 10.0

    def backoff(self, attempt: int) -> float:
        """Seconds before reconnect attempt ``attempt`` (the bridge's one rule, :mod:`bridge.retry`)."""
        return Backoff(self.backoff_base, self.backoff_cap).delay(attempt)


@dataclasses.dataclass
class ResilienceStats:
    """Counters exported as metrics."""

    reconnects: int = 0
    replayed_seconds: float = 0.0
    dropped_seconds: float = 0.0
    last_recovery_seconds: float = 0.0
    duplicate_finals: int = 0


_END = object()


class ResilientStream:
    """A recognizer stream that survives drops; implements :class:`RecognizerStream`.

    Timestamps it yields are on the call clock: ``origin`` is the call time of the first byte sent.
    """

    def __init__(
        self,
        recognizer: Recognizer,
        options: StreamOptions,
        *,
        origin: float = 0.0,
        on_state: Callable[[RecognizerState, str], None] | None = None,
        policy: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.recognizer = recognizer
        self.options = options
        self.origin = origin
        self.policy = policy
        self.stats = ResilienceStats()
        self.state: RecognizerState = "connecting"
        self._on_state = on_state
        self._bps = options.bytes_per_second
        self._log = {"call_sid": options.call_sid, "track": options.track}
        # Audio: _buf holds bytes [_buf_start, _total) of this track; _sent is the pump's position.
        self._buf = bytearray()
        self._buf_start = 0
        self._total = 0
        self._sent = 0
        self._covered = 0.0  # seconds from the first byte covered by accepted finals
        self._lost_to = 0  # bytes already accounted as dropped
        self._max_buf = max(1, round(policy.buffer_seconds * self._bps))
        self._max_chunk = max(160, round(policy.replay_chunk_seconds * self._bps))
        self._conn_base = 0.0  # seconds: where the current connection's time 0 sits
        self._audio = asyncio.Event()
        self._pump_idle = False  # the pump is parked waiting for audio (see send's fast path)
        self._last_send = 0.0
        self._closing = asyncio.Event()
        self._close_deadline = 0.0
        self._queue: asyncio.Queue[RecognizerEvent | RecognizerError | object] = asyncio.Queue()
        self._error: RecognizerError | None = None
        self._failures: collections.deque[float] = collections.deque()
        self._stream: RecognizerStream | None = None
        self._task: asyncio.Task[None] | None = None

    # -- public ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the first time. A rejection raises; a transient failure retries in the background."""
        self._set_state("connecting", self.recognizer.name)
        first: RecognizerError | None = None
        try:
            self._stream = await self._open()
        except RecognizerError as exc:
            if not exc.retryable:
                self._fail(exc)
                raise
            first = exc
        else:
            self._set_state("connected", self.recognizer.name)
        self._task = asyncio.create_task(self._supervise(first), name=f"resilient-{self.options.call_sid}")

    async def send(self, audio: bytes) -> None:
        """Buffer ``audio`` and wake the pump; never waits on the network."""
        if not audio:
            return
        if self._closing.is_set() or self._error is not None:
            self.stats.dropped_seconds += len(audio) / self._bps
            return
        caught_up = self._sent == self._total
        self._buf += audio
        self._total += len(audio)
        if len(self._buf) > self._max_buf + self._bps:
            self._trim(self._total - self._max_buf)
        stream = self._stream
        if caught_up and self._pump_idle and stream is not None and self.state == "connected":
            # Fast path (the steady state): the pump is idle with nothing pending, so send from here and
            # spare a task switch per frame. The bytes stay buffered until a final covers them, so a
            # failed send is replayed after the reconnect like any other uncovered audio.
            self._sent = self._total
            self._last_send = asyncio.get_running_loop().time()
            try:
                await stream.send(audio)
            except Exception:
                self._audio.set()  # the reader sees the broken connection; the supervisor reconnects
            return
        self._audio.set()

    async def keepalive(self) -> None:
        """Keepalive is automatic; this forwards one on demand when connected."""
        if self._stream is not None and self.state == "connected":
            with contextlib.suppress(RecognizerError):
                await self._stream.keepalive()

    async def finalize(self) -> None:
        if self._stream is not None and self.state == "connected":
            with contextlib.suppress(RecognizerError):
                await self._stream.finalize()

    async def close(self, timeout: float = 5.0) -> None:
        """Flush the audio, finalize, close the connection, drain its last finals, stop the tasks."""
        self._close_deadline = asyncio.get_running_loop().time() + timeout
        self._closing.set()
        self._audio.set()
        task = self._task
        if task is None:
            self._finish()
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout + 1.0)
        except TimeoutError:
            logger.warning("recognizer stream did not close in %.1fs", timeout, extra=self._log)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._finish()

    async def events(self) -> AsyncIterator[RecognizerEvent]:
        """Rebased, de-duplicated events; raises the error that made the stream fail."""
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]

    @property
    def covered_seconds(self) -> float:
        """Call time up to which finals have been accepted."""
        return self.origin + self._covered

    # -- supervision -------------------------------------------------------------------------

    async def _open(self) -> RecognizerStream:
        timeout = self.policy.connect_timeout
        if self._closing.is_set():
            timeout = max(0.05, min(timeout, self._close_remaining()))
        try:
            return await asyncio.wait_for(self.recognizer.open(self.options), timeout)
        except TimeoutError:
            raise RecognizerConnectError("timed out opening the recognizer stream") from None

    async def _supervise(self, first_error: RecognizerError | None) -> None:
        try:
            error = first_error
            loop = asyncio.get_running_loop()
            attempt = 0
            outage_began = loop.time()
            while True:
                if error is None and self._stream is not None:
                    began = loop.time()
                    error = await self._serve(self._stream)
                    if error is None:
                        break
                    outage_began = loop.time()
                    if outage_began - began >= self.policy.stable_after:
                        attempt = 0
                    logger.warning("recognizer connection lost: %s", error, extra=self._log)
                if self._closing.is_set() and self._close_remaining() <= 0:
                    self._lose_uncovered()
                    break
                assert error is not None
                if not error.retryable or self._too_many_failures(loop.time()):
                    self._fail(error)
                    return
                self._stream = None
                self._set_state("reconnecting", str(error))
                stream = await self._reconnect(attempt)
                attempt += 1
                if isinstance(stream, RecognizerError):
                    error = stream
                    continue
                if stream is None:  # closing while disconnected
                    self._lose_uncovered()
                    break
                self._begin_connection(stream)
                self.stats.reconnects += 1
                self.stats.last_recovery_seconds = loop.time() - outage_began
                self._set_state("connected", f"reconnected, replaying {self._replay_seconds():.2f}s")
                error = None
        except Exception as exc:  # a bug here must surface on events(), not vanish in a task
            logger.exception("resilience supervisor failed", extra=self._log)
            self._fail(RecognizerConnectError(f"resilience supervisor failed: {exc!r}"))
            return
        self._set_state("closed", "")
        self._finish()

    def _close_remaining(self) -> float:
        return self._close_deadline - asyncio.get_running_loop().time()

    async def _reconnect(self, attempt: int) -> RecognizerStream | RecognizerError | None:
        """Wait the backoff, then open once. While closing, keep trying until the close deadline
        (the buffered last words deserve a connection); ``None`` once it has passed."""
        delay = self.policy.backoff(attempt)
        if not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
        if self._closing.is_set():
            remaining = self._close_remaining()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(delay, remaining))
            if self._close_remaining() <= 0:
                return None
        try:
            return await self._open()
        except RecognizerError as exc:
            logger.warning("reconnect attempt %d failed: %s", attempt + 1, exc, extra=self._log)
            return exc

    def _begin_connection(self, stream: RecognizerStream) -> None:
        """Point the pump at the first uncovered byte; the connection's time 0 is that byte."""
        self._stream = stream
        if self._buf_start > self._lost_to:
            lost = self._buf_start - max(self._lost_to, round(self._covered * self._bps))
            if lost > 0:
                self.stats.dropped_seconds += lost / self._bps
            self._lost_to = self._buf_start
        self.stats.replayed_seconds += (self._total - self._buf_start) / self._bps
        self._sent = self._buf_start
        self._conn_base = self._buf_start / self._bps

    def _replay_seconds(self) -> float:
        return (self._total - self._buf_start) / self._bps

    def _too_many_failures(self, now: float) -> bool:
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.policy.failure_window:
            self._failures.popleft()
        return len(self._failures) >= self.policy.max_failures

    async def _serve(self, stream: RecognizerStream) -> RecognizerError | None:
        """Run one connection until it fails (the error) or the stream is closed (``None``)."""
        reader = asyncio.create_task(self._read(stream))
        pump = asyncio.create_task(self._pump(stream))
        try:
            await asyncio.wait({reader, pump}, return_when=asyncio.FIRST_COMPLETED)
            if pump.done() and not reader.done():
                exc = pump.exception()
                if exc is None:  # closing and every byte forwarded: ask for the last finals
                    with contextlib.suppress(RecognizerError):
                        await stream.finalize()
                    with contextlib.suppress(RecognizerError):
                        await stream.close(max(0.1, self._close_remaining()))
                    return await reader
                error = exc if isinstance(exc, RecognizerError) else RecognizerConnectError(repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), 0.5)
                if reader.done():
                    error = reader.result() or error
                with contextlib.suppress(RecognizerError):
                    await stream.close(0)
                return error
            result = await reader
            if result is None and not self._closing.is_set():
                result = RecognizerConnectError("recognizer ended the stream unasked")
            with contextlib.suppress(RecognizerError):
                await stream.close(0)
            return result
        finally:
            for task in (reader, pump):
                task.cancel()
            await asyncio.gather(reader, pump, return_exceptions=True)

    async def _pump(self, stream: RecognizerStream) -> None:
        """Forward buffered audio to ``stream``; keepalive during silence; return once flushed on close."""
        loop = asyncio.get_running_loop()
        self._last_send = loop.time()
        while True:
            if self._sent < self._buf_start:
                self._sent = self._buf_start
            if self._sent < self._total:
                offset = self._sent - self._buf_start
                chunk = bytes(self._buf[offset : offset + self._max_chunk])
                self._sent += len(chunk)
                await stream.send(chunk)
                self._last_send = loop.time()
                continue
            if self._closing.is_set():
                return
            self._audio.clear()
            wait = self.policy.keepalive_interval - (loop.time() - self._last_send)
            if wait > 0:
                self._pump_idle = True
                try:
                    async with asyncio.timeout(wait):
                        await self._audio.wait()
                except TimeoutError:
                    pass
                finally:
                    self._pump_idle = False
                continue
            await stream.keepalive()
            self._last_send = loop.time()

    async def _read(self, stream: RecognizerStream) -> RecognizerError | None:
        try:
            async for event in stream.events():
                self._accept(event)
        except RecognizerError as exc:
            return exc
        return None

    # -- events ------------------------------------------------------------------------------

    def _accept(self, event: RecognizerEvent) -> None:
        base = self.origin + self._conn_base
        if isinstance(event, Transcript):
            start, end = self._conn_base + event.start, self._conn_base + event.end
            if not event.is_final:
                if event.text and end > self._covered + _EPS:
                    self._queue.put_nowait(
                        msgspec.structs.replace(event, start=self.origin + start, end=self.origin + end, words=())
                    )
                return
            if end <= self._covered + _EPS:
                self.stats.duplicate_finals += 1
                logger.debug("dropping final [%.3f, %.3f) already covered", start, end, extra=self._log)
                return
            words = tuple(
                Word(
                    word=w.word,
                    start=base + w.start,
                    end=base + w.end,
                    confidence=w.confidence,
                    punctuated_word=w.punctuated_word,
                )
                for w in event.words
                if self._conn_base + w.end > self._covered + _EPS
            )
            text = event.text
            if start < self._covered - _EPS:  # partly covered: keep only the new words
                if event.words:
                    text = " ".join(w.punctuated_word or w.word for w in words)
                start = self._covered
            self._covered = end
            self._trim(round(end * self._bps))
            if text:
                self._queue.put_nowait(
                    msgspec.structs.replace(
                        event, start=self.origin + start, end=self.origin + end, text=text, words=words
                    )
                )
        elif isinstance(event, SpeechStarted):
            self._queue.put_nowait(SpeechStarted(timestamp=base + event.timestamp))
        elif isinstance(event, UtteranceEnded):
            self._queue.put_nowait(UtteranceEnded(last_word_end=base + event.last_word_end))

    def _trim(self, upto: int) -> None:
        """Forget buffered audio before absolute byte ``upto``."""
        upto = min(upto, self._total)
        if upto > self._buf_start:
            del self._buf[: upto - self._buf_start]
            self._buf_start = upto

    def _lose_uncovered(self) -> None:
        lost = self._total - max(round(self._covered * self._bps), self._lost_to)
        if lost > 0:
            self.stats.dropped_seconds += lost / self._bps
            self._lost_to = self._total

    # -- state -------------------------------------------------------------------------------

    def _set_state(self, state: RecognizerState, detail: str) -> None:
        self.state = state
        logger.info("recognizer %s %s", state, detail, extra=self._log)
        if self._on_state is not None:
            try:
                self._on_state(state, detail)
            except Exception:
                logger.exception("on_state callback failed", extra=self._log)

    def _fail(self, error: RecognizerError) -> None:
        self._error = error
        self._lose_uncovered()
        self._set_state("failed", str(error))
        self._finish()

    def _finish(self) -> None:
        self._queue.put_nowait(_END)


__all__ = ["ResilienceStats", "ResilientStream", "RetryPolicy"]
