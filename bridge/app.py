"""Assembly of the bridge's ASGI app: routes, shared state and the start/stop sequence.

``app.state`` holds the one instance of each part: ``settings``, ``metrics``, ``store``, ``writer``
(write-behind for finals and live events), ``hub`` (the instance's pub/sub fan-out), ``calls`` (the
:class:`~bridge.call.manager.CallManager`) and ``recognizer``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bridge import api
from bridge.call.manager import CallManager
from bridge.live import endpoints as live_endpoints
from bridge.live.hub import Hub
from bridge.metrics import Metrics
from bridge.recognizers.base import Recognizer
from bridge.recognizers.factory import fallback_recognizer, primary_recognizer
from bridge.recognizers.resilience import RetryPolicy
from bridge.settings import Settings
from bridge.store import FinalsWriter, Store
from bridge.twilio import webhooks
from bridge.twilio.media import media_route

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = request.app.state
    calls: CallManager | None = getattr(state, "calls", None)
    if calls is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    if calls.draining:
        return JSONResponse({"status": "draining", "calls": len(calls.sessions)}, status_code=503)
    return JSONResponse({"status": "ready", "calls": len(calls.sessions)})


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


def create_app(
    settings: Settings | None = None,
    *,
    recognizer: Recognizer | None = None,
    fallback: Recognizer | None = None,
    retry_policy: RetryPolicy | None = None,
) -> Starlette:
    """Build the bridge. Without ``recognizer`` (``fallback``), the configured one is used, and an
    embedded recognizer with no URL configured is started in-process (once, for both roles)."""
    settings = settings or Settings.from_env()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if settings.insecure_skip_signature:
                log.warning("TWILIO SIGNATURE CHECKS ARE OFF (BRIDGE_INSECURE_SKIP_SIGNATURE): development only")
            store = await Store.open(settings)
            stack.push_async_callback(store.close)
            writer = FinalsWriter(store, on_outage=metrics.store_outages.inc)
            writer.start()
            stack.push_async_callback(writer.aclose)
            hub = Hub(store, settings, on_drop=lambda _call_sid: metrics.subscribers_dropped.inc())
            await hub.start()
            stack.push_async_callback(hub.stop)
            embedded_url = ""

            async def url_of(kind: str | None, url: str) -> str:
                nonlocal embedded_url
                if kind != "embedded" or url:
                    return url
                if not embedded_url:
                    from bridge.embedded.server import EmbeddedConfig, running

                    config = EmbeddedConfig(model=settings.embedded_model, final_model=settings.embedded_final_model,
                                            workers=settings.embedded_workers)  # fmt: skip
                    embedded_url = await stack.enter_async_context(running(config))
                    log.info("embedded recognizer running at %s (model %s)", embedded_url, settings.embedded_model)
                return embedded_url

            rec = recognizer or primary_recognizer(settings, await url_of(settings.recognizer, settings.recognizer_url))
            fb = fallback
            if fb is None and settings.fallback_recognizer is not None:
                fb = fallback_recognizer(settings, await url_of(settings.fallback_recognizer,
                                                                settings.fallback_recognizer_url))  # fmt: skip
            if fb is not None:
                log.info("fallback recognizer: %s after %.1f s", fb.name, settings.fallback_after_seconds)
            policy = retry_policy or RetryPolicy(catchup_seconds=settings.catchup_seconds,
                                                 fallback_after=settings.fallback_after_seconds,
                                                 send_chunk_seconds=settings.send_chunk_ms / 1000)  # fmt: skip
            calls = CallManager(
                settings=settings,
                store=store,
                recognizer=rec,
                fallback=fb,
                metrics=metrics,
                writer=writer,
                retry_policy=policy,
            )
            app.state.store = store
            app.state.writer = writer
            app.state.hub = hub
            app.state.recognizer = rec
            app.state.fallback = fb
            app.state.calls = calls
            try:
                yield
            finally:
                await calls.drain(timeout=15.0)

    routes: list[BaseRoute] = [
        Route("/", dashboard),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        *webhooks.routes,
        media_route,
        *api.routes,
        *live_endpoints.routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    return app


__all__ = ["create_app"]
