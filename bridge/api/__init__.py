"""The REST API over stored calls: calls, transcripts ("as heard" and "after the fact"), quality,
compliance reports, phrase search; and the one call control, a manual commit (:mod:`bridge.api.commit`)."""

from __future__ import annotations

from bridge.api import calls, commit, compliance, search

routes = [*calls.routes, *compliance.routes, *commit.routes, *search.routes]

__all__ = ["routes"]
