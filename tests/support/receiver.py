"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 (a thread) that records every POST.

It answers 204, or (``fail=True``) 500; with ``release`` cleared it holds each request until the event is
set again (a slow receiver).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

import msgspec


class Received(msgspec.Struct, frozen=True):
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """``async with WebhookReceiver(port) as r``: ``r.received`` grows with every request."""

    def __init__(self, port: int, *, fail: bool = False) -> None:
        self.port = port
        self.fail = fail
        self.received: list[Received] = []
        #: Requests that reached the handler (``received`` has them once they are answered).
        self.arrived = 0
        self.release = threading.Event()
        self.release.set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> set[str]:
        return {r.headers["X-Bridge-Event-Id"] for r in self.received}

    def start(self) -> Self:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.arrived += 1
                receiver.release.wait(30)
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                self.send_response(500 if receiver.fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["Received", "WebhookReceiver"]
