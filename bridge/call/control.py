"""Manual commits (``POST /calls/{sid}/commit``), wherever the call is carried.

A commit must reach the recognizer connection of the call's track, which lives in the one process
that carries the call. Behind a load balancer, or under ``bridge serve --workers N`` (one port, N
processes), the request often lands in another one; so an instance that does not carry the call asks
every instance over Redis pub/sub (``P:control:commit``), the one that carries it commits and answers
on the asker's own channel (``P:control:commit:<instance>``), and the asker answers the client with
that. Nobody answering within :data:`ASK_SECONDS` (the carrier died, or Redis is away) is a 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
import redis.exceptions

from bridge.events import Track
from bridge.retry import Backoff
from bridge.sids import CallSid
from bridge.store import UNAVAILABLE, Client, Store, pubsub_of

if TYPE_CHECKING:
    from bridge.call.manager import CallManager

logger = logging.getLogger(__name__)

#: How long a routed commit waits for the carrying instance's answer.
ASK_SECONDS = 2.0
_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE, redis.exceptions.RedisError, RuntimeError)
_ASK_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *_ERRORS)


class CommitAsk(msgspec.Struct, kw_only=True, frozen=True):
    """Commit ``track`` of ``call_sid``, if you carry it; answer on ``reply_to``."""

    id: str
    call_sid: CallSid
    track: Track
    reply_to: str


class CommitAnswer(msgspec.Struct, kw_only=True, frozen=True):
    """What a commit came to: 200 with ``at`` (the call-clock second it closed the segment at), or
    404/409 with ``error``."""

    status: int
    at: float | None = None
    error: str = ""
    id: str = ""


async def commit_here(calls: CallManager, call_sid: str, track: Track) -> CommitAnswer | None:
    """Commit on this instance; ``None`` when this instance does not carry the call (nor is ending it)."""
    session = calls.sessions.get(call_sid)
    if session is None:
        return None
    if session.ending:
        return CommitAnswer(status=404, error="unknown or ended call")
    pipelines = [h.pipelines[track] for h in session.open_streams if track in h.pipelines]
    if not pipelines:
        return CommitAnswer(status=404, error=f"call has no open {track} track")
    at = await pipelines[-1].commit()
    if at is None:
        return CommitAnswer(status=409, error=f"the {track} track is not being transcribed")
    logger.info("manual commit of the %s track at %.3f s", track, at, extra={"call_sid": call_sid})
    return CommitAnswer(status=200, at=at)


class CommitRouter:
    """This instance's end of routed commits: asks the others, and answers for its own calls."""

    def __init__(self, store: Store, calls: CallManager, *, backoff: Backoff = Backoff(base=0.05, cap=5.0)) -> None:
        self.store = store
        self.calls = calls
        self.backoff = backoff
        self.instance = uuid.uuid4().hex
        self._replies = store.keys.commit_replies(self.instance)
        self._waiting: dict[str, asyncio.Future[CommitAnswer]] = {}
        self._client: Client | None = None
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._work: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._client = self.store.dedicated_client("commit-router")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="commit-router")

    async def stop(self) -> None:
        for task in [self._task, *self._work]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        await self._close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ask(self, call_sid: str, track: Track, timeout: float = ASK_SECONDS) -> CommitAnswer | None:
        """The carrying instance's answer, or ``None`` if none came within ``timeout``."""
        ask = CommitAsk(id=uuid.uuid4().hex, call_sid=call_sid, track=track, reply_to=self._replies)
        future: asyncio.Future[CommitAnswer] = asyncio.get_running_loop().create_future()
        self._waiting[ask.id] = future
        try:
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()  # else its answer could come before we listen
                await self.store.client.publish(self.store.keys.commit_channel, msgspec.json.encode(ask))
                return await future
        except _ASK_ERRORS as exc:
            logger.warning("no instance answered a routed commit (%s)", type(exc).__name__,
                           extra={"call_sid": call_sid})  # fmt: skip
            return None
        finally:
            del self._waiting[ask.id]

    async def _close(self) -> None:
        self._subscribed.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                if self._pubsub is None:
                    assert self._client is not None
                    pubsub = await pubsub_of(self._client)
                    await pubsub.subscribe(self.store.keys.commit_channel, self._replies)
                    self._pubsub, attempt = pubsub, 0
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except _ERRORS as exc:
                logger.warning("commit router: pub/sub connection lost (%s); reconnecting", exc)
                await self._close()
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, raw = message.get("type"), message.get("channel", b"")
        channel = raw.decode() if isinstance(raw, bytes) else str(raw)
        if kind == "subscribe" and channel == self._replies:
            self._subscribed.set()
        if kind != "message":
            return
        try:
            if channel == self._replies:
                answer = msgspec.json.decode(message["data"], type=CommitAnswer)
                future = self._waiting.get(answer.id)
                if future is not None and not future.done():
                    future.set_result(answer)
                return
            ask = msgspec.json.decode(message["data"], type=CommitAsk)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("undecodable commit message on %s: %s", channel, exc)
            return
        if ask.reply_to.startswith(self.store.keys.commit_channel + ":") and ask.call_sid in self.calls.sessions:
            task = asyncio.get_running_loop().create_task(self._answer(ask))
            self._work.add(task)
            task.add_done_callback(self._work.discard)

    async def _answer(self, ask: CommitAsk) -> None:
        try:
            answer = await commit_here(self.calls, ask.call_sid, ask.track)
            if answer is not None:
                reply = msgspec.structs.replace(answer, id=ask.id)
                await self.store.client.publish(ask.reply_to, msgspec.json.encode(reply))
        except _ERRORS as exc:
            logger.warning("could not answer a routed commit: %s", exc, extra={"call_sid": ask.call_sid})
        except Exception:
            logger.exception("routed commit failed", extra={"call_sid": ask.call_sid})


__all__ = ["ASK_SECONDS", "CommitAnswer", "CommitAsk", "CommitRouter", "commit_here"]
