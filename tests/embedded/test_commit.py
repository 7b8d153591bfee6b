"""A manual commit on the embedded recognizer: ``Finalize`` mid-sentence closes the open segment where
the audio stopped and decodes it as a final now; the rest of the sentence is a new segment after it."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from bridge.recognizers.deepgram import wire as dg
from tests.embedded.test_protocol import TELEPHONY, clip_audio, drain, send_fast

pytestmark = pytest.mark.timeout(60)


async def test_finalize_mid_sentence_closes_the_segment_where_the_audio_stopped(recognizer_url: str) -> None:
    audio = clip_audio(1)  # "Thank you for calling customer support, my name is David."
    cut = len(audio) // 2 // 160 * 160  # mid-sentence, on a 20 ms frame
    async with connect(f"{recognizer_url}/v1/listen?{TELEPHONY}&endpointing=2000") as ws:
        await send_fast(ws, audio[:cut])
        await ws.send(dg.encode(dg.Finalize()).decode())
        committed: dg.Results | None = None
        while committed is None:
            msg = dg.decode_server(await asyncio.wait_for(ws.recv(), 30))
            if isinstance(msg, dg.Results) and msg.is_final:
                committed = msg
        await send_fast(ws, audio[cut:])
        await ws.send(dg.encode(dg.CloseStream()).decode())
        rest = [m for m in await drain(ws) if isinstance(m, dg.Results) and m.is_final]
    assert committed.from_finalize
    assert round(committed.start + committed.duration, 3) == cut / 8000  # closed where the audio stopped
    assert "thank" in committed.channel.alternatives[0].transcript.lower()
    later = [m for m in rest if m.channel.alternatives[0].transcript]
    assert later and all(m.start >= cut / 8000 for m in later)  # the rest is a segment of its own
    assert "david" in " ".join(m.channel.alternatives[0].transcript for m in later).lower()
