"""Calls outlive the instance carrying them: stream handoff on drain, stream replacement after a crash.

Twilio never reconnects a Media Stream, but its Streams API starts a new one on a call in progress
(:mod:`bridge.twilio.streams_api`). Every stream the bridge starts that way carries the call's own
``<Parameter>``s again, a stream token, and ``handoff`` = ``drain`` or ``recover``
(:mod:`bridge.call.takeover` places its audio on the call clock).

**Drain** (SIGTERM; ``<Start><Stream>`` calls): the draining instance starts a replacement stream to
the public URL; the load balancer sends it to a ready instance (this one's ``/readyz`` says 503).
That instance picks the *cut*, the first whole call-clock second at least ``CUT_LEAD_SECONDS`` after
its stream's start, and writes it to the call record (``handoff_stream``, ``handoff_at``). Audio
before the cut is the old stream's, from the cut on the new one's: every final is made once, by one
recognizer, and the two transcripts meet at the cut. The draining instance streams on until its audio
reaches the cut, stores its last finals, closes the recording exactly there (``handoff_done``) and
stops its stream through the API; the new instance, which held its recording frames meanwhile,
continues the same file from the cut (the recording directory is shared, as the batch workers need).
``<Connect><Stream>`` calls cannot be handed off (the API starts unidirectional streams only, and the
call's TwiML goes on when its socket closes): the drain waits for them up to ``--drain-seconds``.

**Crash**: an instance that dies takes its streams with it; Twilio posts each end to the stream status
callback, which reaches a live instance. When the call is still active and none of its streams runs
(:mod:`bridge.store.streams`), that instance claims the recovery and starts a replacement; the
instance that gets it records the call time no stream carried (``stream_gaps`` on the call record,
``bridge_stream_gaps_total``, ``bridge_stream_gap_seconds_total``). Each instance writes its calls'
audio position (``audio_at``) every ``HEARTBEAT_SECONDS``: the gap starts at the last one.

At most ``MAX_STREAMS`` streams of a call run at once (Twilio's limit): no replacement beyond.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import redis.exceptions

from bridge.call.session import CallSession, SessionHost, StreamHandle
from bridge.call.takeover import HANDOFF_PARAMETER, Probe, Recent, Takeover, takeover_mode
from bridge.twilio.auth import stream_token
from bridge.twilio.models import Start
from bridge.twilio.streams_api import StreamsApi, StreamsApiError
from bridge.twilio.webhooks import MEDIA_PATH, STREAM_STATUS_PATH

log = logging.getLogger(__name__)

#: Twilio's limit of streams running at once on one call.
MAX_STREAMS = 4
#: How often each instance writes its calls' audio position.
HEARTBEAT_SECONDS = 1.0
#: How long a stream Twilio reports stopped (not failed) waits before it counts as lost.
STOPPED_GRACE_SECONDS = 2.0
#: How often the call record is read while two instances hand a call over.
POLL_SECONDS = 0.1
#: Seconds the new instance holds its recording frames beyond the handoff deadline before it gives up
#: waiting for the old one to close the file.
_HOLD_SLACK = 10.0
#: Largest correction of a replacement stream's estimated placement the audio match may make.
_MAX_SHIFT = 0.5
_ERRORS = (StreamsApiError, redis.exceptions.RedisError, OSError, TimeoutError, ValueError, binascii.Error)


def _track(handle: StreamHandle) -> str:
    return "inbound" if "inbound" in handle.pipelines else next(iter(handle.pipelines))


def _mine(value: str, stream_sid: str) -> str | None:
    """The payload of a ``"<StreamSid> <payload>"`` handoff field written for ``stream_sid``."""
    sid, _, payload = value.partition(" ")
    return payload if sid == stream_sid else None


class Carrier(SessionHost, Protocol):
    """The instance whose calls are handed over (:class:`bridge.call.manager.CallManager`)."""

    sessions: dict[str, CallSession]


class StreamHandoff:
    """The one coordinator of an instance (``app.state.stream_watcher``; the manager's ``handoff``)."""

    def __init__(self, carrier: Carrier, api: StreamsApi | None = None) -> None:
        self.carrier = carrier
        s = carrier.settings
        self.api = api if api is not None else (StreamsApi(s) if s.handoff_enabled else None)
        self._heartbeat: asyncio.Task[None] | None = None
        #: Calls being handed off (a second drain of the same call only ends it).
        self._handing: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.api is not None

    # -- every instance: where its calls are -------------------------------------------------------

    async def start(self) -> None:
        if self.enabled and self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat())

    async def stop(self) -> None:
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self) -> None:
        c = self.carrier
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            for sid, session in list(c.sessions.items()):
                if session.open_streams and not session.ending:
                    c.writer.call(sid, "audio_at", self._write(sid, {"audio_at": repr(round(session.audio_end, 3))}))

    def _write(self, call_sid: str, fields: dict[str, str]) -> Callable[[], Awaitable[None]]:
        store = self.carrier.store
        return lambda: store.update_call(call_sid, fields)

    # -- the new instance: a stream that takes a call over ------------------------------------------

    async def takeover_of(self, start: Start) -> Takeover | None:
        """What a stream's ``handoff`` parameter asks; a recovery also learns where the gap starts."""
        mode = takeover_mode(start.start.custom_parameters)
        if mode is None:
            return None
        lost_at, info = None, None
        with contextlib.suppress(*_ERRORS):
            info = await self.carrier.store.get_call(start.start.call_sid)
            if mode == "recover":
                lost_at = float((await self.carrier.store.handoff_state(start.start.call_sid)).audio_at or 0.0)
        if info is None:
            return Takeover(mode, lost_at)
        return Takeover(mode, lost_at, served=info.served, gaps=info.gaps)

    def attached(self, session: CallSession, handle: StreamHandle, takeover: Takeover | None) -> None:
        """A takeover stream started here: tell the old instance the cut, or record the gap."""
        if takeover is None or session.takeover is not takeover:
            return
        c, sid = self.carrier, session.call_sid
        if takeover.mode == "drain":
            fields = {"handoff_stream": handle.stream_sid, "handoff_at": repr(handle.begin)}
            c.writer.call(sid, "handoff", lambda: c.store.update_call(sid, fields))

            def probe(audio: bytes) -> None:
                value = {"handoff_probe": f"{handle.stream_sid} {base64.b64encode(audio).decode()}"}
                c.writer.call(sid, "handoff_probe", lambda: c.store.update_call(sid, value))

            handle.watch = Probe(_track(handle), probe)
            log.info("taking the call over at %.2f s (its stream started at %.3f s)", handle.begin, handle.origin,
                     extra={"call_sid": sid})  # fmt: skip
            c.background(self._release_when_done(session, handle))
            return
        start = takeover.lost_at if takeover.lost_at is not None else handle.origin
        gap = max(0.0, handle.origin - start)
        c.metrics.stream_gaps.inc()
        c.metrics.stream_gap_seconds.inc(gap)
        c.writer.call(sid, "stream_gap", lambda: c.store.add_stream_gap(sid, start, handle.origin))
        log.warning("call recovered after its stream was lost: %.1f s not carried (%.2f-%.2f s)", gap, start,
                    handle.origin, extra={"call_sid": sid})  # fmt: skip

    async def _release_when_done(self, session: CallSession, handle: StreamHandle) -> None:
        """Take the exact placement the old instance found, and continue the recording once it closed
        it at the cut (or it never will)."""
        cut, placed, done = handle.begin, False, False
        deadline = time.monotonic() + self.carrier.settings.handoff_seconds + _HOLD_SLACK
        while session.held is not None and not session.ended and time.monotonic() < deadline:
            with contextlib.suppress(*_ERRORS):
                state = await self.carrier.store.handoff_state(session.call_sid)
                found = _mine(state.handoff_origin, handle.stream_sid)
                if found and not placed:
                    placed = True
                    origin = float(found)
                    if abs(origin - handle.origin) <= _MAX_SHIFT and handle.audio_end <= cut:
                        log.info("replacement stream placed at %.3f s (estimated %.3f s)", origin, handle.origin,
                                 extra={"call_sid": session.call_sid})  # fmt: skip
                        handle.place(origin)
                if float(state.handoff_done or -1) == cut:
                    done = True
                    break
            await asyncio.sleep(POLL_SECONDS)
        else:
            if session.held is not None and not session.ended:
                log.warning("the instance handing this call over never closed its recording; continuing it",
                            extra={"call_sid": session.call_sid})  # fmt: skip
        if not session.ended:
            session.release_held(at_cut=done)

    # -- the draining instance --------------------------------------------------------------------

    async def drain(self, session: CallSession, timeout: float) -> None:
        """Hand the call to another instance, or wait for it to end (``<Connect>``), or end it."""
        c = self.carrier
        if session.call_sid in self._handing:
            pass  # a drain already hands it off; this one (shutdown after the drain's time) ends it
        elif c.settings.stream_mode == "connect":
            c.metrics.handoffs.labels("connect_mode").inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.over.wait(), max(0.0, timeout - 2.0))
        elif await self.hand_off(session, timeout):
            return
        await session.end("bridge shutdown")

    def _urls(self) -> tuple[str, str]:
        s = self.carrier.settings
        return s.public_ws_url + MEDIA_PATH, s.public_url.rstrip("/") + STREAM_STATUS_PATH

    def _parameters(self, call_sid: str, custom: dict[str, str], why: str) -> dict[str, str]:
        params = dict(custom)
        token = self.carrier.settings.twilio_auth_token
        if token:
            params["token"] = stream_token(token, call_sid)
        params[HANDOFF_PARAMETER] = why
        return params

    async def hand_off(self, session: CallSession, timeout: float) -> bool:
        """Move ``session``'s call to a replacement stream on another instance; False if it did not."""
        sid = session.call_sid
        mine = session.open_streams
        if self.api is None or not mine or session.ending:
            return False
        self._handing.add(sid)
        try:
            return await self._hand_off(session, mine, timeout)
        finally:
            self._handing.discard(sid)

    async def _hand_off(self, session: CallSession, mine: list[StreamHandle], timeout: float) -> bool:
        c, sid, api = self.carrier, session.call_sid, self.api
        assert api is not None
        for handle in mine:
            handle.watch = Recent(_track(handle))
        deadline = time.monotonic() + min(timeout, c.settings.handoff_seconds)
        url, callback = self._urls()
        try:
            if (await c.store.handoff_state(sid)).source == "browser":
                return False  # a browser capture (bridge.browser), not a Twilio call: the page starts again
            if await c.store.live_stream_count(sid) >= MAX_STREAMS:
                c.metrics.handoffs.labels("limit").inc()
                log.warning("cannot hand the call off: %d streams already run", MAX_STREAMS, extra={"call_sid": sid})
                return False
            new_sid = await api.start(sid, url=url, status_callback=callback,
                                      parameters=self._parameters(sid, mine[-1].custom, "drain"))  # fmt: skip
        except _ERRORS as exc:
            c.metrics.handoffs.labels("failed").inc()
            log.error("cannot hand the call off: %s", exc, extra={"call_sid": sid})
            return False
        cut = await self._replacement_cut(sid, new_sid, deadline)
        if cut is None:
            c.metrics.handoffs.labels("no_replacement").inc()
            log.error("the replacement stream %s delivered nothing in time; ending the call here", new_sid,
                      extra={"call_sid": sid})  # fmt: skip
            with contextlib.suppress(*_ERRORS):
                await api.stop(sid, new_sid)
            return False
        if session.audio_end > cut + 0.1:
            log.warning("learned the cut %.2f s at %.2f s: the audio between is transcribed twice", cut,
                        session.audio_end, extra={"call_sid": sid})  # fmt: skip
        for handle in mine:
            handle.cut_at(cut)
        await self._place_replacement(sid, new_sid, mine, cut)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(1.0, cut - session.audio_end + 3.0)):
                await asyncio.gather(*(h.cut_reached.wait() for h in mine))
        await session.hand_off()
        with contextlib.suppress(*_ERRORS):
            await c.store.update_call(sid, {"handoff_done": repr(cut)})
        for handle in mine:
            with contextlib.suppress(*_ERRORS):
                await api.stop(sid, handle.stream_sid)
        c.metrics.handoffs.labels("handed_off").inc()
        log.info("call handed off to stream %s at %.2f s", new_sid, cut, extra={"call_sid": sid})
        return True

    async def _replacement_cut(self, call_sid: str, new_sid: str, deadline: float) -> float | None:
        while time.monotonic() < deadline:
            with contextlib.suppress(*_ERRORS):
                state = await self.carrier.store.handoff_state(call_sid)
                if state.handoff_stream == new_sid:
                    return float(state.handoff_at)
            await asyncio.sleep(POLL_SECONDS)
        return None

    async def _place_replacement(self, call_sid: str, new_sid: str, mine: list[StreamHandle], cut: float) -> None:
        """Find the replacement's first audio in ours and tell it where it starts (before the cut)."""
        recent = [h.watch for h in mine if isinstance(h.watch, Recent)]
        deadline = time.monotonic() + max(0.0, cut - max(h.audio_end for h in mine) - 0.3)
        origin = "-"
        while recent and time.monotonic() < deadline:
            with contextlib.suppress(*_ERRORS):
                probe = _mine((await self.carrier.store.handoff_state(call_sid)).handoff_probe, new_sid)
                if probe:
                    audio = base64.b64decode(probe, validate=True)
                    found = [p for w in recent if (p := w.find(audio)) is not None]
                    origin = repr(found[0]) if found else "-"
                    break
            await asyncio.sleep(POLL_SECONDS)
        for handle in mine:
            handle.watch = None
        with contextlib.suppress(*_ERRORS):
            await self.carrier.store.update_call(call_sid, {"handoff_origin": f"{new_sid} {origin}"})
            await self.carrier.store.forget_probe(call_sid)
        if origin == "-":
            log.warning("could not find the replacement stream's audio in ours: its placement is estimated",
                        extra={"call_sid": call_sid})  # fmt: skip

    # -- any instance: a stream ended (the stream status callback) --------------------------------

    def stream_ended(self, call_sid: str, stream_sid: str, *, error: bool) -> None:
        """Twilio says a stream of ``call_sid`` ended; replace it if that left the call without one.
        A clean stop is looked at after :data:`STOPPED_GRACE_SECONDS`: the instance that carried the
        stream saw its ``stop`` and says so by then (the call ended, or a TwiML ``<Stop>``)."""
        if self.enabled:
            self.carrier.background(self.recover(call_sid, stream_sid, 0.0 if error else STOPPED_GRACE_SECONDS))

    async def recover(self, call_sid: str, stream_sid: str, delay: float = 0.0) -> None:
        c = self.carrier
        assert self.api is not None
        await asyncio.sleep(delay)
        try:
            if not await c.store.claim_recovery(call_sid, stream_sid):
                return
        except _ERRORS as exc:
            log.error("cannot tell whether the call lost its stream: %s", exc, extra={"call_sid": call_sid})
            return
        try:
            info = await c.store.get_call(call_sid)
            if info is None:
                raise ValueError("no call record")
            url, callback = self._urls()
            new_sid = await self.api.start(call_sid, url=url, status_callback=callback,
                                           parameters=self._parameters(call_sid, info.custom, "recover"))  # fmt: skip
        except _ERRORS as exc:
            c.metrics.recoveries.labels("failed").inc()
            log.warning("the call lost its stream and no replacement started: %s", exc, extra={"call_sid": call_sid})
            with contextlib.suppress(*_ERRORS):
                await c.store.release_recovery(call_sid)
            return
        c.metrics.recoveries.labels("started").inc()
        log.warning("the call lost its stream %s; replacement %s started", stream_sid, new_sid,
                    extra={"call_sid": call_sid})  # fmt: skip


__all__ = ["HEARTBEAT_SECONDS", "MAX_STREAMS", "Carrier", "StreamHandoff"]
