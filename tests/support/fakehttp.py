"""A recorded-response HTTP server on 127.0.0.1 (stands in for Deepgram, ElevenLabs and Twilio)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Route:
    status: int
    body: bytes
    content_type: str = "application/json"
    #: When set, requests without exactly this Authorization header get 401.
    authorization: str | None = None


@dataclass
class FakeHttp:
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeHttp:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length", "0") or "0")
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                fake.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                route = fake.routes.get((self.command, path))
                if route is None:
                    status, payload, ctype = 404, b'{"err":"not found"}', "application/json"
                elif route.authorization is not None and self.headers.get("authorization") != route.authorization:
                    status, payload, ctype = 401, b'{"err":"unauthorized"}', "application/json"
                else:
                    status, payload, ctype = route.status, route.body, route.content_type
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
