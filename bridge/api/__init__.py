"""The read-only REST API over stored calls: calls, transcripts ("as heard" and "after the fact"), quality,
compliance reports."""

from __future__ import annotations

from bridge.api import calls, compliance

routes = [*calls.routes, *compliance.routes]

__all__ = ["routes"]
