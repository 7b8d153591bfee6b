"""``GET /calls``, ``/calls/{sid}``, ``/calls/{sid}/transcript``, ``/calls/{sid}/quality`` and
``/calls/{sid}/recording``.

A transcript comes as JSON, text, or subtitles (``?format=vtt|srt``, :mod:`bridge.api.formats`).

Every route authorizes with the subscriber token (:func:`bridge.live.auth.authorize`); a token
limited to some calls lists only those. A path whose CallSid is not shaped like Twilio's is a 400
before anything reads Redis. Redis being away, or refusing a command, is a 503, never a 500.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from bridge import events, transcripts
from bridge.api import formats
from bridge.api.common import call_document, call_or_error, claims_or_error, query_flag, query_limit
from bridge.audio import WavError
from bridge.files import UnsafePath, recording_file
from bridge.redact.audio import wav_seconds
from bridge.responses import error, json_response, store_failure
from bridge.store import STORE_ERRORS, Store

logger = logging.getLogger(__name__)


async def list_calls(request: Request) -> Response:
    store: Store = request.app.state.store
    claims = claims_or_error(request)
    if isinstance(claims, Response):
        return claims
    active = query_flag(request, "active")
    if isinstance(active, Response):
        return active
    limit = query_limit(request)
    if isinstance(limit, Response):
        return limit
    try:
        if claims is not None and not claims.all_calls:
            calls = [c for sid in claims.calls if (c := await store.get_call(sid)) is not None]
            calls = [c for c in calls if active is None or c.active == active][:limit]
        else:
            calls = await store.list_calls(active=active, limit=limit)
    except STORE_ERRORS as exc:
        return store_failure(request, None, exc)
    return json_response(calls)


async def get_call(request: Request) -> Response:
    info = await call_or_error(request)
    return info if isinstance(info, Response) else json_response(info)


def transcript_text(finals: list[events.Final]) -> str:
    """One ``Speaker: text`` line per final (Caller for inbound, Agent for outbound)."""
    return "".join(f"{events.SPEAKER.get(f.track, f.track)}: {f.text}\n" for f in finals)


async def get_transcript(request: Request) -> Response:
    """The live transcript ("as heard"), or with ``?source=batch`` the compliance one ("after the fact")."""
    info = await call_or_error(request)
    if isinstance(info, Response):
        return info
    fmt = request.query_params.get("format", "").lower()
    if fmt not in ("", "json", "text", *formats.FORMATS):
        return error(400, "format must be json, text, vtt or srt")
    source = request.query_params.get("source", "live").lower()
    if source not in ("live", "batch"):
        return error(400, "source must be live or batch")
    accept = request.headers.get("accept", "")
    as_text = fmt == "text" or (not fmt and "text/plain" in accept and "application/json" not in accept)
    store: Store = request.app.state.store
    if source == "batch":
        try:
            batch = await store.batch_transcript(info.call_sid)
        except STORE_ERRORS as exc:
            return store_failure(request, info.call_sid, exc)
        if batch is None:
            return error(404, "no batch transcript yet")
        if fmt in formats.FORMATS:
            return formats.subtitles(fmt, formats.batch_cues(batch), info.call_sid)
        if as_text:
            lines = [f"{events.SPEAKER.get(u.track, u.track)}: {u.text}" for u in batch.utterances if u.text]
            return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""))
        return Response(transcripts.encode(batch), media_type="application/json")
    try:
        finals = await store.transcript(info.call_sid)
    except STORE_ERRORS as exc:
        return store_failure(request, info.call_sid, exc)
    if fmt in formats.FORMATS:
        return formats.subtitles(fmt, formats.live_cues(finals), info.call_sid)
    if as_text:
        return PlainTextResponse(transcript_text(finals))
    return json_response(finals)


async def get_quality(request: Request) -> Response:
    """Live-vs-batch word error rate of a call (the quality signal), once the batch pass ran."""
    return await call_document(request, Store.quality, "no quality figures yet")


async def get_recording(request: Request) -> Response:
    """The call's recording, only once the batch pass has silenced its card data (docs/redaction.md):
    404 while there is none, 409 while the call is live or the file has not been redacted yet."""
    info = await call_or_error(request)
    if isinstance(info, Response):
        return info
    store: Store = request.app.state.store
    directory: Path = request.app.state.settings.recording_dir
    try:
        batch = await store.batch_transcript(info.call_sid)
    except STORE_ERRORS as exc:
        return store_failure(request, info.call_sid, exc)
    try:
        path = recording_file(directory, Path(batch.recording).name if batch else f"{info.call_sid}.wav")
    except UnsafePath:
        return error(404, "no recording")
    if not path.is_file():
        return error(404, "no recording")
    # The batch transcript is stored after the recording is redacted; a call that came back since
    # appended unredacted audio to the file (its own pass redacts it).
    try:
        grown = batch is not None and wav_seconds(path) > batch.duration + 1.0
    except (OSError, WavError):
        return error(404, "no recording")
    if info.active or batch is None or grown:
        return error(409, "recording not redacted yet (the batch pass has not run)")
    return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "no-store"})


routes: list[Route] = [
    Route("/calls", list_calls, methods=["GET"]),
    Route("/calls/{call_sid}", get_call, methods=["GET"]),
    Route("/calls/{call_sid}/transcript", get_transcript, methods=["GET"]),
    Route("/calls/{call_sid}/quality", get_quality, methods=["GET"]),
    Route("/calls/{call_sid}/recording", get_recording, methods=["GET"]),
]

__all__ = ["get_call", "get_quality", "get_recording", "get_transcript", "list_calls", "routes", "transcript_text"]
