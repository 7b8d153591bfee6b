"""A fault-injecting TCP proxy on 127.0.0.1, for outage tests of any TCP protocol (WebSocket, Redis).

``async with FaultProxy(port_of_real_server) as proxy:`` then connect to ``proxy.port``; ``cut()``
kills every connection, ``stall(s)`` holds all traffic, ``pause()``/``resume()`` refuse new
connections (the port stops listening), ``drop_after(n)`` cuts once ``n`` more client bytes passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

logger = logging.getLogger(__name__)


class _Pair:
    """One proxied connection: the client side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port
        self.accepted = 0
        self.client_bytes = 0
        #: Reads held back by :meth:`stall` (proof that a stall met live traffic).
        self.held = 0
        #: Connections aborted by :meth:`cut` (proof that a cut met open connections).
        self.cut_connections = 0
        self._pairs: set[_Pair] = set()
        self._server: asyncio.Server | None = None
        self._stall_until = 0.0
        self._drop_at: int | None = None

    def url(self, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self.pause()
        self.cut()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- faults ------------------------------------------------------------------------------

    def cut(self) -> None:
        """Abort every open connection on both sides (no FIN, no close frame)."""
        for pair in list(self._pairs):
            pair.abort()
            self.cut_connections += 1
        self._pairs.clear()

    def stall(self, seconds: float) -> None:
        """Hold all traffic in both directions for ``seconds`` (connections stay open)."""
        self._stall_until = asyncio.get_running_loop().time() + seconds

    async def pause(self) -> None:
        """Stop listening: new connections are refused; open ones are untouched."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def resume(self) -> None:
        if self._server is None:
            await self.start()

    def drop_after(self, nbytes: int) -> None:
        """Cut every connection once ``nbytes`` more client-to-server bytes have been forwarded."""
        self._drop_at = self.client_bytes + nbytes

    # -- plumbing ----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        pair.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, pair, upstream=True)),
            asyncio.create_task(self._pipe(up_reader, writer, pair, upstream=False)),
        ]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair, *, upstream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(65536):
                wait = self._stall_until - loop.time()
                if wait > 0:  # stall() may be called again meanwhile; one wait per read is enough
                    self.held += 1
                    await asyncio.sleep(wait)
                cut = False
                if upstream and self._drop_at is not None and self.client_bytes + len(data) >= self._drop_at:
                    data = data[: self._drop_at - self.client_bytes]
                    self._drop_at = None
                    cut = True
                if upstream:
                    self.client_bytes += len(data)
                writer.write(data)
                await writer.drain()
                if cut:
                    self.cut()
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._pairs.discard(pair)


__all__ = ["FaultProxy"]
