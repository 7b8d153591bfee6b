"""``GET /calls/{sid}/compliance`` (a call's compliance report) and ``GET /compliance`` (the calls
with a report, ``?failed=true`` only the failing ones, newest first, with the rules they failed).

Same access as every call endpoint (:func:`bridge.live.auth.authorize`): a token limited to some
calls lists only those. A report exists once the batch pass ran: before, the call's report is a 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.api.common import call_document, claims_or_error, query_flag, query_limit
from bridge.compliance.models import FailedCall
from bridge.responses import json_response, store_failure
from bridge.store import STORE_ERRORS, Store


async def get_compliance(request: Request) -> Response:
    return await call_document(request, Store.compliance, "no compliance report yet (the batch pass has not run)")


async def list_compliance(request: Request) -> Response:
    """``{"calls": [{call_sid, passed, evaluated_at, rules}]}``, newest report first; ``rules`` are the
    failed ones (with their evidence)."""
    claims = claims_or_error(request)
    if isinstance(claims, Response):
        return claims
    failed = query_flag(request, "failed")
    if isinstance(failed, Response):
        return failed
    limit = query_limit(request)
    if isinstance(limit, Response):
        return limit
    store: Store = request.app.state.store
    try:
        sids = await store.compliance_calls(failed=failed is True, limit=limit if failed is not False else 1000)
        if claims is not None and not claims.all_calls:
            sids = [s for s in sids if claims.allows(s)]
        rows: list[FailedCall] = []
        for sid in sids:
            report = await store.compliance(sid)
            if report is None or (failed is False and not report.passed):
                continue  # expired since it was indexed, or a failing one when passing ones were asked for
            rows.append(FailedCall(call_sid=sid, passed=report.passed, evaluated_at=report.evaluated_at,
                                   rules=report.failed_rules))  # fmt: skip
            if len(rows) >= limit:
                break
    except STORE_ERRORS as exc:
        return store_failure(request, None, exc)
    return json_response({"calls": rows})


routes: list[Route] = [
    Route("/calls/{call_sid}/compliance", get_compliance, methods=["GET"]),
    Route("/compliance", list_compliance, methods=["GET"]),
]

__all__ = ["get_compliance", "list_compliance", "routes"]
