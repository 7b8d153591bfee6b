"""The "null recognizer": a lean Deepgram-compatible live server that stamps clock probes.

The load and fanout harnesses stamp every simulated Twilio frame with a probe (magic, call index,
track, sequence number, ``time.monotonic()`` at send) in its first bytes. The bridge forwards mu-law
untranscoded, so this server finds the probe in the audio it receives and computes the
bridge-added latency itself: ``monotonic() on receipt - monotonic() at send``. CLOCK_MONOTONIC is
system-wide on Linux, so harness and recognizer may live in different processes without skew.

It must cost as little as possible, or the box measures the null recognizer rather than the bridge:
it speaks RFC 6455 on a raw asyncio transport, unmasks only the 21 probe bytes at each 160-byte frame
start (the rest of the audio is counted, never touched), and answers Deepgram's protocol only as far
as the bridge uses it: an interim ``Results`` every ``--partial`` seconds of audio, a final every
``--window`` seconds (and on ``Finalize``), ``Metadata`` and a close on ``CloseStream``
(https://developers.deepgram.com/docs/live-streaming-audio). The full scripted server
(:class:`bridge.testing.ScriptedDeepgramServer`) is for tests, not for load.

Run as a subprocess (``python -m bridge.bench.null_recognizer``) so it does not share the
harness's CPU: it prints ``{"port": N}`` and then answers one JSON line per command on stdin
(``stats``, ``reset``, ``mark``, ``pad N``, ``dump PATH``); it exits when stdin closes.
"""

from __future__ import annotations

import array
import asyncio
import base64
import hashlib
import random
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, urlsplit

import msgspec

from bridge.recognizers.deepgram import wire

FRAME = 160
MAGIC = b"BnCh"
#: magic, call index, track (0 inbound, 1 outbound), frame sequence, monotonic send time.
PROBE = struct.Struct("<4sIBId")
TRACKS = ("inbound", "outbound")
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 16 * 1024


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
    #: Audio messages received (how much the bridge coalesces: frames / messages).
    messages: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class NullRecognizer:
    """The server: per-connection protocols share these counters."""

    def __init__(
        self, *, window_seconds: float = 1.0, partial_seconds: float = 0.2, text_bytes: int = 0, stagger: bool = False
    ) -> None:
        self.window_seconds = window_seconds
        self.partial_seconds = partial_seconds
        #: Each connection's first final comes after a random number of frames (up to a whole
        #: window), so calls started together do not all get their results in the same instant.
        self.stagger = stagger
        #: Pad every transcript to about this many bytes (fanout: make subscribers' sockets fill).
        self.text_bytes = text_bytes
        self.connections = 0
        self.active = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self.reset()

    def reset(self) -> None:
        #: Latency of every probe (includes any time the bridge held the frame to coalesce sends).
        self.latencies = array.array("d")
        #: Latency of the newest probe of each audio message (the bridge's forwarding cost alone).
        self.newest = array.array("d")
        self.frames: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        self.out_of_order = 0
        self.gaps = 0
        self.messages = 0
        self.finals_sent = 0
        self.finals: list[FinalSent] = []

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def stats(self) -> Stats:
        lat = sorted(self.latencies)
        n = len(lat)

        def q(p: float) -> float:
            return lat[min(n - 1, int(p * n))] * 1000 if n else 0.0

        return Stats(
            connections=self.connections, active=self.active, probes=n, out_of_order=self.out_of_order,
            frames=dict(self.frames), gaps=self.gaps, finals_sent=self.finals_sent, messages=self.messages,
            p50_ms=q(0.5), p99_ms=q(0.99), max_ms=lat[-1] * 1000 if n else 0.0,
        )  # fmt: skip


def _unmask(data: bytes | bytearray | memoryview, mask: bytes, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a masked payload, unmasked (RFC 6455 section 5.3)."""
    n = end - start
    if n <= 0:
        return b""
    rot = start % 4
    key = (mask[rot:] + mask[:rot]) * (n // 4 + 1)
    return (int.from_bytes(data[start:end], "big") ^ int.from_bytes(key[:n], "big")).to_bytes(n, "big")


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class _Connection(asyncio.Protocol):
    """One Deepgram live connection from the bridge."""

    def __init__(self, server: NullRecognizer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.closed = False
        self.interim = True
        self.total = 0  # audio bytes received on this connection
        self.window_start = 0
        self.next_partial = 0
        self.key: tuple[int, str] | None = None
        self.carry = b""  # unmasked head of a probe split across two messages
        self.message: bytearray | None = None  # a fragmented message being assembled
        self.message_op = 0
        self.request_id = str(uuid.uuid4())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.server.connections += 1
        self.server.active += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.active -= 1
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self._abort()
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            self._handshake(head)
        self._frames()

    def _handshake(self, head: str) -> None:
        lines = head.split("\r\n")
        target = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 2 else "/"
        query = parse_qs(urlsplit(target).query)
        self.interim = query.get("interim_results", ["false"])[0] == "true"
        key = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()
        assert self.transport is not None
        self.transport.write(
            ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Accept: {accept}\r\ndg-request-id: {self.request_id}\r\n\r\n").encode()
        )  # fmt: skip
        self.open = True
        self.partial_bytes = max(1, round(self.server.partial_seconds * 8000))
        self.full_window = self.window_bytes = max(1, round(self.server.window_seconds * 8000))
        if self.server.stagger:  # a shorter first window, whole frames: this connection's phase
            self.window_bytes = FRAME * random.randint(1, max(1, self.full_window // FRAME))
        self.next_partial = self.partial_bytes

    def _frames(self) -> None:
        buf = self.buf
        while not self.closed:
            if len(buf) < 2:
                return
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            masked = b1 & 0x80
            if len(buf) < pos + (4 if masked else 0) + n:
                return
            mask = bytes(buf[pos : pos + 4]) if masked else b"\x00\x00\x00\x00"
            pos += 4 if masked else 0
            payload = memoryview(buf)[pos : pos + n]
            opcode, fin = b0 & 0x0F, b0 & 0x80
            try:
                if opcode == 0 or not fin:  # fragmented (the bridge never fragments audio; be correct anyway)
                    if opcode:
                        self.message, self.message_op = bytearray(), opcode
                    if self.message is not None:
                        self.message += _unmask(payload, mask, 0, n)
                    if fin and self.message is not None:
                        whole, self.message = bytes(self.message), None
                        self._message(self.message_op, whole, b"\x00\x00\x00\x00")
                else:
                    self._message(opcode, payload, mask)
            finally:
                payload.release()
            del buf[: pos + n]

    def _message(self, opcode: int, payload: bytes | memoryview, mask: bytes) -> None:
        if opcode == 2:
            self._audio(payload, mask)
        elif opcode == 1:
            self._control(_unmask(payload, mask, 0, len(payload)))
        elif opcode == 8:  # close: answer it and hang up
            self._send(_frame(8, struct.pack("!H", 1000)))
            self._close()
        elif opcode == 9:  # ping
            self._send(_frame(10, _unmask(payload, mask, 0, len(payload))))

    def _audio(self, payload: bytes | memoryview, mask: bytes) -> None:
        server = self.server
        now = time.monotonic()
        server.messages += 1
        n = len(payload)
        base = self.total
        newest = -1.0
        # Frame starts inside this message (a probe may straddle the previous message's end).
        first = -(-base // FRAME) * FRAME
        if self.carry:  # a probe cut by message boundaries (maybe more than one)
            self.carry += _unmask(payload, mask, 0, min(n, PROBE.size - len(self.carry)))
            if len(self.carry) == PROBE.size:
                newest = self._probe(self.carry, now)
                self.carry = b""
        for frame_at in range(first, base + n, FRAME):
            at = frame_at - base
            if n - at < PROBE.size:
                self.carry = _unmask(payload, mask, at, n)
                break
            sent = self._probe(_unmask(payload, mask, at, at + PROBE.size), now)
            if sent >= 0:
                newest = sent
        if newest >= 0:
            server.newest.append(newest)
        self.total = base + n
        if self.interim:
            while self.next_partial < self.window_bytes and self.total - self.window_start >= self.next_partial:
                self._results(self.window_start, self.window_start + self.next_partial, is_final=False)
                self.next_partial += self.partial_bytes
        while self.total - self.window_start >= self.window_bytes:
            self._final(self.window_start + self.window_bytes, from_finalize=False)

    def _probe(self, head: bytes, now: float) -> float:
        """Count one probe; its latency in seconds (-1: no probe, e.g. silence the bridge filled in)."""
        magic, call, track, seq, sent = PROBE.unpack(head)
        if magic != MAGIC:
            return -1.0
        server = self.server
        name = TRACKS[track & 1]
        key = f"{call}:{name}"
        if self.key is None:
            self.key = (call, name)
        latency: float = now - sent
        server.latencies.append(latency)
        server.frames[key] = server.frames.get(key, 0) + 1
        last = server.last_seq.get(key, 0)
        if seq <= last:
            server.out_of_order += 1
        else:
            server.gaps += seq - last - 1
            server.last_seq[key] = seq
        return latency

    def _control(self, text: bytes) -> None:
        try:
            control = wire.decode_client(text)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if isinstance(control, wire.Finalize):
            if self.total > self.window_start:
                self._final(self.total, from_finalize=True)
        elif isinstance(control, wire.CloseStream):
            if self.total > self.window_start:
                self._final(self.total, from_finalize=False)
            meta = wire.Metadata(request_id=self.request_id, duration=self.total / 8000, channels=1)
            self._send(_frame(1, wire.encode(meta)) + _frame(8, struct.pack("!H", 1000)))
            self._close()

    def _results(self, start: int, end: int, *, is_final: bool, from_finalize: bool = False) -> None:
        t0, t1 = start / 8000, end / 8000
        word = "window"
        pad = self.server.text_bytes
        text = " ".join([word] * max(1, pad // (len(word) + 1))) if pad else word
        results = wire.Results(
            channel_index=[0, 1], duration=t1 - t0, start=t0, is_final=is_final, from_finalize=from_finalize,
            channel=wire.DGChannel(alternatives=[wire.DGAlternative(
                transcript=text, confidence=1.0,
                words=[wire.DGWord(word=word, start=t0, end=t1, confidence=1.0, punctuated_word=word)],
            )]),
            metadata=wire.DGResultsMetadata(request_id=self.request_id),
        )  # fmt: skip
        self._send(_frame(1, wire.encode(results)))

    def _final(self, end: int, *, from_finalize: bool) -> None:
        start = self.window_start
        sent = time.monotonic()
        self._results(start, end, is_final=True, from_finalize=from_finalize)
        self.server.finals_sent += 1
        if self.key is not None:
            self.server.finals.append(FinalSent(self.key[0], self.key[1], start / 8000, sent))
        self.window_start = end
        self.window_bytes = self.full_window
        self.next_partial = self.partial_bytes

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True


async def _serve(port: int, window: float, partial: float, text_bytes: int, stagger: bool) -> None:
    server = NullRecognizer(window_seconds=window, partial_seconds=partial, text_bytes=text_bytes, stagger=stagger)
    await server.start(port)
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
                server.newest = array.array("d")
                server.messages = 0
                reply = {"ok": True}
            elif cmd == "pad":  # change the transcript size on the fly (fanout's slow-subscriber phase)
                server.text_bytes = int(arg)
                reply = {"ok": True}
            elif cmd == "dump":
                Path(arg + ".lat").write_bytes(server.latencies.tobytes())
                Path(arg + ".newest").write_bytes(server.newest.tobytes())
                Path(arg + ".finals.json").write_bytes(msgspec.json.encode(server.finals))
                reply = {"ok": True, "probes": len(server.latencies), "messages": server.messages}
            else:
                reply = {"error": f"unknown command {cmd!r}"}
            out.write(msgspec.json.encode(reply).decode() + "\n")
            out.flush()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse

    import uvloop

    p = argparse.ArgumentParser(prog="python -m bridge.bench.null_recognizer")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--window", type=float, default=1.0, help="seconds of audio per final")
    p.add_argument("--partial", type=float, default=0.2, help="seconds of audio per partial")
    p.add_argument("--text-bytes", type=int, default=0)
    p.add_argument("--stagger", action="store_true", help="a random phase for each connection's finals")
    args = p.parse_args(argv)
    uvloop.run(_serve(args.port, args.window, args.partial, args.text_bytes, args.stagger))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
