"""Fixtures for the embedded recognizer: real servers on 127.0.0.1, each in its own thread and loop.

A server thread outlives a test's event loop, so one model load serves the whole session; the
weights are cached per process, so extra servers (short idle timeout, API key) start in a blink.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest

from bridge.embedded.server import EmbeddedConfig, running
from tests.support import FIXTURES


class ServerThread:
    """Runs :func:`bridge.embedded.server.running` in a background thread until stopped."""

    def __init__(self, config: EmbeddedConfig) -> None:
        self.config = config
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="recognizer", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with running(self.config) as url:
                self.url = url
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(120) or self._error is not None:
            raise RuntimeError(f"recognizer did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="session")
def recognizer_url() -> Iterator[str]:
    with ServerThread(EmbeddedConfig(model="tiny.en", workers=2)) as server:
        yield server.url


@pytest.fixture(scope="session")
def two_pass_recognizer_url() -> Iterator[str]:
    """The default configuration: tiny.en partials, base finals."""
    with ServerThread(EmbeddedConfig(model="tiny.en", final_model="base", workers=2)) as server:
        yield server.url


@pytest.fixture(scope="session")
def keyed_recognizer_url() -> Iterator[str]:
    with ServerThread(EmbeddedConfig(model="tiny.en", workers=2, api_key="sekret")) as server:
        yield server.url


@pytest.fixture(scope="session")
def impatient_recognizer_url() -> Iterator[str]:
    with ServerThread(EmbeddedConfig(model="tiny.en", workers=2, idle_timeout=0.5)) as server:
        yield server.url


@pytest.fixture(scope="session")
def clips() -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads((FIXTURES / "audio" / "clips.json").read_text())
    return data
