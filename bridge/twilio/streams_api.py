"""Twilio's Streams REST API: start a unidirectional Media Stream on a call in progress, and stop one
(https://www.twilio.com/docs/voice/api/stream-resource).

It is how a call outlives the instance carrying it: a draining instance starts a replacement stream
(the load balancer sends it to a healthy instance) and stops its own; an instance told by the stream
status callback that a stream died starts one too. The ``twilio`` package's client does the HTTP; its
calls block, so they run in a thread and never hold up the event loop. ``TWILIO_API_BASE_URL`` points
its ``api`` domain elsewhere (a local fake Twilio in tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from twilio.base.exceptions import TwilioException  # type: ignore[import-untyped, unused-ignore]
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped, unused-ignore]
from twilio.rest import Client  # type: ignore[import-untyped, unused-ignore]

from bridge.settings import Settings
from bridge.sids import is_stream_sid

log = logging.getLogger(__name__)

#: Twilio's limit on custom parameters of a stream started through the API (``Parameter1``…``Parameter99``).
MAX_PARAMETERS = 99
#: Seconds one REST request may take.
REQUEST_TIMEOUT = 10.0


class StreamsApiError(Exception):
    """Twilio refused or did not answer; ``str(exc)`` says why (safe to log: no credentials)."""


class StreamsApi:
    """Start and stop Media Streams of calls through Twilio's REST API (one client per instance)."""

    def __init__(self, settings: Settings) -> None:
        user, password = settings.twilio_rest_credentials
        http = TwilioHttpClient(timeout=REQUEST_TIMEOUT)
        self._client = Client(user, password, account_sid=settings.twilio_account_sid, http_client=http)
        self._client.api.base_url = settings.twilio_api_base_url
        self.base_url = settings.twilio_api_base_url

    async def start(
        self, call_sid: str, *, url: str, status_callback: str, parameters: Mapping[str, str], name: str = ""
    ) -> str:
        """Start a ``both_tracks`` stream of ``call_sid`` to ``url``; returns its StreamSid."""
        kwargs: dict[str, str] = {"url": url, "track": "both_tracks", "status_callback": status_callback,
                                  "status_callback_method": "POST"}  # fmt: skip
        if name:
            kwargs["name"] = name
        for i, (key, value) in enumerate(list(parameters.items())[:MAX_PARAMETERS], start=1):
            kwargs[f"parameter{i}_name"] = key
            kwargs[f"parameter{i}_value"] = value
        streams = self._client.api.v2010.account.calls(call_sid).streams
        try:
            stream = await asyncio.to_thread(streams.create, **kwargs)
        except (TwilioException, OSError) as exc:
            raise StreamsApiError(f"starting a stream failed: {_describe(exc)}") from None
        sid = str(getattr(stream, "sid", "") or "")
        if not is_stream_sid(sid):
            raise StreamsApiError("starting a stream: Twilio's answer has no StreamSid")
        return sid

    async def stop(self, call_sid: str, stream_sid: str) -> None:
        """Stop one stream of ``call_sid`` (Twilio sends its ``stop`` and closes the socket)."""
        stream = self._client.api.v2010.account.calls(call_sid).streams(stream_sid)
        try:
            await asyncio.to_thread(stream.update, status="stopped")
        except (TwilioException, OSError) as exc:
            raise StreamsApiError(f"stopping stream {stream_sid} failed: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    text = getattr(exc, "msg", None) or type(exc).__name__
    return " ".join(str(p) for p in (status, code, text) if p)


__all__ = ["MAX_PARAMETERS", "StreamsApi", "StreamsApiError"]
