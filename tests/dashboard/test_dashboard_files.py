"""The page's files as the bridge serves them: no build step, module scripts with a script MIME type,
a Content-Security-Policy on the page, nothing outside ``bridge/static`` reachable."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import httpx

from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer

STATIC = Path(__file__).resolve().parents[2] / "bridge" / "static"


async def test_the_page_and_every_module_it_imports_are_served(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, recording_dir=tmp_path,
        recognizer="deepgram", recognizer_url=scripted.url,
    )  # fmt: skip
    async with running_bridge(settings) as (_app, http), httpx.AsyncClient(base_url=http) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["referrer-policy"] == "no-referrer"
        # Every module reachable from the page, by following its imports.
        pending, seen = ["/static/js/main.js"], set()
        while pending:
            path = pending.pop()
            seen.add(path)
            r = await client.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript"), path
            for name in re.findall(r'from "\./([\w.]+)"', r.text):
                if f"/static/js/{name}" not in seen:
                    pending.append(f"/static/js/{name}")
        assert seen == {f"/static/js/{p.name}" for p in (STATIC / "js").glob("*.js")}  # no dead module
        assert (await client.get("/static/dashboard.css")).headers["content-type"].startswith("text/css")
        for outside in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/js/../../settings.py"):
            assert (await client.get(outside)).status_code == 404, outside
