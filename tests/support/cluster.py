"""A real local Redis Cluster: three masters (``redis-server --cluster-enabled yes``) on free 127.0.0.1 ports,
joined by ``redis-cli --cluster create … --cluster-replicas 0 --cluster-yes``
(https://redis.io/docs/latest/operate/oss_and_stack/management/scaling/).

Each node runs in its own directory under the given temporary directory, without persistence, and
is always stopped (``with LocalCluster(dir) as cluster:``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.support.nginx import free_port, wait_listening

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


class LocalCluster:
    def __init__(self, directory: Path, *, masters: int = 3) -> None:
        self.directory = directory
        self.ports = [free_port() for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """Any node is enough for a cluster client: it discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def _conf(self, port: int, node_dir: Path) -> str:
        return "\n".join([
            f"port {port}", "bind 127.0.0.1", f"dir {node_dir}", "cluster-enabled yes",
            "cluster-config-file nodes.conf", "cluster-node-timeout 5000", f"cluster-port {free_port()}",
            'save ""', "appendonly no", "daemonize no", f"logfile {node_dir / 'redis.log'}",
        ]) + "\n"  # fmt: skip

    def start(self) -> LocalCluster:
        try:
            for port in self.ports:
                node_dir = self.directory / str(port)
                node_dir.mkdir(parents=True)
                (node_dir / "redis.conf").write_text(self._conf(port, node_dir))
                proc = subprocess.Popen([REDIS_SERVER, str(node_dir / "redis.conf")], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
                self.procs.append(proc)
                wait_listening(port, alive=proc)
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            subprocess.run([REDIS_CLI, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)  # fmt: skip
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok`` (the slots are assigned and agreed on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [self.cli(port, "cluster", "info") for port in self.ports]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.1)
        raise TimeoutError("the cluster did not reach cluster_state:ok")

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=10)
        return done.stdout

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["REDIS_SERVER", "LocalCluster"]
