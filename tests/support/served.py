"""A real uvicorn server on 127.0.0.1 serving the REST and live routes (and a Hub) over a test Store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette

from bridge import api
from bridge.live import endpoints
from bridge.live.hub import Hub
from bridge.settings import Settings
from bridge.store import Store


@dataclasses.dataclass
class Served:
    base: str  # host:port
    app: Starlette

    @property
    def http(self) -> str:
        return f"http://{self.base}"

    @property
    def ws(self) -> str:
        return f"ws://{self.base}"

    @property
    def hub(self) -> Hub:
        hub: Hub = self.app.state.hub
        return hub


def make_app(store: Store, settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub = Hub(store, settings)
        app.state.store = store
        app.state.settings = settings
        app.state.hub = hub
        await hub.start()
        yield
        await hub.stop()

    return Starlette(routes=[*api.routes, *endpoints.routes], lifespan=lifespan)


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


Serve = Callable[..., contextlib.AbstractAsyncContextManager[Served]]


def served_factory(store: Store) -> Serve:
    """``async with served(**settings) as srv``: the routes on a fresh uvicorn + Hub over ``store``."""

    @contextlib.asynccontextmanager
    async def run(store_: Store | None = None, **overrides: Any) -> AsyncIterator[Served]:
        s = store_ or store
        settings = Settings(redis_prefix=s.keys.prefix, **overrides)
        app = make_app(s, settings)
        async with serve(app) as base:
            yield Served(base, app)

    return run
