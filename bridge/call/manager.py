"""Every call this bridge instance carries: the ``StreamOpener`` of the Twilio edge (``app.state.calls``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

from bridge.call.session import CallSession, FinalsWriterLike
from bridge.metrics import Metrics
from bridge.options import CallOptions, OptionsError, from_parameters
from bridge.recognizers.base import Recognizer
from bridge.recognizers.resilience import RetryPolicy
from bridge.settings import Settings
from bridge.store import Store
from bridge.twilio.media import WS_INVALID_PAYLOAD, StreamHandler, StreamRejected
from bridge.twilio.models import Start

log = logging.getLogger(__name__)

#: How long a call whose stream dropped (no Twilio ``stop``) waits for a new stream before it ends.
STREAM_GRACE_SECONDS = 10.0


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
        session = self.sessions.get(call_sid)
        if session is None or session.ended:
            session = CallSession(self, call_sid)
            self.sessions[call_sid] = session
            self.metrics.calls_total.inc()
            self.metrics.active_calls.set(len(self.sessions))
        return await session.attach(start, options)

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

    def forget(self, session: CallSession) -> None:
        if self.sessions.get(session.call_sid) is session:
            del self.sessions[session.call_sid]
        self.metrics.active_calls.set(len(self.sessions))

    def background(self, coro: Coroutine[object, object, object]) -> None:
        """Run a coroutine detached from the media path, keeping a reference until it is done."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Refuse new streams and end every call this instance carries, within ``timeout``."""
        self.draining = True
        sessions = list(self.sessions.values())
        if sessions:
            log.info("draining %d calls", len(sessions))
            await asyncio.wait(
                [asyncio.create_task(s.end("bridge shutdown")) for s in sessions], timeout=timeout
            )
        await self.writer.flush(timeout)



__all__ = ["STREAM_GRACE_SECONDS", "CallManager"]
