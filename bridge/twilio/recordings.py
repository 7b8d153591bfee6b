"""Fetching a Twilio recording (``{RecordingUrl}.wav``) with the account's credentials.

Twilio serves a recording's media at its ``RecordingUrl`` with an extension that picks the format
(https://www.twilio.com/docs/voice/api/recording#fetch-a-recording-media-file). The credentials are
only ever sent over https, to the hosts allowed (Twilio's by default): :func:`check_recording_url`
is applied when a callback is accepted and again before each download.

A dual-channel recording downloads downmixed to mono unless the request asks for
``RequestedChannels=2`` (the default for conference recordings since dual-channel became their
default: https://www.twilio.com/en-us/changelog/dual-channel-conference-recordings-as-default-is-now-ga),
which would put both parties on the caller's track. A mono recording is never asked for two:
that is warning 16113 (https://www.twilio.com/docs/api/errors/16113).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx

#: Where Twilio serves recordings (``api.twilio.com`` and its regional twins): the default allow-list.
TWILIO_HOSTS: tuple[str, ...] = ("twilio.com",)


class DownloadError(RuntimeError):
    """The recording could not be fetched from Twilio."""


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_recording_url(url: str, allowed_hosts: tuple[str, ...] = TWILIO_HOSTS) -> None:
    """Raise :class:`DownloadError` unless ``url`` is an https:// URL on an allowed host (or a subdomain).

    Plain http is accepted for a loopback host only (traffic that never leaves the machine: a local
    proxy, a test double), and only when such a host is allowed at all.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise DownloadError("not a valid URL") from None
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(host)):
        raise DownloadError(f"refusing to send Twilio credentials over {parts.scheme or 'no scheme'}:// (https only)")
    if parts.username is not None or parts.password is not None:
        raise DownloadError("refusing a recording URL with credentials in it")
    if not any(host == h or host.endswith("." + h) for h in allowed_hosts):
        raise DownloadError(f"refusing to send Twilio credentials to {host!r} (not in recording_hosts)")


async def download_recording(
    url: str,
    dest: Path,
    *,
    auth: tuple[str, str],
    http: httpx.AsyncClient | None = None,
    allowed_hosts: tuple[str, ...] = TWILIO_HOSTS,
    timeout: float = 120.0,
    channels: int = 1,
) -> Path:
    """Download the WAV of the recording at ``url`` to ``dest`` (atomically); returns ``dest``.

    ``channels`` is the recording's ``RecordingChannels``: 2 asks Twilio for both channels. A redirect
    keeps the credentials only on the same origin (httpx drops ``Authorization`` on any other), which
    is how Twilio hands out media on its own hosts.
    """
    url = url if url.endswith(".wav") else url + ".wav"
    params = {"RequestedChannels": "2"} if channels == 2 else None
    check_recording_url(url, allowed_hosts)
    client = http or httpx.AsyncClient()
    try:
        resp = await client.get(url, params=params, auth=auth, follow_redirects=True, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DownloadError(f"GET {url}: {type(exc).__name__}: {exc}") from None
    finally:
        if http is None:
            await client.aclose()
    if resp.status_code != 200:
        raise DownloadError(f"GET {url}: HTTP {resp.status_code}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    await asyncio.to_thread(tmp.write_bytes, resp.content)
    os.replace(tmp, dest)
    return dest


__all__ = ["TWILIO_HOSTS", "DownloadError", "check_recording_url", "download_recording"]
