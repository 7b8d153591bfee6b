"""Shared plumbing of the bridge benchmarks: percentiles, reports and plots, /proc readings,
and the processes a benchmark runs (``bridge serve``, the null recognizer, an embedded redis)."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec

_STARTED = time.monotonic()
#: Taken when a benchmark starts (this module's import), before it loads the box itself.
_LOAD_AT_START = os.getloadavg()


def call_fixture(name: str, fixtures: str | Path = "fixtures") -> Path:
    """The WAV of call fixture ``name`` (its reference turns are the ``.json`` beside it): from the
    repository's ``fixtures/calls/``, or the call shipped in the package (the demo call)."""
    from bridge.data import call_path

    for path in (Path(fixtures) / "calls" / f"{name}.wav", call_path(name)):
        if path.exists():
            return path
    raise FileNotFoundError(f"no call fixture {name!r} in {Path(fixtures) / 'calls'} (pass --fixtures DIR)")


class Percentiles(msgspec.Struct):
    """A latency distribution in milliseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile ``p`` (0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summarize(seconds: Sequence[float]) -> Percentiles:
    """p50/p95/p99/max/mean in milliseconds of latencies given in seconds."""
    s = sorted(seconds)
    if not s:
        return Percentiles(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    ms = [v * 1000 for v in s]
    return Percentiles(
        n=len(ms),
        p50=round(percentile(ms, 50), 3),
        p95=round(percentile(ms, 95), 3),
        p99=round(percentile(ms, 99), 3),
        max=round(ms[-1], 3),
        mean=round(sum(ms) / len(ms), 3),
    )


def fmt(p: Percentiles) -> str:
    if not p.n:
        return "n=0"
    return f"p50 {p.p50:.1f} ms, p95 {p.p95:.1f} ms, p99 {p.p99:.1f} ms (n={p.n})"


class Machine(msgspec.Struct):
    nproc: int
    cpu_model: str
    mem_total_gib: float
    python: str
    #: 1, 5 and 15 minute load averages when the run began: a figure from a busy box is not a figure.
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)


def machine() -> Machine:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 2**20
    load = _LOAD_AT_START
    return Machine(nproc=os.cpu_count() or 0, cpu_model=model, mem_total_gib=round(mem, 1),
                   load_average=(round(load[0], 2), round(load[1], 2), round(load[2], 2)),
                   python=platform.python_version())


def machine_line(m: Machine) -> str:
    load = ", ".join(f"{x:.2f}" for x in m.load_average)
    return f"{m.nproc} x {m.cpu_model}, {m.mem_total_gib} GiB RAM, Python {m.python}; load average at start {load}"


def progress(message: str) -> None:
    """One progress line on stderr, stamped with seconds since the benchmark started."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def out_dir(kind: str, given: str | None) -> Path:
    if given:
        path = Path(given)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("bench-out") / f"{kind}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_report(out: Path, result: msgspec.Struct, markdown: str) -> tuple[Path, Path]:
    """``result.json`` and ``report.md`` in ``out``."""
    js = out / "result.json"
    md = out / "report.md"
    js.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    md.write_text(markdown.rstrip() + "\n")
    return js, md


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the benchmarks draw plots with matplotlib: pip install '.[bench]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(path: Path, series: Mapping[str, Sequence[float]], title: str,
                       limit_ms: float | None = None) -> Path:
    """Histogram (ms, log count) of each series of latencies given in seconds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in series.items():
        if values:
            ax.hist([v * 1000 for v in values], bins=60, alpha=0.6, label=f"{name} (n={len(values)})", log=True)
    if limit_ms is not None:
        ax.axvline(limit_ms, color="red", linestyle="--", label=f"target {limit_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lines(path: Path, x: Sequence[float], ys: Mapping[str, Sequence[float]], *, title: str, xlabel: str,
               ylabel: str, limit: float | None = None) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, y in ys.items():
        ax.plot(list(x)[: len(y)], list(y), marker="o", label=name)
    if limit is not None:
        ax.axhline(limit, color="red", linestyle="--", label=f"target {limit:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- /proc -----------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """``pid`` and all its descendants (read from /proc; psutil is not a dependency)."""
    parent: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            parent.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parent.get(p, []))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids``."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


class CpuMeter:
    """CPU use (in cores) of a set of processes between :meth:`start` and :meth:`read`."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.start()

    def start(self) -> None:
        self._cpu = cpu_seconds(self.pids)
        self._t = time.monotonic()

    def read(self) -> float:
        dt = time.monotonic() - self._t
        return (cpu_seconds(self.pids) - self._cpu) / dt if dt > 0 else 0.0


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class BridgeProcess:
    """``bridge serve`` as a subprocess on a free loopback port, configured through its environment."""

    def __init__(self, env: Mapping[str, str], log: Path, *, workers: int = 1, checkout: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, **env, "BRIDGE_HOST": "127.0.0.1", "BRIDGE_PORT": str(self.port)}
        if checkout:  # another checkout's bridge (before/after comparisons), measured by this harness
            full["PYTHONPATH"] = checkout
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", "--drain-seconds", "5",
             *(["--workers", str(workers)] if workers > 1 else [])],
            cwd=checkout or None,  # ``-m`` puts the working directory first on sys.path
            env=full, stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {self.proc.returncode}; see {self._log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("bridge did not become ready")

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def stop(self) -> None:
        _stop(self.proc, 15)
        self._log.close()


class NullRecognizerProcess:
    """The null recognizer (:mod:`bridge.bench.null_recognizer`) in its own process."""

    def __init__(
        self, *, window: float = 1.0, partial: float = 0.2, text_bytes: int = 0, stagger: bool = False
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.bench.null_recognizer", "--window", str(window), "--partial",
             str(partial), "--text-bytes", str(text_bytes), *(["--stagger"] if stagger else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("null recognizer did not start")
        self.port = int(msgspec.json.decode(line)["port"])
        self.url = f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, cmd: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()
        return msgspec.json.decode(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            _stop(self.proc, 5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def redis_for_bench(url: str | None, directory: Path) -> Iterator[tuple[str, int | None]]:
    """(redis URL, pid of the redis we started or None): ``url`` if given, else an embedded redis."""
    if url:
        yield url, None
        return
    from bridge.store.redis_embedded import EmbeddedRedis

    with EmbeddedRedis(directory, persist=False) as redis:
        yield redis.url, redis.pid


def bench_env(*, token: str, recognizer_url: str, redis_url: str, recordings: Path,
              extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a benchmarked ``bridge serve``: the null recognizer, quiet logs, own key prefix."""
    env = {
        "TWILIO_AUTH_TOKEN": token,
        "BRIDGE_RECOGNIZER": "deepgram",
        "BRIDGE_RECOGNIZER_URL": recognizer_url,
        "BRIDGE_RECOGNIZER_API_KEY": "null",
        "BRIDGE_RECOGNIZER_MODEL": "null",
        "REDIS_URL": redis_url,
        "BRIDGE_REDIS_PREFIX": "bench-" + secrets.token_hex(4),
        "BRIDGE_RETENTION_SECONDS": "600",
        "BRIDGE_RECORDING_DIR": str(recordings),
        "BRIDGE_LOG_LEVEL": "warning",
        "BRIDGE_PUBLIC_URL": "",
    }
    env.update(extra or {})
    return env


# -- /metrics --------------------------------------------------------------------------------------


class HistogramQuantiles(msgspec.Struct):
    """Quantiles (ms) estimated from a Prometheus histogram's buckets, as Prometheus would."""

    count: int
    p50: float
    p95: float
    p99: float


def histogram_quantiles(text: str, name: str) -> HistogramQuantiles:
    from prometheus_client.parser import text_string_to_metric_families

    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == name + "_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0

    def q(p: float) -> float:
        if not total:
            return math.nan
        rank = p * total
        lo_bound, lo_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if math.isinf(bound):
                    return lo_bound * 1000
                frac = (rank - lo_count) / (count - lo_count) if count > lo_count else 0.0
                return (lo_bound + (bound - lo_bound) * frac) * 1000
            lo_bound, lo_count = bound, count
        return lo_bound * 1000

    return HistogramQuantiles(count=int(total), p50=round(q(0.5), 2), p95=round(q(0.95), 2), p99=round(q(0.99), 2))
