"""Assembly of the bridge's ASGI app: routes, shared state and the start/stop sequence.

``app.state`` holds the one instance of each part: ``settings``, ``metrics``, ``store``, ``writer``
(write-behind for finals and live events), ``hub`` (the instance's pub/sub fan-out), ``calls`` (the
:class:`~bridge.call.manager.CallManager`) and ``recognizer`` (with ``recognizer_url``).

Start-up refuses a recording directory it cannot write to, and says loudly what would make calls
fail (no Twilio token, no vendor key, Redis unreachable). ``/readyz`` is 503 unless Redis answers,
the recognizer's host accepts a connection and Twilio's requests can be verified: a load balancer
sends calls only to an instance that can carry them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from bridge import api, browser
from bridge.api import admin
from bridge.call.admission import Admission
from bridge.call.control import CommitRouter
from bridge.call.manager import CallManager
from bridge.files import check_writable
from bridge.live import endpoints as live_endpoints
from bridge.live.hub import Hub
from bridge.metrics import Metrics
from bridge.recognizers.base import Recognizer
from bridge.recognizers.factory import fallback_recognizer, primary_recognizer, recognizer_endpoint
from bridge.recognizers.resilience import RetryPolicy
from bridge.retention.files import sweeping
from bridge.settings import Settings
from bridge.store import FinalsWriter, Store
from bridge.twilio import webhooks
from bridge.twilio.media import media_route
from bridge.webhooks.sender import sending

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


#: Seconds each readiness check may take, and how long a recognizer probe's answer is reused.
_CHECK_SECONDS = 1.0
_PROBE_TTL = 2.0


async def _tcp_probe(url: str) -> str:
    """"ok", or why a TCP connection to ``url``'s host and port cannot be made."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme in ("wss", "https") else 80)
    try:
        async with asyncio.timeout(_CHECK_SECONDS):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        return f"{host}:{port} unreachable ({type(exc).__name__})"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "ok"


async def _probe(state: object, role: str, url: str) -> str:
    """A TCP probe of ``url``, its answer reused for a moment (probes come every few seconds)."""
    cache: dict[str, tuple[float, str]] = getattr(state, "probe_cache", {})
    state.probe_cache = cache  # type: ignore[attr-defined]
    now = time.monotonic()
    cached = cache.get(role)
    if cached is not None and now - cached[0] < _PROBE_TTL:
        return cached[1]
    result = await _tcp_probe(url)
    cache[role] = (now, result)
    return result


async def _recognizer_check(state: object, settings: Settings) -> str:
    """"ok" when a configured recognizer (the primary, else the fallback) can take calls: it has its
    key and its host accepts a connection; otherwise what is wrong with each."""
    roles = [("primary", settings.recognizer, settings.recognizer_api_key)]
    if settings.fallback_recognizer is not None:
        roles.append(("fallback", settings.fallback_recognizer, settings.fallback_recognizer_api_key))
    probes: dict[str, str] = getattr(state, "recognizer_probes", {})
    problems = []
    for role, kind, key in roles:
        if kind != "embedded" and not key:
            problems.append(f"{role} {kind}: no API key")
            continue
        url = probes.get(role, "")
        result = await _probe(state, role, url) if url else "ok"  # no URL: a client handed in by code
        if result == "ok":
            return "ok"
        problems.append(f"{role} {kind}: {result}")
    return "; ".join(problems)


async def _redis_check(store: Store) -> str:
    try:
        async with asyncio.timeout(_CHECK_SECONDS):
            return "ok" if await store.ping() else "unreachable"
    except TimeoutError:
        return "no answer"


async def readyz(request: Request) -> Response:
    state = request.app.state
    settings: Settings = state.settings
    calls: CallManager | None = getattr(state, "calls", None)
    if calls is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    if calls.draining:
        return JSONResponse({"status": "draining", "calls": len(calls.sessions)}, status_code=503)
    redis, recognizer = await asyncio.gather(_redis_check(state.store), _recognizer_check(state, settings))
    checks = {
        "redis": redis,
        "recognizer": recognizer,
        "twilio": "ok" if settings.twilio_auth_token or not settings.verify_signatures
        else "TWILIO_AUTH_TOKEN is not set: every Twilio request is refused",
    }
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "unready", "calls": len(calls.sessions), "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")


#: The page runs only its own files and talks only to this origin: an injected script could not load,
#: nor send the token (kept in the page's sessionStorage) anywhere else.
_DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                  "media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                  "form-action 'self'")  # fmt: skip


async def dashboard(request: Request) -> Response:
    headers = {"Content-Security-Policy": _DASHBOARD_CSP, "Referrer-Policy": "no-referrer"}
    return FileResponse(STATIC / "dashboard.html", media_type="text/html", headers=headers)


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
            check_writable(settings.recording_dir)
            for warning in settings.startup_warnings():
                log.warning("%s", warning)
            store = await Store.open(settings)
            stack.push_async_callback(store.close)
            if not await _redis_check(store) == "ok":
                log.warning("Redis at %s does not answer: not ready until it does (writes are buffered)",
                            store.url)  # fmt: skip
            writer = FinalsWriter(
                store,
                on_outage=metrics.store_outages.inc,
                on_final=lambda stored: (metrics.finals if stored else metrics.finals_duplicate).inc(),
            )
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

            # Where each configured recognizer lives, for /readyz (none for clients handed in by code).
            probes: dict[str, str] = {}
            rec = recognizer
            if rec is None:
                primary_url = await url_of(settings.recognizer, settings.recognizer_url)
                rec = primary_recognizer(settings, primary_url)
                probes["primary"] = recognizer_endpoint(settings.recognizer, primary_url)
            fb = fallback
            if fb is None and settings.fallback_recognizer is not None:
                fallback_url = await url_of(settings.fallback_recognizer, settings.fallback_recognizer_url)
                fb = fallback_recognizer(settings, fallback_url)
                probes["fallback"] = recognizer_endpoint(settings.fallback_recognizer, fallback_url)
            app.state.recognizer_probes = probes
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
            router = CommitRouter(store, calls)  # manual commits of calls carried by another instance
            await router.start()
            stack.push_async_callback(router.stop)
            app.state.commit_router = router
            admission = Admission(settings, calls=lambda: len(calls.sessions), draining=lambda: calls.draining,
                                  metrics=metrics)  # fmt: skip
            await admission.start()
            stack.push_async_callback(admission.stop)
            await calls.handoff.start()
            stack.push_async_callback(calls.handoff.stop)
            app.state.stream_watcher = calls.handoff
            app.state.admission = admission
            await stack.enter_async_context(sweeping(store, settings, local_calls=lambda: calls.sessions.keys()))
            await stack.enter_async_context(sending(store, settings, metrics.registry))
            try:
                yield
            finally:
                await calls.drain(timeout=15.0)

    routes: list[BaseRoute] = [
        Route("/", dashboard),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        *webhooks.routes,
        media_route,
        *api.routes,
        *admin.routes,
        *live_endpoints.routes,
        *browser.routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    return app


__all__ = ["create_app"]
