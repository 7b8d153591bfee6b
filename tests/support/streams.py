"""One call track through a :class:`ResilientStream` against real recognizer servers, collecting what
it yields (shared by the resilience, pacing and fallback tests)."""

from __future__ import annotations

import asyncio

from bridge.audio import FRAME_BYTES, frames
from bridge.events import RecognizerState
from bridge.recognizers.base import Recognizer, RecognizerEvent, StreamOptions, Transcript
from bridge.recognizers.resilience import ResilientStream, RetryPolicy

Segment = tuple[float, float, str]


class Run:
    """A track: ``start()``, ``feed()`` (as fast as asked) or ``feed_realtime()``, ``close()``."""

    def __init__(
        self,
        recognizer: Recognizer,
        options: StreamOptions,
        *,
        policy: RetryPolicy,
        origin: float = 0.0,
        fallback: Recognizer | None = None,
    ) -> None:
        self.states: list[tuple[RecognizerState, str]] = []
        self.events: list[RecognizerEvent] = []
        self.error: BaseException | None = None
        self.stream = ResilientStream(
            recognizer,
            options,
            origin=origin,
            on_state=lambda state, detail: self.states.append((state, detail)),
            policy=policy,
            fallback=fallback,
        )
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.stream.start()
        self._reader = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        try:
            async for event in self.stream.events():
                self.events.append(event)
        except Exception as exc:
            self.error = exc

    async def feed(self, audio: bytes, pace: float = 0.001) -> None:
        for frame in frames(audio):
            await self.stream.send(frame)
            await asyncio.sleep(pace)

    async def feed_realtime(self, audio: bytes, bytes_per_second: int = 8000) -> None:
        """Frames on a fixed schedule from the first one: never ahead of real time on average."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        for i, frame in enumerate(frames(audio)):
            delay = began + i * FRAME_BYTES / bytes_per_second - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.stream.send(frame)

    async def close(self, timeout: float = 5.0) -> None:
        await self.stream.close(timeout=timeout)
        assert self._reader is not None
        await self._reader

    @property
    def finals(self) -> list[Segment]:
        return [
            (round(e.start, 3), round(e.end, 3), e.text)
            for e in self.events
            if isinstance(e, Transcript) and e.is_final
        ]

    @property
    def state_names(self) -> list[RecognizerState]:
        return [s for s, _ in self.states]


__all__ = ["Run", "Segment"]
