"""The read-only REST API over stored calls: calls, transcripts ("as heard" and "after the fact"), quality."""

from __future__ import annotations

from bridge.api.calls import routes

__all__ = ["routes"]
