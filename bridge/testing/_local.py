"""What every local fake server shares: ``async with`` around ``start``/``stop``, and (for the HTTP
ones) a Starlette app served by uvicorn on a free loopback port inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

import uvicorn
from starlette.applications import Starlette


class AsyncServer:
    """``async with server:`` starts it and always stops it."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class LocalHTTPServer(AsyncServer):
    """A Starlette app on ``127.0.0.1:<free port>``; :attr:`base` is its URL once started."""

    base = ""

    def __init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def app(self) -> Starlette:
        raise NotImplementedError

    async def start(self) -> None:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = server = uvicorn.Server(config)
        self._task = task = asyncio.create_task(server.serve())
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # it failed to start: raise why
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        self._server = self._task = None


__all__ = ["AsyncServer", "LocalHTTPServer"]
