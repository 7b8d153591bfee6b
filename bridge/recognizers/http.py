"""What the vendors' batch (pre-recorded) engines share: one POST with the key, errors made uniform."""

from __future__ import annotations

from typing import Any

import httpx

from bridge.transcripts import EngineError


class HttpBatchEngine:
    """Base of a batch engine that uploads a recording to a vendor's HTTP API."""

    name = "http"
    model = ""

    def __init__(self, base_url: str, api_key: str, *, timeout: float, client: httpx.AsyncClient | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._client = client

    async def _post(self, path: str, **kwargs: Any) -> bytes:
        client = self._client or httpx.AsyncClient(timeout=self.timeout)
        try:
            resp = await client.post(self.base_url + path, timeout=self.timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise EngineError(f"{self.name}: {type(exc).__name__}: {exc}") from None
        finally:
            if self._client is None:
                await client.aclose()
        if resp.status_code != 200:
            raise EngineError(f"{self.name}: HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.content


__all__ = ["HttpBatchEngine"]
