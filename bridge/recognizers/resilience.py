"""The one resilience layer around any :class:`~bridge.recognizers.base.RecognizerStream`.

A :class:`ResilientStream` looks like a single stream that never drops: it keeps the audio not yet
covered by a final in a bounded buffer, forwards audio from a pump task (so ``send`` never waits on
the network), sends keepalives during silence, reconnects with capped exponential backoff and full
jitter, replays the uncovered audio on the new connection, rebases every timestamp onto the call's
clock and drops finals whose audio span an earlier final already covered (by time, never by text).

Replay respects the vendor: a connection that opens with a backlog sends it no faster than the
recognizer's ingest rate (Deepgram: 1.25x real time) until it has caught up with live audio, and
the backlog is capped so that the live transcript is current again within
:attr:`RetryPolicy.catchup_seconds`; older audio is left to the batch pass and recorded as a
:class:`~bridge.events.LiveGap`. Rejections (bad key, quota, undecodable audio) are never retried.

Fallback is a policy of this layer, not a second copy of it: with a fallback recognizer, a track
switches when the primary rejects it (401/402/403, undecodable audio), throttles it (429), or is not
back within :attr:`RetryPolicy.fallback_after` seconds; all the uncovered audio is replayed to the
fallback (paced, and not cut by the catch-up budget: that wait bounds it) and de-duplicated by audio
time as after any reconnect. The switch holds for the rest of
the stream: flapping between vendors mid-call costs more than it saves, and the next stream (a new
call, or Twilio reconnecting this one) tries the primary first again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable

from bridge.events import GapReason, LiveGap, RecognizerState, ServedSpan
from bridge.recognizers.base import (
    Recognizer,
    RecognizerConnectError,
    RecognizerError,
    RecognizerEvent,
    RecognizerStream,
    RecognizerThrottled,
    SendsNow,
    SpeechStarted,
    StreamOptions,
    Transcript,
    UtteranceEnded,
)
from bridge.recognizers.commits import CommitMarks
from bridge.recognizers.dedup import EPS, rebase
from bridge.recognizers.policy import ResilienceStats, RetryPolicy

logger = logging.getLogger(__name__)

#: Characters of recent final text handed to a new connection as context (ElevenLabs ``previous_text``).
_CONTEXT_CHARS = 500
#: Put on the events queue when the stream has ended.
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
        policy: RetryPolicy | None = None,
        fallback: Recognizer | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.options = options
        self.origin = origin
        self.policy = policy = policy or RetryPolicy()
        self.stats = ResilienceStats()
        self.state: RecognizerState = "connecting"
        #: Which recognizer transcribed which part of the track, and what was not transcribed live.
        self.served: list[ServedSpan] = []
        self.gaps: list[LiveGap] = []
        #: The track has switched to the fallback recognizer.
        self.on_fallback = False
        self._fallback = fallback
        self._on_state = on_state
        self._bps = options.bytes_per_second
        self._width = 1 if options.encoding in ("mulaw", "alaw") else 2
        self._log = {"call_sid": options.call_sid, "track": options.track}
        # Audio: _buf holds bytes [_buf_start, _total) of this track; _sent is the pump's position.
        self._buf = bytearray()
        self._buf_start = self._total = self._sent = 0
        self._covered = 0.0  # seconds from the first byte covered by accepted finals
        self._lost_to = 0  # bytes already accounted as not transcribed live
        self._max_buf = max(1, round(policy.buffer_seconds * self._bps))
        self._max_chunk = max(160, round(min(policy.replay_chunk_seconds, policy.pace_burst_seconds) * self._bps))
        self._hold = round(policy.send_chunk_seconds * self._bps) // self._width * self._width
        self._flush_timer: asyncio.TimerHandle | None = None
        # Per frame, asyncio.get_running_loop() costs a getpid() system call: look it up once.
        self._loop = asyncio.get_running_loop()
        self._due = False  # held audio waited its chunk's time: send whatever is pending
        self._conn_base = 0.0  # seconds: where the current connection's time 0 sits
        # Pacing of the current connection: bytes/s (None: unpaced), its start, bytes it was sent.
        self._pace_rate: float | None = None
        self._pace_t0, self._pace_sent = 0.0, 0
        self._recent: collections.deque[str] = collections.deque(maxlen=20)
        self._audio = asyncio.Event()
        self._pump_idle = False  # the pump is parked waiting for audio (see send's fast path)
        self._last_send = 0.0
        self._closing = asyncio.Event()
        self._close_deadline = 0.0
        self._queue: asyncio.Queue[RecognizerEvent | RecognizerError | object] = asyncio.Queue()
        self._error: RecognizerError | None = None
        self._failures: collections.deque[float] = collections.deque()
        self._stream: RecognizerStream | None = None
        self._send_now: Callable[[bytes], bool] | None = None  # the stream's send_nowait, if it has one
        self._task: asyncio.Task[None] | None = None
        self._marks = CommitMarks()

    # -- public ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the first time. A rejection raises (unless a fallback takes over); a transient
        failure retries in the background."""
        self._set_state("connecting", self.recognizer.name)
        first: RecognizerError | None = None
        try:
            stream = await self._open()
        except RecognizerError as exc:
            if not exc.retryable and self._fallback is None:
                self._fail(exc)
                raise
            first = exc
        else:
            self._begin_connection(stream)
            self._set_state("connected", self.recognizer.name)
        self._task = asyncio.create_task(self._supervise(first), name=f"resilient-{self.options.call_sid}")

    async def send(self, audio: bytes) -> None:
        """Buffer ``audio`` and wake the pump; never waits on the network."""
        self.send_nowait(audio)

    def send_nowait(self, audio: bytes) -> None:
        """:meth:`send` for a synchronous caller (the media socket's read callback)."""
        if not audio:
            return
        if self._closing.is_set() or self._error is not None:  # not transcribed live: say so
            self._gap(self._total, self._total + len(audio), "failed" if self._error is not None else "closing")
            self._total = self._lost_to = self._total + len(audio)
            return
        self._buf += audio
        self._total += len(audio)
        if len(self._buf) > self._max_buf + self._bps:
            self._trim(self._total - self._max_buf)
        if self._pump_idle and self._pace_rate is None and self.state == "connected":
            # Fast path (the steady state): the pump is parked, so what is pending was held here to coalesce;
            # a chunk's worth (or a flush timer's) is written from here if the connection takes it at once.
            if not self._holding(self._total - self._sent) and not self._send_held():
                self._due = True
                self._audio.set()
            return
        self._audio.set()

    def _holding(self, pending: int) -> bool:
        """Keep ``pending`` live bytes back for now (less than a chunk, not yet waited a chunk's time);
        arms the timer that ends the wait. Never while replaying, pacing or closing."""
        if pending >= self._hold or self._due or self._pace_rate is not None or self._closing.is_set():
            return False
        if self._flush_timer is None:
            self._flush_timer = self._loop.call_later(self.policy.send_chunk_seconds, self._flush_due)
        return True

    def _flush_due(self) -> None:
        """Held audio waited a whole chunk: the pump sends it (frames stopped coming, or came slowly)."""
        self._flush_timer = None
        self._due = True
        self._audio.set()

    def _take_held(self) -> bytes:
        """The held audio, marked as sent (its bytes stay buffered until a final covers them, so a
        failed send is replayed after the reconnect like any other)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._sent = max(self._sent, self._buf_start)
        chunk = bytes(self._buf[self._sent - self._buf_start :])
        if chunk:
            self._sent = self._total
            self._due = False
            self._last_send = self._loop.time()
        return chunk

    def _send_held(self) -> bool:
        """Write the held audio without waiting; False if the connection cannot take it now (then
        the pump sends it, waiting as it must)."""
        send_now = self._send_now
        if send_now is None or self._stream is None:
            return False
        sent, due = self._sent, self._due
        chunk = self._take_held()
        if not chunk:
            return True
        try:
            if send_now(chunk):
                return True
        except Exception:
            self._audio.set()  # the reader sees the broken connection; the supervisor reconnects
            return True
        self._sent, self._due = sent, due  # not written: the pump sends it
        return False

    async def _send_pending(self) -> None:
        """Send the held audio from the caller's task (the pump is parked)."""
        if self._stream is None or self._send_held() or not (chunk := self._take_held()):
            return
        try:
            await self._stream.send(chunk)
        except Exception:
            self._audio.set()  # the reader sees the broken connection; the supervisor reconnects

    async def keepalive(self) -> None:
        """Keepalive is automatic; this forwards one on demand when connected."""
        if self._stream is not None and self.state == "connected":
            with contextlib.suppress(RecognizerError):
                await self._stream.keepalive()

    async def finalize(self) -> None:
        if self._stream is not None and self.state == "connected":
            if self._pump_idle and self._pace_rate is None:
                await self._send_pending()  # the held audio belongs before the finalize
            with contextlib.suppress(RecognizerError):
                await self._stream.finalize()

    async def commit(self) -> float | None:
        """Close the current segment at the audio received so far; that call-clock second (``None``:
        closing or failed). It follows its audio (held audio flushed first), now or once a reconnect's
        replay reaches it; de-duplication by audio time stores a re-sent commit's final once."""
        if self._closing.is_set() or self._error is not None:
            return None
        self._marks.add(mark := self._total, round(self._covered * self._bps))
        self._due = True
        stream = self._stream
        if stream is not None and self._pump_idle and self._pace_rate is None and self.state == "connected":
            await self._send_pending()
            with contextlib.suppress(RecognizerError):
                for _ in range(self._marks.due(self._sent)):
                    await stream.commit()
        self._audio.set()
        return round(self.origin + mark / self._bps, 3)

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
            self._lose_uncovered("closing")
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

    # -- supervision -------------------------------------------------------------------------

    async def _open(self, limit: float | None = None) -> RecognizerStream:
        timeout = self.policy.connect_timeout if limit is None else max(0.05, min(limit, self.policy.connect_timeout))
        if self._closing.is_set():
            timeout = max(0.05, min(timeout, self._close_remaining()))
        options = self.options
        if self._recent:  # a reconnect: tell the recognizer what was said before (ElevenLabs uses it)
            options = dataclasses.replace(options, previous_text=" ".join(self._recent)[-_CONTEXT_CHARS:].lstrip())
        try:
            return await asyncio.wait_for(self.recognizer.open(options), timeout)
        except TimeoutError:
            raise RecognizerConnectError(f"timed out opening the {self.recognizer.name} stream") from None

    async def _supervise(self, first_error: RecognizerError | None) -> None:
        try:
            error = first_error
            loop = asyncio.get_running_loop()
            attempt = 0
            outage_began = loop.time()
            replay_all = False
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
                    self._lose_uncovered("closing")
                    break
                assert error is not None
                self._stream = None
                give_up = not error.retryable or self._too_many_failures(loop.time())
                delay = self.policy.backoff(attempt)
                if self._fallback is not None and (
                    give_up or isinstance(error, RecognizerThrottled)
                    or loop.time() - outage_began >= self.policy.fallback_after
                ):  # fmt: skip
                    self._switch(error)
                    attempt, delay, replay_all = 0, 0.0, True
                elif give_up:
                    self._fail(error)
                    return
                else:
                    self._set_state("reconnecting", str(error))
                deadline = None
                if self._fallback is not None:  # the primary gets until fallback_after, not longer
                    deadline = outage_began + self.policy.fallback_after
                    delay = min(delay, max(0.0, deadline - loop.time()))
                stream = await self._reconnect(delay, deadline)
                attempt += 1
                if isinstance(stream, RecognizerError):
                    error = stream
                    continue
                if stream is None:  # closing while disconnected
                    self._lose_uncovered("closing")
                    break
                self._begin_connection(stream, replay_all=replay_all)
                replay_all = False
                self.stats.reconnects += 1
                self.stats.last_recovery_seconds = loop.time() - outage_began
                self._set_state("connected", self._connected_detail())
                error = None
        except Exception as exc:  # a bug here must surface on events(), not vanish in a task
            logger.exception("resilience supervisor failed", extra=self._log)
            self._fail(RecognizerConnectError(f"resilience supervisor failed: {exc!r}"))
            return
        if self.served:
            self.served[-1].end = round(self.origin + self._total / self._bps, 3)
        self._set_state("closed", "")
        self._finish()

    def _switch(self, error: RecognizerError) -> None:
        """Hand the track to the fallback for the rest of the stream (see the module docstring)."""
        assert self._fallback is not None
        old, self.recognizer, self._fallback = self.recognizer, self._fallback, None
        self.on_fallback = True
        self.stats.switches += 1
        self._failures.clear()
        logger.warning("switching from %s to the fallback %s: %s", old.name, self.recognizer.name, error,
                       extra=self._log)  # fmt: skip
        self._set_state("reconnecting", f"switching from {old.name} to fallback {self.recognizer.name}: {error}")

    def _close_remaining(self) -> float:
        return self._close_deadline - asyncio.get_running_loop().time()

    async def _reconnect(self, delay: float, deadline: float | None) -> RecognizerStream | RecognizerError | None:
        """Wait ``delay``, then open once (bounded by ``deadline``). While closing, keep trying until the
        close deadline (the buffered last words deserve a connection); ``None`` once it has passed."""
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
        limit = None if deadline is None else deadline - asyncio.get_running_loop().time()
        try:
            return await self._open(limit)
        except RecognizerError as exc:
            logger.warning("reconnect to %s failed: %s", self.recognizer.name, exc, extra=self._log)
            return exc

    def _begin_connection(self, stream: RecognizerStream, *, replay_all: bool = False) -> None:
        """Point the pump at the first uncovered byte (within the catch-up budget, except on a switch
        to the fallback: its backlog is bounded by ``fallback_after`` and loses nothing); the
        connection's time 0 is that byte."""
        self._stream = stream
        self._send_now = stream.send_nowait if isinstance(stream, SendsNow) else None
        bps = self._bps
        lost_from = max(self._lost_to, round(self._covered * bps))
        self._gap(lost_from, self._buf_start, "buffer")
        start = self._buf_start
        rate = self.policy.ingest_rate(getattr(self.recognizer, "max_ingest_rate", None))
        if rate is not None and not replay_all:
            budget = round(self.policy.catchup_seconds * max(0.0, rate - 1.0) * bps) // self._width * self._width
            if self._total - start > budget:
                skip_to = self._total - budget
                self._gap(start, skip_to, "catchup")
                self._trim(skip_to)
                start = skip_to
        self._lost_to = start
        self._marks.restart(start)
        self.stats.replayed_seconds += (self._total - start) / bps
        self._sent = start
        self._conn_base = start / bps
        self._pace_rate = None if rate is None else rate * bps
        self._pace_t0, self._pace_sent = asyncio.get_running_loop().time(), 0
        name, at = self.recognizer.name, round(self.origin + self._conn_base, 3)
        if not self.served or self.served[-1].recognizer != name or self.served[-1].fallback != self.on_fallback:
            if self.served:
                self.served[-1].end = round(self.origin + lost_from / bps, 3)
            self.served.append(ServedSpan(recognizer=name, start=at, fallback=self.on_fallback))

    def _connected_detail(self) -> str:
        detail = f"{self.recognizer.name}: replaying {(self._total - self._sent) / self._bps:.2f}s"
        gap = self.gaps[-1] if self.gaps else None
        if gap is not None and gap.reason == "catchup" and abs(gap.end - (self.origin + self._conn_base)) < EPS:
            detail += f"; {gap.start:.2f}-{gap.end:.2f}s left to the batch pass (catch-up budget)"
        return detail

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
        """Forward buffered audio to ``stream`` (paced while behind); keepalive during silence;
        return once flushed on close."""
        loop = asyncio.get_running_loop()
        self._last_send = loop.time()
        burst = self.policy.pace_burst_seconds * self._bps
        while True:
            if self._sent < self._buf_start:
                self._sent = self._buf_start
            for _ in range(self._marks.due(self._sent)):
                await stream.commit()
            pending = self._total - self._sent
            if pending and self._holding(pending):
                pending = 0  # wait for a chunk's worth, like send's fast path
            if pending:  # a chunk never runs past a commit: the commit goes out right after its audio
                n = self._marks.chunk(self._sent, min(self._max_chunk, pending))
                rate = self._pace_rate
                if rate is not None:
                    wait = (self._pace_sent + n - burst) / rate - (loop.time() - self._pace_t0)
                    if wait > 0:
                        self.stats.paced_seconds += wait
                        await asyncio.sleep(wait)
                        continue
                offset = self._sent - self._buf_start
                chunk = bytes(self._buf[offset : offset + n])
                self._sent += len(chunk)
                self._due = False
                self._pace_sent += len(chunk)
                await stream.send(chunk)
                self._last_send = loop.time()
                continue
            rate = self._pace_rate
            if rate is not None and (loop.time() - self._pace_t0) * rate - self._pace_sent >= 0:
                # Caught up, with a full burst of headroom for jitter: live audio comes at real time,
                # under every vendor's limit, so it goes straight out again (send's fast path).
                self._pace_rate = None
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
            out = rebase(event, conn_base=self._conn_base, covered=self._covered, origin=self.origin)
            if not event.is_final:
                if out is not None:
                    self._queue.put_nowait(out)
                return
            end = self._conn_base + event.end
            if out is None:
                self.stats.duplicate_finals += 1
                logger.debug("dropping final [%.3f, %.3f) already covered", self._conn_base + event.start, end,
                             extra=self._log)  # fmt: skip
                return
            self._covered = end
            self._trim(round(end * self._bps))
            self._marks.covered(round((end + EPS) * self._bps))  # times are rounded to the millisecond
            if out.text:
                self._recent.append(out.text)
                self._queue.put_nowait(out)
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

    def _gap(self, start: int, end: int, reason: GapReason) -> None:
        """Bytes ``[start, end)`` of the track will not be transcribed live: count and record them."""
        if end > start:
            self.stats.add_gap(self.gaps, self.origin + start / self._bps, self.origin + end / self._bps, reason)

    def _lose_uncovered(self, reason: GapReason) -> None:
        lost_from = max(round(self._covered * self._bps), self._lost_to)
        if self.served and self.served[-1].end is None:
            self.served[-1].end = round(self.origin + lost_from / self._bps, 3)
        self._gap(lost_from, self._total, reason)
        self._lost_to = max(self._lost_to, self._total)

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
        self._lose_uncovered("failed")
        self._set_state("failed", str(error))
        self._finish()

    def _finish(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._queue.put_nowait(_END)


__all__ = ["ResilienceStats", "ResilientStream", "RetryPolicy"]
