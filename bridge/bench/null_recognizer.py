"""The "null recognizer": :class:`~bridge.testing.ScriptedDeepgramServer` plus clock probes.

The load and fanout harnesses stamp every simulated Twilio frame with a probe (magic, call index,
track, sequence number, ``time.monotonic()`` at send) in its first bytes. The bridge forwards mu-law
untranscoded, so this server finds the probe in the audio it receives and computes the
bridge-added latency itself: ``monotonic() on receipt - monotonic() at send``. CLOCK_MONOTONIC is
system-wide on Linux, so harness and recognizer may live in different processes without skew.

Run as a subprocess (``python -m bridge.bench.null_recognizer``) so it does not share the
harness's CPU: it prints ``{"port": N}`` and then answers one JSON line per command on stdin
(``stats``, ``reset``, ``mark``, ``pad N``, ``dump PATH``); it exits when stdin closes.
"""

from __future__ import annotations

import array
import asyncio
import struct
import sys
import time
from pathlib import Path

import msgspec
from websockets.asyncio.server import ServerConnection

from bridge.recognizers.deepgram import wire
from bridge.testing.deepgram import ScriptedConnection, ScriptedDeepgramServer, ScriptedSession

FRAME = 160
MAGIC = b"BnCh"
#: magic, call index, track (0 inbound, 1 outbound), frame sequence, monotonic send time.
PROBE = struct.Struct("<4sIBId")
TRACKS = ("inbound", "outbound")


def probe_frame(call: int, track: int, seq: int, sent: float) -> bytes:
    """A 160-byte mu-law frame carrying a probe, the rest silence."""
    return PROBE.pack(MAGIC, call, track, seq, sent) + b"\xff" * (FRAME - PROBE.size)


class FinalSent(msgspec.Struct, array_like=True):
    """When the server sent the final of a window (``start`` in seconds of the connection's audio)."""

    call: int
    track: str
    start: float
    sent: float


class Stats(msgspec.Struct):
    connections: int
    active: int
    probes: int
    #: Probes that arrived with a sequence number lower than one already seen (duplicates/reorder).
    out_of_order: int
    #: Frames received per "call:track".
    frames: dict[str, int]
    #: Gaps in sequence numbers seen so far, summed (a running estimate of frames lost).
    gaps: int
    finals_sent: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class NullRecognizer(ScriptedDeepgramServer):
    """Scripted Deepgram server that measures probe latency and keeps no audio."""

    def __init__(self, *, text_bytes: int = 0, **kwargs: float | int | str | None) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        #: Pad every transcript to about this many bytes (fanout: make subscribers' sockets fill).
        self.text_bytes = text_bytes
        self.reset()

    def reset(self) -> None:
        self.latencies = array.array("d")
        self.frames: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        self.out_of_order = 0
        self.gaps = 0
        self.finals: list[FinalSent] = []

    def new_session(self, ws: ServerConnection, record: ScriptedConnection) -> ScriptedSession:
        return _ProbeSession(self, ws, record)

    def stats(self) -> Stats:
        lat = sorted(self.latencies)
        n = len(lat)

        def q(p: float) -> float:
            return lat[min(n - 1, int(p * n))] * 1000 if n else 0.0

        return Stats(
            connections=len(self.connections),
            active=len(self._active),
            probes=n,
            out_of_order=self.out_of_order,
            frames=dict(self.frames),
            gaps=self.gaps,
            finals_sent=self.finals_sent,
            p50_ms=q(0.5),
            p99_ms=q(0.99),
            max_ms=lat[-1] * 1000 if n else 0.0,
        )


class _ProbeSession(ScriptedSession):
    server: NullRecognizer

    def __init__(self, server: NullRecognizer, ws: ServerConnection, record: ScriptedConnection) -> None:
        super().__init__(server, ws, record)
        self.server = server
        self.pending = bytearray()
        self.key: tuple[int, str] | None = None

    async def _audio(self, data: bytes) -> bool:
        now = time.monotonic()
        server = self.server
        pending = self.pending
        pending += data
        usable = len(pending) - len(pending) % FRAME
        for pos in range(0, usable, FRAME):
            if pending[pos : pos + 4] != MAGIC:
                continue  # silence the bridge filled into a gap
            _, call, track, seq, sent = PROBE.unpack_from(pending, pos)
            name = TRACKS[track & 1]
            key = f"{call}:{name}"
            if self.key is None:
                self.key = (call, name)
            server.latencies.append(now - sent)
            server.frames[key] = server.frames.get(key, 0) + 1
            last = server.last_seq.get(key, 0)
            if seq <= last:
                server.out_of_order += 1
            else:
                server.gaps += seq - last - 1
                server.last_seq[key] = seq
        del pending[:usable]
        alive = await super()._audio(data)
        self.record.audio.clear()  # keep no audio: memory must not grow with the load
        self.record.frames.clear()
        return alive

    def _results(self, start: int, data: bytes, *, is_final: bool, from_finalize: bool = False) -> wire.Results:
        results = super()._results(start, data, is_final=is_final, from_finalize=from_finalize)
        pad = self.server.text_bytes
        if pad:
            alt = results.channel.alternatives[0]
            word = alt.transcript
            alt.transcript = " ".join([word] * max(1, pad // (len(word) + 1)))
        return results

    async def _final(self, *, from_finalize: bool) -> None:
        start = self.window_start / self.bps
        sent = time.monotonic()
        await super()._final(from_finalize=from_finalize)
        if self.key is not None:
            self.server.finals.append(FinalSent(self.key[0], self.key[1], start, sent))


async def _serve(port: int, window: float, partial: float, text_bytes: int) -> None:
    server = NullRecognizer(port=port, window_seconds=window, partial_seconds=partial, text_bytes=text_bytes,
                            idle_timeout=60.0)
    await server.start()
    out = sys.stdout
    out.write(msgspec.json.encode({"port": server.port}).decode() + "\n")
    out.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).decode().strip():
            cmd, _, arg = line.partition(" ")
            reply: object
            if cmd == "stats":
                reply = server.stats()
            elif cmd == "reset":
                server.reset()
                reply = {"ok": True}
            elif cmd == "mark":  # a new measurement window: latencies only, counts keep running
                server.latencies = array.array("d")
                reply = {"ok": True}
            elif cmd == "pad":  # change the transcript size on the fly (fanout's slow-subscriber phase)
                server.text_bytes = int(arg)
                reply = {"ok": True}
            elif cmd == "dump":
                Path(arg + ".lat").write_bytes(server.latencies.tobytes())
                Path(arg + ".finals.json").write_bytes(msgspec.json.encode(server.finals))
                reply = {"ok": True, "probes": len(server.latencies)}
            else:
                reply = {"error": f"unknown command {cmd!r}"}
            out.write(msgspec.json.encode(reply).decode() + "\n")
            out.flush()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bridge.bench.null_recognizer")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--window", type=float, default=1.0, help="seconds of audio per final")
    p.add_argument("--partial", type=float, default=0.2, help="seconds of audio per partial")
    p.add_argument("--text-bytes", type=int, default=0)
    args = p.parse_args(argv)
    coro = _serve(args.port, args.window, args.partial, args.text_bytes)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
