"""Shared helpers for the Twilio edge tests: a real uvicorn server on 127.0.0.1 and recording fakes
for the call layer (``app.state.calls``) and the store's ``update_call`` (the edge's own seam)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette

from bridge.settings import Settings
from bridge.twilio import models as tm
from bridge.twilio.media import StreamHandler, StreamRejected, media_route
from bridge.twilio.rawsocket import upgrade_protocol
from bridge.twilio.webhooks import routes
from tests.support import FIXTURES

TWILIO_FIXTURES = FIXTURES / "twilio"
AUTH_TOKEN = "fixture-auth-token"
CALL_SID = "CA5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d"
STREAM_SID = "MZ8e4f2a1b3c5d7e9f0a1b2c3d4e5f6a7b"


def fixture_text(name: str) -> str:
    return (TWILIO_FIXTURES / name).read_text().strip()


class RecordingHandler:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.stopped = asyncio.Event()

    async def on_media(self, track: str, timestamp_ms: int, payload: bytes) -> None:
        self.events.append(("media", track, timestamp_ms, payload))

    async def on_dtmf(self, digit: str) -> None:
        self.events.append(("dtmf", digit))

    async def on_mark(self, name: str) -> None:
        self.events.append(("mark", name))

    async def on_stop(self, *, clean: bool, reason: str) -> None:
        self.events.append(("stop", clean, reason))
        self.stopped.set()

    def media(self, track: str) -> list[tuple[int, bytes]]:
        return [(e[2], e[3]) for e in self.events if e[0] == "media" and e[1] == track]


class RecordingOpener:
    def __init__(self, reject: StreamRejected | None = None) -> None:
        self.reject = reject
        self.starts: list[tm.Start] = []
        self.handlers: list[RecordingHandler] = []
        self.opened = asyncio.Event()

    async def open_stream(self, start: tm.Start) -> StreamHandler:
        self.starts.append(start)
        if self.reject is not None:
            raise self.reject
        handler = RecordingHandler()
        self.handlers.append(handler)
        self.opened.set()
        return handler


class RecordingStore:
    def __init__(self) -> None:
        self.updates: list[tuple[str, dict[str, str]]] = []

    async def update_call(self, call_sid: str, fields: dict[str, str]) -> None:
        self.updates.append((call_sid, fields))


@dataclasses.dataclass
class Bridge:
    host: str
    port: int
    app: Starlette

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def calls(self) -> RecordingOpener:
        opener: RecordingOpener = self.app.state.calls
        return opener

    @property
    def store(self) -> RecordingStore:
        store: RecordingStore = self.app.state.store
        return store


def make_app(settings: Settings, calls: RecordingOpener | None = None) -> Starlette:
    app = Starlette(routes=[*routes, media_route])
    app.state.settings = settings
    app.state.calls = calls or RecordingOpener()
    app.state.store = RecordingStore()
    return app


#: How ``/twilio/media`` is served: "raw" (``bridge serve``'s own RFC 6455 server) or "asgi" (the
#: Starlette route under uvicorn's WebSockets). Tests that use :func:`media_transport` run on both.
_transport = ["raw"]


@pytest.fixture(params=["raw", "asgi"])
def media_transport(request: pytest.FixtureRequest) -> Iterator[str]:
    _transport[0] = request.param
    try:
        yield request.param
    finally:
        _transport[0] = "raw"


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[Bridge]:
    """Run ``app`` under uvicorn on a free 127.0.0.1 port for the duration of the block."""
    ws: Any = upgrade_protocol(app) if _transport[0] == "raw" else "auto"
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws=ws)
    server = uvicorn.Server(config)
    app.state.uvicorn_server = server
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Bridge("127.0.0.1", port, app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


@pytest.fixture
def settings() -> Settings:
    return Settings(twilio_auth_token=AUTH_TOKEN)


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[Bridge]:
    async with serve(make_app(settings)) as b:
        yield b
