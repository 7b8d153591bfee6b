"""Fetching a Twilio recording (``{RecordingUrl}.wav``) with the account's credentials.

Twilio serves a recording's media at its ``RecordingUrl`` with an extension that picks the format
(https://www.twilio.com/docs/voice/api/recording#fetch-a-recording-media-file). The credentials are
only ever sent to the hosts allowed (Twilio's by default).

A dual-channel recording downloads downmixed to mono unless the request asks for
``RequestedChannels=2`` (the default for conference recordings since dual-channel became their
default: https://www.twilio.com/en-us/changelog/dual-channel-conference-recordings-as-default-is-now-ga),
which would put both parties on the caller's track. A mono recording is never asked for two:
that is warning 16113 (https://www.twilio.com/docs/api/errors/16113).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx


class DownloadError(RuntimeError):
    """The recording could not be fetched from Twilio."""


async def download_recording(
    url: str,
    dest: Path,
    *,
    auth: tuple[str, str],
    http: httpx.AsyncClient | None = None,
    allowed_hosts: tuple[str, ...] = ("twilio.com",),
    timeout: float = 120.0,
    channels: int = 1,
) -> Path:
    """Download the WAV of the recording at ``url`` to ``dest`` (atomically); returns ``dest``.

    ``channels`` is the recording's ``RecordingChannels``: 2 asks Twilio for both channels.
    """
    url = url if url.endswith(".wav") else url + ".wav"
    params = {"RequestedChannels": "2"} if channels == 2 else None
    host = (urlsplit(url).hostname or "").lower()
    if not any(host == h or host.endswith("." + h) for h in allowed_hosts):
        raise DownloadError(f"refusing to send Twilio credentials to {host!r} (not in recording_hosts)")
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


__all__ = ["DownloadError", "download_recording"]
