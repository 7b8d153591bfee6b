"""Speak into the browser: the ``/try`` page and its ``WS /browser/media`` capture endpoint.

The page's AudioWorklet turns the microphone into 8 kHz mu-law frames; the endpoint feeds them to the
same call path as a Twilio stream (:mod:`bridge.browser.capture`), under the access rules of
:mod:`bridge.browser.access`. See ``docs/browser.md``.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from bridge.browser.capture import capture_route
from bridge.browser.pages import routes as _pages

routes: list[BaseRoute] = [capture_route, *_pages]

__all__ = ["routes"]
