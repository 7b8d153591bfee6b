"""``GET /search?q=<phrase>[&limit=<n>]``: stored calls that said a phrase, newest first.

Authorized like every call endpoint; a token limited to some calls finds only those. The phrase is
matched as consecutive words of one speaker, case and punctuation aside (:mod:`bridge.store.search`).
Bad input is a 400 that says what is wrong: no ``q``, one with no words, one over
:data:`MAX_QUERY_CHARS` characters or :data:`MAX_QUERY_WORDS` words, a bad ``limit``.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.api.common import claims_or_error
from bridge.responses import error, json_response, store_failure
from bridge.store import STORE_ERRORS, Store
from bridge.store.search import SearchSegment, terms

MAX_QUERY_CHARS = 200
MAX_QUERY_WORDS = 12
MAX_LIMIT = 50


class SearchCall(msgspec.Struct, kw_only=True):
    """A call that said the phrase, with where it did."""

    call_sid: str
    status: str
    started_at: float
    ended_at: float
    duration: float
    from_number: str
    to_number: str
    segments: list[SearchSegment]


class SearchResults(msgspec.Struct, kw_only=True):
    """The ``GET /search`` document: the query as matched (its words) and the calls, newest first."""

    query: str
    words: list[str]
    calls: list[SearchCall]


def _limit(raw: str) -> int | None:
    if not raw.isdigit() or len(raw) > 4:
        return None
    value = int(raw)
    return value if 1 <= value <= MAX_LIMIT else None


async def search(request: Request) -> Response:
    claims = claims_or_error(request)
    if isinstance(claims, Response):
        return claims
    query = request.query_params.get("q", "").strip()
    if not query:
        return error(400, "q is required: the phrase to search for")
    if len(query) > MAX_QUERY_CHARS:
        return error(400, f"q is too long (at most {MAX_QUERY_CHARS} characters)")
    words = terms(query)
    if not words:
        return error(400, "q has no words to search for")
    if len(words) > MAX_QUERY_WORDS:
        return error(400, f"q has too many words (at most {MAX_QUERY_WORDS})")
    limit = _limit(request.query_params.get("limit", "20").strip())
    if limit is None:
        return error(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
    allowed = None if claims is None or claims.all_calls else set(claims.calls)
    store: Store = request.app.state.store
    try:
        matches = await store.search(query, limit=limit, allowed=allowed)
        calls: list[SearchCall] = []
        for match in matches:
            info = await store.get_call(match.call_sid)
            if info is None:
                continue  # expired between the match and now
            end = info.ended_at or 0.0
            calls.append(SearchCall(
                call_sid=info.call_sid, status=info.status, started_at=info.started_at, ended_at=info.ended_at,
                duration=max(0.0, end - info.started_at) if end and info.started_at else 0.0,
                from_number=info.from_number, to_number=info.to_number, segments=match.segments,
            ))  # fmt: skip
    except STORE_ERRORS as exc:
        return store_failure(request, None, exc)
    calls.sort(key=lambda c: c.started_at, reverse=True)
    return json_response(SearchResults(query=query, words=words, calls=calls))


routes: list[Route] = [Route("/search", search, methods=["GET"])]

__all__ = ["MAX_LIMIT", "MAX_QUERY_CHARS", "MAX_QUERY_WORDS", "SearchCall", "SearchResults", "routes", "search"]
