"""The embedded, Deepgram-compatible streaming recognizer: ``WS /v1/listen`` plus health and metrics.

It runs Whisper (CTranslate2) on this machine with weights shipped in packages, so transcripts need
no network and no API key, and it speaks the Deepgram live protocol
(https://developers.deepgram.com/reference/speech-to-text/listen-streaming) so the same
client, or the official deepgram-sdk, talks to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge.embedded.engine import WhisperEngine, load_engine
from bridge.embedded.metrics import RecognizerMetrics
from bridge.embedded.params import ParamError, parse_params
from bridge.embedded.scheduler import DecodeScheduler
from bridge.embedded.session import ListenSession, new_request_id
from bridge.recognizers.deepgram import wire as dg

logger = logging.getLogger(__name__)

_CONTAINER_MAGIC = (b"RIFF", b"OggS", b"fLaC", b"ID3", b"\x1a\x45\xdf\xa3")


@dataclass(frozen=True, kw_only=True)
class EmbeddedConfig:
    """How the embedded recognizer runs. Defaults suit a 2-core box with tiny.en."""

    model: str = "tiny.en"
    #: A second, more accurate model for finals (two-pass); empty: finals use :attr:`model`.
    final_model: str = ""
    workers: int = 2
    #: When set, clients must send ``Authorization: Token <key>`` (or the ``token`` subprotocol).
    api_key: str = ""
    #: Seconds without any frame before the stream is closed with 1011 ``NET-0001``.
    idle_timeout: float = 10.0
    compute_type: str = "int8"
    #: Longest encoder context (s): ~10 s is ~3x cheaper than 30 s; shorter segments get less.
    context_seconds: float = 10.0
    #: Beam size for finals (partials always use greedy decoding).
    final_beam: int = 5
    #: A queued partial older than this is skipped (it would be stale when it arrived).
    partial_max_wait: float = 0.6
    #: Refuse new streams (HTTP 503) beyond this many; 0 = no limit.
    max_streams: int = 0


class _State:
    def __init__(self, config: EmbeddedConfig) -> None:
        self.config = config
        self.metrics = RecognizerMetrics()
        self.engine: WhisperEngine | None = None
        self.final_engine: WhisperEngine | None = None
        self.scheduler: DecodeScheduler | None = None
        self.active = 0


def _deny(status: int, reason: str, request_id: str) -> Response:
    return PlainTextResponse(
        reason + "\n", status_code=status, headers={"dg-error": reason, "dg-request-id": request_id}
    )


def _authorized(ws: WebSocket, key: str) -> tuple[bool, str | None]:
    """Check the key; returns (ok, subprotocol to accept with)."""
    if not key:
        protocols = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p]
        return True, ("token" if protocols and protocols[0].lower() == "token" else None)
    auth = ws.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("token", "bearer") and hmac.compare_digest(value.strip(), key):
        return True, None
    protocols = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",")]
    if len(protocols) >= 2 and protocols[0].lower() == "token" and hmac.compare_digest(protocols[1], key):
        return True, "token"
    return False, None


async def _listen(ws: WebSocket) -> None:
    state: _State = ws.app.state.recognizer
    cfg = state.config
    request_id = new_request_id()
    m = state.metrics
    ok, subprotocol = _authorized(ws, cfg.api_key)
    if not ok:
        m.rejected.labels("401").inc()
        logger.warning("listen rejected: bad credentials", extra={"request_id": request_id})
        await ws.send_denial_response(_deny(401, "Invalid credentials.", request_id))
        return
    try:
        params = parse_params(ws.query_params)
    except ParamError as exc:
        m.rejected.labels("400").inc()
        logger.warning("listen rejected: %s", exc, extra={"request_id": request_id})
        await ws.send_denial_response(_deny(400, str(exc), request_id))
        return
    engine, scheduler = state.engine, state.scheduler
    if engine is None or scheduler is None or (cfg.max_streams and state.active >= cfg.max_streams):
        m.rejected.labels("503").inc()
        await ws.send_denial_response(_deny(503, "Recognizer is at capacity.", request_id))
        return
    await ws.accept(subprotocol=subprotocol, headers=[(b"dg-request-id", request_id.encode())])
    session = ListenSession(
        params=params,
        engine=engine,
        scheduler=scheduler,
        request_id=request_id,
        model_name=engine.name,
        final_beam=cfg.final_beam,
        final_engine=state.final_engine,
    )
    state.active += 1
    m.streams.inc()
    m.streams_total.inc()
    logger.info("listen stream opened", extra={"request_id": request_id})

    async def send(data: bytes) -> None:
        await ws.send_text(data.decode())

    sender = asyncio.create_task(session.run_sender(send))
    code, reason, gone, metadata = 1000, "", False, False
    seen_audio = False
    try:
        while True:
            try:
                msg = await asyncio.wait_for(ws.receive(), cfg.idle_timeout)
            except TimeoutError:
                code, reason = dg.CLOSE_NET_ERROR, dg.REASON_NET_IDLE
                logger.info("listen idle timeout", extra={"request_id": request_id})
                session.finalize(from_finalize=False)
                break
            if msg["type"] == "websocket.disconnect":
                gone = True
                break
            data = msg.get("bytes")
            text = msg.get("text")
            if data is not None:
                if not data:  # Deepgram treats an empty frame as CloseStream
                    session.finalize(from_finalize=False)
                    metadata = True
                    break
                if not seen_audio and data[:4].startswith(_CONTAINER_MAGIC):
                    code, reason = dg.CLOSE_DATA_ERROR, dg.REASON_DATA
                    logger.warning("containerised audio on a raw stream", extra={"request_id": request_id})
                    session.cancel()
                    break
                seen_audio = True
                session.feed(data)
                m.audio_seconds.inc(len(data) / (params.sample_rate * params.bytes_per_sample))
            elif text is not None:
                try:
                    control = dg.decode_client(text)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    code, reason = dg.CLOSE_DATA_ERROR, dg.REASON_DATA
                    logger.warning("bad control message: %s", exc, extra={"request_id": request_id})
                    session.cancel()
                    break
                if isinstance(control, dg.Finalize):
                    session.finalize(from_finalize=True)
                elif isinstance(control, dg.CloseStream):
                    session.finalize(from_finalize=False)
                    metadata = True
                    break
                # KeepAlive: nothing to answer; the timer above was reset by receiving it.
        if gone:
            return
        if code == 1000 or reason == dg.REASON_NET_IDLE:
            if metadata:
                session.put(session.metadata())
            session.end_output()
            await sender
        await ws.close(code, reason)
    except (WebSocketDisconnect, RuntimeError, OSError) as exc:
        logger.info("listen stream ended early: %s", exc, extra={"request_id": request_id})
    finally:
        session.cancel()
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        state.active -= 1
        m.streams.dec()
        logger.info("listen stream closed", extra={"request_id": request_id})


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _readyz(request: Request) -> Response:
    state: _State = request.app.state.recognizer
    if state.engine is None or state.scheduler is None:
        return JSONResponse({"ready": False, "reason": "model loading"}, status_code=503)
    s = state.scheduler.stats()
    full = bool(state.config.max_streams) and state.active >= state.config.max_streams
    ready = not (state.scheduler.saturated or full)
    body = {
        "ready": ready,
        "model": state.engine.name,
        "active_streams": state.active,
        "workers": s.workers,
        "busy_workers": s.busy,
        "queued_finals": s.queued_finals,
        "queued_partials": s.queued_partials,
        "skipped_partials": s.skipped_partials,
    }
    if not ready:
        body["reason"] = "saturated"
    return JSONResponse(body, status_code=200 if ready else 503)


async def _metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    state: _State = request.app.state.recognizer
    if state.scheduler is not None:
        state.metrics.refresh(state.scheduler)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(config: EmbeddedConfig) -> Starlette:
    """The recognizer app; the model is loaded once (per process and model) in the lifespan."""
    state = _State(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.engine = await asyncio.to_thread(
            load_engine,
            config.model,
            workers=config.workers,
            compute_type=config.compute_type,
            context_seconds=config.context_seconds,
        )
        if config.final_model and config.final_model != config.model:
            state.final_engine = await asyncio.to_thread(
                load_engine,
                config.final_model,
                workers=config.workers,
                compute_type=config.compute_type,
                context_seconds=max(config.context_seconds, 10.0),
            )
        state.scheduler = DecodeScheduler(
            config.workers,
            partial_max_wait=config.partial_max_wait,
            on_done=state.metrics.observe_decode,
        )
        logger.info("embedded recognizer ready (model %s, finals %s, %d workers)", config.model,
                    config.final_model or config.model, config.workers)  # fmt: skip
        try:
            yield
        finally:
            state.scheduler.close()

    app = Starlette(
        routes=[
            WebSocketRoute("/v1/listen", _listen),
            Route("/healthz", _healthz),
            Route("/readyz", _readyz),
            Route("/metrics", _metrics),
        ],
        lifespan=lifespan,
    )
    app.state.recognizer = state
    return app


def serve(config: EmbeddedConfig, host: str, port: int) -> None:
    """Run the recognizer until interrupted (``bridge recognizer``)."""
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", ws="websockets-sansio")


class _InProcessServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def running(
    config: EmbeddedConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Run the recognizer in the current event loop; yields its base URL ``ws://host:port``."""
    server = _InProcessServer(
        uvicorn.Config(
            create_app(config), host=host, port=port, log_level="warning", ws="websockets-sansio",
            lifespan="on",
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("embedded recognizer failed to start")
            await asyncio.sleep(0.02)
        sock = server.servers[0].sockets[0]
        bound = sock.getsockname()[1]
        yield f"ws://{host}:{bound}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
