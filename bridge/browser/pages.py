"""``GET /try``: the capture page and its two ES modules, served as files (no build step)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parents[1] / "static"
#: URL path -> (file in bridge/static, media type). Nothing else under /try is served.
FILES = {
    "/try": ("try.html", "text/html"),
    "/try/try.js": ("try.js", "text/javascript"),
    "/try/capture-worklet.js": ("capture-worklet.js", "text/javascript"),
}


async def _file(request: Request) -> Response:
    name, media_type = FILES[request.url.path]
    # The page asks for the microphone: never let another site frame it.
    headers = {"Cache-Control": "no-cache", "X-Frame-Options": "DENY"}
    return FileResponse(STATIC / name, media_type=media_type, headers=headers)


routes = [Route(path, _file, methods=["GET", "HEAD"]) for path in FILES]

__all__ = ["FILES", "routes"]
