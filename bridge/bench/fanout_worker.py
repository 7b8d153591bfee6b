"""Subscriber processes of ``bridge bench fanout --client-procs K``.

At a thousand subscribers one Python event loop cannot read every event in time on a small box, and
the simulated calls share that loop: the harness, not the bridge, would set the latency. With
``--client-procs K`` the subscribers run in K processes (``python -m bridge.bench.fanout_worker``),
the calls stay in the harness's own loop. Arrival times are ``time.monotonic()`` (CLOCK_MONOTONIC,
one clock for every process on the host), so they compare with the null recognizer's send times.

Protocol (one JSON or text line each): the harness writes a :class:`WorkerSpec`; the worker connects
its subscribers and answers a :class:`WorkerJoined`; then ``lag`` / ``unlag`` start and stop its
loop-lag probe, and ``finish SECONDS`` waits that long for the calls to end and answers a
:class:`WorkerReport`, after which the worker exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import httpx
import msgspec

from bridge.bench.fanout_clients import Received, connect_subscribers, sse_subscriber, ws_subscriber
from bridge.bench.fanout_lean import lean_subscriber


async def loop_lag(into: list[float], period: float = 0.02) -> None:
    """Record how late each ``period`` timer fires in this event loop until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period
        await asyncio.sleep(period)
        into.append(max(0.0, loop.time() - due))


class Subscribers:
    """Subscribers in this process's event loop: ``specs`` are (kind ``ws``/``sse``, call index, CallSid);
    ``lean``: the raw-transport clients of :mod:`bridge.bench.fanout_lean`."""

    def __init__(self, http_base: str, specs: Sequence[tuple[str, int, str]], *, lean: bool = False) -> None:
        self.http_base = http_base
        self.lean = lean
        self.specs = list(specs)
        self.receivers = [Received(kind, call) for kind, call, _ in self.specs]
        self.lag: list[float] = []
        self.pids: list[int] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lag_task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    async def join(self, batch: int) -> None:
        """Connect every subscriber, ``batch`` at a time."""
        self._client = client = httpx.AsyncClient(
            base_url=self.http_base, timeout=httpx.Timeout(10, read=None),
            limits=httpx.Limits(max_connections=len(self.specs) + 10))
        ws_base = self.http_base.replace("http://", "ws://")
        starts: list[tuple[Received, Coroutine[Any, Any, None], asyncio.Event]] = []
        for rx, (kind, _, sid) in zip(self.receivers, self.specs, strict=True):
            ready = asyncio.Event()
            if self.lean:
                url = f"{ws_base}/calls/{sid}/live" if kind == "ws" else f"{self.http_base}/calls/{sid}/events"
                coro = lean_subscriber(url, rx, ready)
            else:
                coro = (ws_subscriber(f"{ws_base}/calls/{sid}/live", rx, ready) if kind == "ws"
                        else sse_subscriber(client, f"/calls/{sid}/events", rx, ready))
            starts.append((rx, coro, ready))
        self._tasks = await connect_subscribers(starts, batch=batch)

    @property
    def connected(self) -> int:
        return sum(rx.connected for rx in self.receivers)

    def lag_start(self) -> None:
        self._lag_task = asyncio.create_task(loop_lag(self.lag))

    def lag_stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()

    async def finish(self, timeout: float) -> None:
        """Wait (bounded) for every subscriber to see its call end."""
        self.lag_stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


class WorkerSpec(msgspec.Struct):
    http_base: str
    batch: int
    lean: bool
    #: (kind, call index, CallSid) of each subscriber.
    subscribers: list[tuple[str, int, str]]


class WorkerJoined(msgspec.Struct):
    connected: int


class ReceivedState(msgspec.Struct, array_like=True):
    kind: str
    call: int
    #: (track, audio start, arrival time) of each final, first arrival only.
    finals: list[tuple[str, float, float]]
    duplicates: int
    connected: bool
    error: str


class WorkerReport(msgspec.Struct):
    receivers: list[ReceivedState]
    lag: list[float]


async def _serve() -> None:
    async def line() -> str:
        return await asyncio.to_thread(sys.stdin.readline)

    def answer(message: msgspec.Struct) -> None:
        sys.stdout.write(msgspec.json.encode(message).decode() + "\n")
        sys.stdout.flush()

    spec = msgspec.json.decode(await line(), type=WorkerSpec)
    subs = Subscribers(spec.http_base, spec.subscribers, lean=spec.lean)
    await subs.join(spec.batch)
    answer(WorkerJoined(connected=sum(rx.connected for rx in subs.receivers)))
    timeout = 0.0
    while command := (await line()).strip():
        if command == "lag":
            subs.lag_start()
        elif command == "unlag":
            subs.lag_stop()
        elif command.startswith("finish"):
            timeout = float(command.split()[1])
            break
    await subs.finish(timeout)
    answer(WorkerReport(receivers=[
        ReceivedState(kind=rx.kind, call=rx.call, finals=[(t, s, at) for (t, s), at in rx.finals.items()],
                      duplicates=rx.duplicates, connected=rx.connected, error=rx.error)
        for rx in subs.receivers], lag=subs.lag))


class WorkerGroup:
    """The subscribers spread round-robin over ``procs`` worker processes (same interface as
    :class:`~bridge.bench.fanout_clients.Subscribers`)."""

    def __init__(self, procs: int, http_base: str, specs: Sequence[tuple[str, int, str]], *,
                 lean: bool = False) -> None:
        self.http_base = http_base
        self.lean = lean
        self.specs = list(specs)
        self.procs_n = max(1, min(procs, len(self.specs)))
        self.receivers: list[Received] = []
        self.lag: list[float] = []
        self.connected = 0
        self._procs = [
            subprocess.Popen([sys.executable, "-m", "bridge.bench.fanout_worker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
            for _ in range(self.procs_n)
        ]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def _send(self, proc: subprocess.Popen[bytes], text: str) -> None:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.write(text.encode() + b"\n")
            proc.stdin.flush()

    async def _read(self, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
        assert proc.stdout is not None
        try:
            return await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
        except TimeoutError:
            proc.kill()  # unblocks the reading thread
            return b""

    async def join(self, batch: int) -> None:
        """Every worker connects its share, ``batch / procs`` at a time (the same storm in all)."""
        per = max(1, batch // self.procs_n)
        for i, proc in enumerate(self._procs):
            spec = WorkerSpec(http_base=self.http_base, batch=per, lean=self.lean,
                              subscribers=self.specs[i :: self.procs_n])
            self._send(proc, msgspec.json.encode(spec).decode())
        for raw in await asyncio.gather(*(self._read(p, 300) for p in self._procs)):
            with contextlib.suppress(msgspec.DecodeError):
                self.connected += msgspec.json.decode(raw, type=WorkerJoined).connected

    def lag_start(self) -> None:
        for proc in self._procs:
            self._send(proc, "lag")

    def lag_stop(self) -> None:
        for proc in self._procs:
            self._send(proc, "unlag")

    async def finish(self, timeout: float) -> None:
        for proc in self._procs:
            self._send(proc, f"finish {timeout:g}")
        lines = await asyncio.gather(*(self._read(p, timeout + 60) for p in self._procs))
        for i, (proc, raw) in enumerate(zip(self._procs, lines, strict=True)):
            try:
                report = msgspec.json.decode(raw, type=WorkerReport)
            except msgspec.DecodeError:  # a worker that died: its subscribers count as never joined
                report = WorkerReport(receivers=[ReceivedState(kind, call, [], 0, False, "worker process failed")
                                                 for kind, call, _ in self.specs[i :: self.procs_n]], lag=[])
            for state in report.receivers:
                rx = Received(state.kind, state.call)
                rx.finals = {(t, s): at for t, s, at in state.finals}
                rx.duplicates, rx.connected, rx.error = state.duplicates, state.connected, state.error
                self.receivers.append(rx)
            self.lag += report.lag
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main() -> None:
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
