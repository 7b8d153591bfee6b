"""Twilio HTTP webhooks: the voice webhook (TwiML), the call / stream status callbacks, and the
recording status callback that feeds the batch queue.

Every route checks X-Twilio-Signature before looking at the form
(https://www.twilio.com/docs/usage/webhooks/webhooks-security). Forms are parsed here from the
urlencoded body (Twilio only posts ``application/x-www-form-urlencoded``), bounded in size, so the
edge needs no multipart parser, and validated into the typed forms of :mod:`bridge.twilio.models`.

A ``completed`` recording (https://www.twilio.com/docs/voice/api/recording#recordingstatuscallback)
becomes a recording job with ``source="twilio"``; the worker downloads it with the account's
credentials, so its ``RecordingUrl`` must be an https:// URL on Twilio's hosts
(``BRIDGE_RECORDING_HOSTS``): anything else is refused here, before it is queued.
Twilio may deliver the callback more than once; the worker's idempotence (one result per recording)
absorbs the duplicate job.

Every SID in a form is checked against Twilio's shape (:mod:`bridge.sids`) by the typed forms: a
request with a malformed one is a 400, and the SID is never stored or logged.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol
from urllib.parse import parse_qsl

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from twilio.twiml.voice_response import VoiceResponse  # type: ignore[import-untyped, unused-ignore]

from bridge.files import UnsafePath, recording_file
from bridge.options import PARAMETER_LIMIT, to_parameters
from bridge.settings import Settings
from bridge.store.jobs import RecordingJob
from bridge.twilio import models as tm
from bridge.twilio.auth import SignatureError, check_signature, stream_token
from bridge.twilio.media import AdmissionLike
from bridge.twilio.recordings import DownloadError, check_recording_url

logger = logging.getLogger(__name__)

MEDIA_PATH = "/twilio/media"
STREAM_STATUS_PATH = "/twilio/stream-status"
RECORDING_PATH = "/twilio/recording"
MAX_FORM_BYTES = 64 * 1024


class CallStore(Protocol):
    """The slice of :class:`bridge.store.Store` the callbacks use (``app.state.store``)."""

    async def update_call(self, call_sid: str, fields: dict[str, str]) -> None: ...

    async def enqueue_recording(self, job: RecordingJob) -> str:
        """The job's entry id; "" when the call was erased (nothing queued)."""
        ...


class StreamWatcher(Protocol):
    """Told of every stream end (``app.state.stream_watcher``: :class:`bridge.call.handoff.StreamHandoff`)."""

    def stream_ended(self, call_sid: str, stream_sid: str, *, error: bool) -> None: ...


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def _read_form(request: Request) -> ImmutableMultiDict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise _Reject(415, "expected application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _Reject(413, f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise _Reject(400, "form is not UTF-8") from None
    return ImmutableMultiDict(pairs)


async def _verified_form(request: Request) -> ImmutableMultiDict[str, str]:
    """The form of a request proven to come from Twilio, or :class:`_Reject`."""
    settings: Settings = request.app.state.settings
    form = await _read_form(request)
    try:
        check_signature(request, settings, form)
    except SignatureError as exc:
        raise _Reject(403, str(exc)) from None
    return form


async def _typed_form(request: Request, form_type: type[tm.FormT], what: str) -> tm.FormT:
    """The verified form, validated into ``form_type``, or :class:`_Reject` (403, 400…)."""
    form = await _verified_form(request)
    try:
        return tm.parse_form(form_type, form)
    except tm.FormError as exc:
        raise _Reject(400, f"bad {what} form: {exc}") from None


def _refuse(request: Request, exc: _Reject, call_sid: str | None) -> Response:
    logger.warning(
        "%s %s refused (%s): %s",
        request.method,
        request.url.path,
        exc.status,
        exc.reason,
        extra={"call_sid": call_sid},
    )
    return PlainTextResponse(exc.reason, status_code=exc.status)


def _public_bases(request: Request, settings: Settings) -> tuple[str, str]:
    """(https base, wss base) Twilio should use to reach us."""
    if settings.public_url:
        return settings.public_url.rstrip("/"), settings.public_ws_url
    url = request.url
    http_base = f"{url.scheme}://{url.netloc}"
    ws_scheme = "wss" if url.scheme == "https" else "ws"
    return http_base, f"{ws_scheme}://{url.netloc}"


def _parameter(stream: Any, name: str, value: str) -> None:
    stream.parameter(name=name, value=value[: max(0, PARAMETER_LIMIT - len(name))])


def build_twiml(
    settings: Settings, *, call_sid: str, from_: str, to: str, http_base: str, ws_base: str, fork: bool = True
) -> str:
    """TwiML for an incoming call: fork the media to us, then carry on with the call. The called
    number's profile (``BRIDGE_NUMBER_PROFILES``) rides along as ``<Parameter>``s: Twilio allows no
    query string on a stream URL, and the stream's ``start`` brings them back to be validated.
    ``fork=False``: the same call without the fork (admission control refused to transcribe it)."""
    response = VoiceResponse()
    if not fork:
        _carry_on(settings, response)
        return str(response.to_xml())
    url = ws_base + MEDIA_PATH
    status_callback = http_base + STREAM_STATUS_PATH
    if settings.stream_mode == "connect":
        # Bidirectional: only inbound_track is legal (error 31941); TwiML resumes when we close.
        holder = response.connect()
        stream = holder.stream(url=url, track="inbound_track", status_callback=status_callback)
    else:
        holder = response.start()
        stream = holder.stream(url=url, track="both_tracks", status_callback=status_callback)
    if settings.twilio_auth_token:
        _parameter(stream, "token", stream_token(settings.twilio_auth_token, call_sid))
    _parameter(stream, "From", from_)
    _parameter(stream, "To", to)
    _parameter(stream, "CallSid", call_sid)
    profile = settings.number_profiles.get(to)
    for name, value in to_parameters(profile).items() if profile is not None else ():
        stream.parameter(name=name, value=value)  # within Twilio's limit: checked when profiles load

    if settings.stream_mode == "connect":
        response.hangup()
    else:
        _carry_on(settings, response)
    return str(response.to_xml())


def _carry_on(settings: Settings, response: VoiceResponse) -> None:
    """What the call does besides streaming: dial the agent, or greet and hold."""
    if settings.voice_dial:
        dial = response.dial()
        target = settings.voice_dial
        if target.startswith("sip:"):
            dial.sip(target)
        elif target.startswith("client:"):
            dial.client(target[len("client:") :])
        else:
            dial.number(target)
    else:
        if settings.voice_greeting:
            response.say(settings.voice_greeting)
        response.pause(length=settings.hold_seconds)


async def voice(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    try:
        form = await _typed_form(request, tm.VoiceForm, "voice")
    except _Reject as exc:
        return _refuse(request, exc, None)
    call_sid = form.call_sid
    http_base, ws_base = _public_bases(request, settings)
    admission: AdmissionLike | None = getattr(request.app.state, "admission", None)
    refusal = admission.refuse("voice") if admission is not None else None
    if refusal is not None:
        if settings.overload_action == "503":
            logger.warning("voice webhook: call refused (503): %s", refusal.detail, extra={"call_sid": call_sid})
            return PlainTextResponse(f"{refusal.detail}: try another instance", status_code=503)
        logger.warning("voice webhook: call NOT transcribed: %s", refusal.detail, extra={"call_sid": call_sid})
        twiml = build_twiml(settings, call_sid=call_sid, from_=form.from_, to=form.to, http_base=http_base,
                            ws_base=ws_base, fork=False)  # fmt: skip
        return Response(twiml, media_type="application/xml")
    twiml = build_twiml(
        settings,
        call_sid=call_sid,
        from_=form.from_,
        to=form.to,
        http_base=http_base,
        ws_base=ws_base,
    )
    profiled = " with the profile of " + form.to if form.to in settings.number_profiles else ""
    logger.info("voice webhook: streaming (%s mode)%s", settings.stream_mode, profiled, extra={"call_sid": call_sid})
    return Response(twiml, media_type="application/xml")


async def call_status(request: Request) -> Response:
    try:
        status = await _typed_form(request, tm.CallStatusForm, "call status")
    except _Reject as exc:
        return _refuse(request, exc, None)
    fields: dict[str, str] = {"call_status": status.call_status}
    if status.call_duration is not None:
        fields["call_duration"] = str(status.call_duration)
    if status.timestamp:
        fields["call_status_at"] = status.timestamp
    store: CallStore = request.app.state.store
    await store.update_call(status.call_sid, fields)
    logger.info("call status %s", status.call_status, extra={"call_sid": status.call_sid})
    return Response(status_code=204)


async def stream_status(request: Request) -> Response:
    try:
        status = await _typed_form(request, tm.StreamStatusForm, "stream status")
    except _Reject as exc:
        return _refuse(request, exc, None)
    fields: dict[str, str] = {"stream_status": status.stream_event, "stream_sid": status.stream_sid}
    if status.stream_error:
        fields["stream_error"] = status.stream_error
    store: CallStore = request.app.state.store
    await store.update_call(status.call_sid, fields)
    watcher: StreamWatcher | None = getattr(request.app.state, "stream_watcher", None)
    if watcher is not None and status.stream_event != "stream-started":
        # A call left without a stream gets a new one (bridge.call.handoff).
        watcher.stream_ended(status.call_sid, status.stream_sid, error=status.stream_event == "stream-error")
    log = logger.warning if status.stream_event == "stream-error" else logger.info
    log(
        "stream %s %s%s",
        status.stream_sid,
        status.stream_event,
        f": {status.stream_error}" if status.stream_error else "",
        extra={"call_sid": status.call_sid},
    )
    return Response(status_code=204)


def _recording_tracks(channels: int, track: str) -> list[str]:
    if channels >= 2:  # dual: first channel the parent call (caller), second the child (agent)
        return ["inbound", "outbound"]
    return ["outbound"] if track == "outbound" else ["inbound"]


def job_from_form(form: tm.RecordingStatusForm, settings: Settings) -> RecordingJob:
    """The recording job of a ``completed`` callback; ``ValueError`` on unusable fields."""
    try:
        check_recording_url(form.recording_url, settings.recording_hosts)
    except DownloadError as exc:
        raise ValueError(f"RecordingUrl refused: {exc}") from None
    channels = form.recording_channels or 1
    if channels not in (1, 2):
        raise ValueError(f"RecordingChannels={channels}")
    try:
        path = recording_file(settings.recording_dir, f"{form.call_sid}.{form.recording_sid}.twilio.wav")
    except UnsafePath as exc:
        raise ValueError(str(exc)) from None
    return RecordingJob(
        call_sid=form.call_sid,
        path=str(path),
        channels=channels,
        tracks=_recording_tracks(channels, form.recording_track or "both"),
        duration=float(form.recording_duration or 0),
        source="twilio",
        recording_url=form.recording_url,
    )


async def recording_status(request: Request) -> Response:
    """Signature-checked recording status callback; ``completed`` ones are queued for the batch pass."""
    settings: Settings = request.app.state.settings
    try:
        status = await _typed_form(request, tm.RecordingStatusForm, "recording status")
    except _Reject as exc:
        return _refuse(request, exc, None)
    if status.recording_status != "completed":
        logger.info("recording %s: %s (not queued)", status.recording_sid, status.recording_status,
                    extra={"call_sid": status.call_sid})  # fmt: skip
        return Response(status_code=204)
    try:
        job = job_from_form(status, settings)
    except ValueError as exc:
        return _refuse(request, _Reject(400, str(exc)), status.call_sid)
    store: CallStore = request.app.state.store
    try:
        entry = await store.enqueue_recording(job)
    except Exception as exc:  # Redis down: Twilio retries on a 5xx
        logger.error("cannot queue twilio recording: %s", exc, extra={"call_sid": status.call_sid})
        return PlainTextResponse("queue unavailable", status_code=503)
    if not entry:  # the store queues nothing for an erased call
        logger.warning("twilio recording of an erased call: not queued", extra={"call_sid": status.call_sid})
        return Response(status_code=204)
    logger.info("twilio recording queued as job %s", entry, extra={"call_sid": status.call_sid})
    return Response(status_code=204)


routes: list[Route] = [
    Route("/twilio/voice", voice, methods=["POST"], name="twilio_voice"),
    Route("/twilio/status", call_status, methods=["POST"], name="twilio_call_status"),
    Route(STREAM_STATUS_PATH, stream_status, methods=["POST"], name="twilio_stream_status"),
    Route(RECORDING_PATH, recording_status, methods=["POST"], name="twilio_recording_status"),
]

__all__ = [
    "MAX_FORM_BYTES",
    "CallStore",
    "StreamWatcher",
    "build_twiml",
    "call_status",
    "job_from_form",
    "recording_status",
    "routes",
    "stream_status",
    "voice",
]
