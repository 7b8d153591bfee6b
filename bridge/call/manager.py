"""Every call this bridge instance carries: the ``StreamOpener`` of the Twilio edge (``app.state.calls``).

A session is registered under its CallSid only while it carries the call: a stream whose opening
fails leaves nothing behind, and a session leaves when it has ended. A stream for a CallSid whose
call has ended (or is ending) waits for that end to be complete, then opens a session that resumes
the call (:class:`~bridge.call.session.Resume`): from this instance's memory of the calls it ended,
else from the call's record in Redis (bounded wait; a call that is still marked active there, e.g.
after another instance died, resumes at the wall-clock time since its start).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine

import redis.exceptions

from bridge.call.handoff import StreamHandoff
from bridge.call.session import CallSession, FinalsWriterLike, Resume
from bridge.metrics import Metrics
from bridge.options import CallOptions, OptionsError, from_parameters
from bridge.recognizers.base import Recognizer
from bridge.recognizers.resilience import RetryPolicy
from bridge.settings import Settings
from bridge.store import Store
from bridge.twilio.media import (
    WS_INVALID_PAYLOAD,
    WS_POLICY_VIOLATION,
    WS_TRY_AGAIN_LATER,
    StreamHandler,
    StreamRejected,
)
from bridge.twilio.models import Start

log = logging.getLogger(__name__)

#: How long a call whose stream dropped (no Twilio ``stop``) waits for a new stream before it ends.
STREAM_GRACE_SECONDS = 10.0
#: Ended calls remembered for resuming, and how long a stream open waits for Redis to say where one was.
_RECENT_CALLS = 10_000
_RESUME_LOOKUP_SECONDS = 1.0


class CallManager:
    """Every call this bridge instance carries (``app.state.calls``; the edge's ``StreamOpener``)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        recognizer: Recognizer,
        metrics: Metrics,
        writer: FinalsWriterLike,
        fallback: Recognizer | None = None,
        retry_policy: RetryPolicy | None = None,
        close_timeout: float = 10.0,
        stream_grace: float = STREAM_GRACE_SECONDS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.recognizer = recognizer
        #: Where a track goes when its recognizer rejects it or stays away (None: nowhere).
        self.fallback = fallback
        self.metrics = metrics
        self.writer = writer
        self.retry_policy = retry_policy or RetryPolicy()
        self.close_timeout = close_timeout
        self.stream_grace = stream_grace
        self.sessions: dict[str, CallSession] = {}
        self.draining = False
        self._tasks: set[asyncio.Task[object]] = set()
        self._recent: collections.OrderedDict[str, Resume] = collections.OrderedDict()
        self._opening: dict[str, asyncio.Future[CallSession]] = {}
        #: Hands calls to other instances on drain and replaces lost streams (bridge.call.handoff).
        self.handoff = StreamHandoff(self)

    async def open_stream(self, start: Start) -> StreamHandler:
        if self.draining:
            raise StreamRejected(1013, "bridge is draining; reconnect to another instance")
        call_sid = start.call_sid
        try:  # the call's options are validated once, here, at its stream's start
            options = from_parameters(start.start.custom_parameters)
            self.recognizers_for(options)
        except OptionsError as exc:
            log.warning("refusing media stream: invalid stream parameter %s", exc, extra={"call_sid": call_sid})
            raise StreamRejected(WS_INVALID_PAYLOAD, f"invalid stream parameter {exc}") from None
        if call_sid not in self.sessions and await self._erased(call_sid):
            log.warning("refusing media stream: the call was erased", extra={"call_sid": call_sid})
            raise StreamRejected(WS_POLICY_VIOLATION, "call was erased")
        takeover = await self.handoff.takeover_of(start)
        session = await self._session(call_sid)
        try:
            if takeover is not None and session.resume is None and not session.streams:
                # Where the call is now is unknown (no record, Redis away): its audio cannot be placed.
                raise StreamRejected(WS_TRY_AGAIN_LATER, "cannot place a takeover stream: the call's start is unknown")
            handle = await session.attach(start, options, takeover)
            self.handoff.attached(session, handle, takeover)
            return handle
        except BaseException:
            if not session.streams and not session.ending:
                self.forget(session)
            raise

    def recognizers_for(self, options: CallOptions) -> tuple[Recognizer, Recognizer | None]:
        """A call's recognizer and its fallback: its ``recognizer`` option picks one of the configured
        two, and the other stays its fallback."""
        want = options.recognizer
        if want is None or want == self.recognizer.name:
            return self.recognizer, self.fallback
        if self.fallback is not None and want == self.fallback.name:
            return self.fallback, self.recognizer
        configured = ", ".join(r.name for r in (self.recognizer, self.fallback) if r is not None)
        raise OptionsError(f"recognizer: {want!r} is not configured on this bridge (configured: {configured})")

    async def _session(self, call_sid: str) -> CallSession:
        """The live session of ``call_sid``, or a new one (resuming an ended call of that CallSid)."""
        while True:
            session = self.sessions.get(call_sid)
            if session is not None and not session.ending:
                return session
            if session is not None:
                await session.end("superseded")  # already ending: wait until its end is complete
                continue
            opening = self._opening.get(call_sid)
            if opening is not None:  # another stream of this call is creating the session
                return await asyncio.shield(opening)
            future: asyncio.Future[CallSession] = asyncio.get_running_loop().create_future()
            self._opening[call_sid] = future
            try:
                resume = await self._resume_point(call_sid)
                session = CallSession(self, call_sid, resume)
                self.sessions[call_sid] = session
                self.metrics.calls_total.inc()
                self.metrics.active_calls.set(len(self.sessions))
                future.set_result(session)
                return session
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # retrieved: the waiters re-raise it
                raise
            finally:
                del self._opening[call_sid]

    async def _resume_point(self, call_sid: str) -> Resume | None:
        recent = self._recent.get(call_sid)
        if recent is not None:
            return recent
        if getattr(self.writer, "redis_down", False):
            return None
        try:
            async with asyncio.timeout(_RESUME_LOOKUP_SECONDS):
                point = await self.store.resume_point(call_sid)
        except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            log.warning("cannot tell whether this call ran before (%s); its clock starts at 0", exc,
                        extra={"call_sid": call_sid})  # fmt: skip
            return None
        if point is None:
            return None
        started_at, audio_end = point
        log.info("call comes back under its CallSid: continuing at %.1f s", audio_end, extra={"call_sid": call_sid})
        return Resume(started_at=started_at, audio_end=audio_end)

    async def _erased(self, call_sid: str) -> bool:
        """True when the call was erased (``DELETE /calls/{sid}``): a new stream must not record it again.
        Unknown (Redis away) counts as not erased: its writes still meet the tombstone in Redis."""
        if getattr(self.writer, "redis_down", False):
            return False
        try:
            async with asyncio.timeout(_RESUME_LOOKUP_SECONDS):
                return await self.store.call_deleted(call_sid)
        except (TimeoutError, redis.exceptions.RedisError, OSError):
            return False

    def forget(self, session: CallSession) -> None:
        if self.sessions.get(session.call_sid) is session:
            del self.sessions[session.call_sid]
        if session.streams:
            self._recent[session.call_sid] = Resume(started_at=session.started_at, audio_end=session.audio_end)
            self._recent.move_to_end(session.call_sid)
            while len(self._recent) > _RECENT_CALLS:
                self._recent.popitem(last=False)
        self.metrics.active_calls.set(len(self.sessions))

    def background(self, coro: Coroutine[object, object, object]) -> None:
        """Run a coroutine detached from the media path, keeping a reference until it is done."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Refuse new streams and hand every call this instance carries to another one, or end it,
        within ``timeout``."""
        self.draining = True
        sessions = list(self.sessions.values())
        if sessions:
            log.info("draining %d calls", len(sessions))
            await asyncio.wait(
                [asyncio.create_task(self.handoff.drain(s, timeout)) for s in sessions], timeout=timeout
            )
        await self.writer.flush(timeout)



__all__ = ["STREAM_GRACE_SECONDS", "CallManager"]
