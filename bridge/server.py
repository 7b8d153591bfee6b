"""Running the bridge's ASGI app under uvicorn: ``bridge serve``, and in-process for tools and tests.

On SIGTERM/SIGINT ``bridge serve`` first drains (readiness turns 503 at once, every open call is
finalized, flushed and queued), then shuts down as usual and exits 0.

Before uvicorn starts, :func:`preflight` checks what would make the bridge fail later (the settings,
a recording directory it cannot write to) and raises :class:`StartupError` with one line to print.
``X-Forwarded-*`` headers are believed only from ``BRIDGE_FORWARDED_ALLOW_IPS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import AsyncIterator
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from bridge.app import create_app
from bridge.files import check_writable
from bridge.recognizers.base import Recognizer
from bridge.recognizers.resilience import RetryPolicy
from bridge.settings import Settings, SettingsError
from bridge.twilio.rawsocket import upgrade_protocol

log = logging.getLogger("bridge")


class DrainingServer(uvicorn.Server):
    """uvicorn that drains the bridge's calls before it shuts down."""

    def __init__(self, config: uvicorn.Config, app: Starlette, drain_seconds: float) -> None:
        super().__init__(config)
        self.bridge_app = app
        self.drain_seconds = drain_seconds
        self._draining: asyncio.Future[None] | None = None
        self._drain_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        calls = getattr(self.bridge_app.state, "calls", None)
        if calls is None or self._drain_requested or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        calls.draining = True
        log.info("signal %s: draining %d calls before exit", sig, len(calls.sessions))

        async def drain_then_exit() -> None:
            drained = False
            try:
                await asyncio.wait_for(calls.drain(self.drain_seconds), self.drain_seconds + 5)
                drained = True
            except Exception:
                log.exception("drain did not complete")
            super(DrainingServer, self).handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if drained and isinstance(captured, list) and sig in captured:
                captured.remove(sig)  # drained: exit 0 rather than re-raising the signal after shutdown

        def begin() -> None:
            self._draining = asyncio.ensure_future(drain_then_exit())

        # We are in a signal handler: hand the work to the event loop and wake it up.
        self._loop.call_soon_threadsafe(begin)


class StartupError(RuntimeError):
    """The bridge cannot start; ``str(exc)`` is the one line to tell the operator."""


def preflight(settings: Settings) -> None:
    """Raise :class:`StartupError` when the bridge could start but not work."""
    try:
        settings.validate()
    except SettingsError as exc:
        raise StartupError(str(exc)) from None
    try:
        check_writable(settings.recording_dir)
    except OSError as exc:
        raise StartupError(
            f"BRIDGE_RECORDING_DIR={str(settings.recording_dir)!r} is not writable: {exc.strerror or exc}"
        ) from None


def _tune_gc() -> None:
    """Every media frame allocates a few short-lived containers, so the default thresholds run a
    young-generation collection every few frames and full ones over everything the app imported.
    Freeze what exists at start-up (modules, the app) out of every collection, and collect the young
    generation less often; reference counting still frees almost everything at once."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def serve(settings: Settings, *, drain_seconds: float, sock: socket.socket | None = None) -> None:
    """``bridge serve``: run until SIGTERM/SIGINT, then drain and exit. ``sock``: a listening socket
    to serve on (a worker of :mod:`bridge.workers`) instead of binding ``settings.host:port``."""
    preflight(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, ws_max_size=settings.max_frame_bytes * 2,
        timeout_graceful_shutdown=5, proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips,
        ws=upgrade_protocol(app),
    )  # fmt: skip
    server = DrainingServer(config, app, drain_seconds=drain_seconds)
    _tune_gc()
    server.run(sockets=[sock] if sock is not None else None)
    if not server.started:
        raise StartupError(f"the bridge did not start on {settings.host}:{settings.port} (see the log above)")


@contextlib.asynccontextmanager
async def running_bridge(
    settings: Settings,
    *,
    retry_policy: RetryPolicy | None = None,
    recognizer: Recognizer | None = None,
    fallback: Recognizer | None = None,
) -> AsyncIterator[tuple[Starlette, str]]:
    """Run the bridge in this event loop on ``settings.port`` (0: a free one); yields (app, http base URL).
    ``recognizer``/``fallback`` replace the configured clients (tools that tune their timeouts)."""
    app = create_app(settings, recognizer=recognizer, fallback=fallback, retry_policy=retry_policy)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_config=None, lifespan="on",
                            forwarded_allow_ips=settings.forwarded_allow_ips, ws=upgrade_protocol(app))  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("bridge did not start")
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


__all__ = ["DrainingServer", "StartupError", "preflight", "running_bridge", "serve"]
