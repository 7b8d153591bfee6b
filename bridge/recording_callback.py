"""``POST /twilio/recording``: Twilio's recording status callback feeds the batch queue.

A ``completed`` recording becomes a recording job with ``source="twilio"``; the worker downloads
``{RecordingUrl}.wav`` with the account's credentials. Twilio may deliver the callback more than
once; the worker's idempotence (one result per recording) absorbs the duplicate job.
"""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from bridge.jobs import RecordingJob
from bridge.settings import Settings
from bridge.twilio_auth import SignatureError, check_signature

logger = logging.getLogger(__name__)

PATH = "/twilio/recording"
MAX_FORM_BYTES = 64 * 1024


class JobQueue(Protocol):
    """The slice of ``bridge.store.Store`` used here (``app.state.store``)."""

    async def enqueue_recording(self, job: RecordingJob) -> str: ...


def _refuse(status: int, reason: str, call_sid: str | None) -> Response:
    logger.warning("POST %s refused (%s): %s", PATH, status, reason, extra={"call_sid": call_sid})
    return PlainTextResponse(reason, status_code=status)


async def _form(request: Request) -> ImmutableMultiDict[str, str] | Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _refuse(415, "expected application/x-www-form-urlencoded", None)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return _refuse(413, f"form larger than {MAX_FORM_BYTES} bytes", None)
    try:
        return ImmutableMultiDict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        return _refuse(400, "form is not UTF-8", None)


def _tracks(channels: int, track: str) -> list[str]:
    if channels >= 2:  # dual: first channel the parent call (caller), second the child (agent)
        return ["inbound", "outbound"]
    return ["outbound"] if track == "outbound" else ["inbound"]


def job_from_form(form: ImmutableMultiDict[str, str], settings: Settings) -> RecordingJob:
    """The recording job of a ``completed`` callback; ``ValueError`` on missing/invalid fields."""
    call_sid = form.get("CallSid", "")
    url = form.get("RecordingUrl", "")
    recording_sid = form.get("RecordingSid", "")
    if not call_sid or not call_sid.isalnum():
        raise ValueError("missing or invalid CallSid")
    if not recording_sid.isalnum():
        raise ValueError("invalid RecordingSid")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError("missing or invalid RecordingUrl")
    try:
        channels = int(form.get("RecordingChannels", "1") or "1")
        duration = float(form.get("RecordingDuration", "0") or "0")
    except ValueError:
        raise ValueError("RecordingChannels/RecordingDuration are not numbers") from None
    if channels not in (1, 2):
        raise ValueError(f"RecordingChannels={channels}")
    name = f"{call_sid}.{recording_sid}.twilio.wav" if recording_sid else f"{call_sid}.twilio.wav"
    return RecordingJob(
        call_sid=call_sid,
        path=str(settings.recording_dir / name),
        channels=channels,
        tracks=_tracks(channels, form.get("RecordingTrack", "both")),
        duration=duration,
        source="twilio",
        recording_url=url,
    )


async def recording_callback(request: Request) -> Response:
    """Signature-checked recording status callback; ``completed`` ones are queued for the batch pass."""
    settings: Settings = request.app.state.settings
    form = await _form(request)
    if isinstance(form, Response):
        return form
    call_sid = form.get("CallSid") or None
    try:
        check_signature(request, settings, form)
    except SignatureError as exc:
        return _refuse(403, str(exc), call_sid)
    status = form.get("RecordingStatus", "")
    if status != "completed":
        logger.info("recording %s: %s (not queued)", form.get("RecordingSid", "?"), status or "no status",
                    extra={"call_sid": call_sid})  # fmt: skip
        return Response(status_code=204)
    try:
        job = job_from_form(form, settings)
    except ValueError as exc:
        return _refuse(400, str(exc), call_sid)
    queue: JobQueue = request.app.state.store
    try:
        entry = await queue.enqueue_recording(job)
    except Exception as exc:  # Redis down: Twilio retries on a 5xx
        logger.error("cannot queue twilio recording: %s", exc, extra={"call_sid": call_sid})
        return PlainTextResponse("queue unavailable", status_code=503)
    logger.info("twilio recording queued as job %s", entry, extra={"call_sid": call_sid})
    return Response(status_code=204)


__all__ = ["PATH", "job_from_form", "recording_callback"]
