"""Debian's nginx in front of bridge instances, running the shipped proxying rules as they are.

``Nginx(directory, upstreams=[port, …])`` writes a minimal ``nginx.conf`` in ``directory`` (its
prefix: pid, logs and temp files stay there) whose one server listens on a free 127.0.0.1 port and
``include``\\ s ``deploy/nginx/bridge-locations.conf`` of this repository, with ``upstream bridge``
naming the given ports. ``nginx -p DIR -c nginx.conf -e stderr -g 'daemon off;'`` runs it in the
foreground so it is always stopped with the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
LOCATIONS = REPO / "deploy" / "nginx" / "bridge-locations.conf"
EXAMPLE = REPO / "deploy" / "nginx" / "bridge.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, *, timeout: float = 10.0, alive: subprocess.Popen[bytes] | None = None) -> None:
    """Wait (bounded) until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"process exited with {alive.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def http_context(body: str) -> str:
    """A whole ``nginx.conf`` around ``body`` (http context) that keeps every file under the prefix."""
    # As root the workers would run as nobody and could not use the private temp directory.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid nginx.pid;
error_log logs/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log logs/access.log;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
{body}
}}
"""


def prepare_prefix(directory: Path) -> None:
    for sub in ("logs", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)


def check_config(directory: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``conf`` with ``directory`` as prefix."""
    return subprocess.run([NGINX, "-t", "-p", str(directory), "-c", str(conf), "-e", "stderr"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


class Nginx:
    """One nginx process: ``with Nginx(tmp, upstreams=[a, b]) as front: front.url``."""

    def __init__(self, directory: Path, upstreams: list[int], *, locations: Path = LOCATIONS) -> None:
        self.directory = directory
        self.upstreams = upstreams
        self.locations = locations
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def config(self) -> str:
        servers = "\n".join(f"        server 127.0.0.1:{p};" for p in self.upstreams)
        return http_context(f"""
    upstream bridge {{
{servers}
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        include {self.locations};
    }}""")

    def start(self) -> Nginx:
        prepare_prefix(self.directory)
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config())
        checked = check_config(self.directory, conf)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.directory), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=(self.directory / "logs" / "stderr.log").open("wb"),
        )  # fmt: skip
        try:
            wait_listening(self.port, alive=self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # fast shutdown
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def error_log(self) -> str:
        path = self.directory / "logs" / "error.log"
        return path.read_text() if path.exists() else ""

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["EXAMPLE", "LOCATIONS", "Nginx", "check_config", "free_port", "http_context", "prepare_prefix",
           "wait_listening"]  # fmt: skip
