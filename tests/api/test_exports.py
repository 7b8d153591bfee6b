"""Transcript exports: WebVTT and SubRip of the live and the batch transcript, speaker-labelled, with
each format's timestamps, escaped text, and a 400 for an unknown format."""

from __future__ import annotations

import time

import httpx

from bridge import events, transcripts
from bridge.api.formats import Cue, srt, timestamp, vtt
from bridge.store import Store
from bridge.transcripts import CallQuality
from tests.compliance.support import transcript
from tests.support.served import Serve

CALL = "CA000000000000000000000000000000e1"


def test_timestamps_of_each_format() -> None:
    assert timestamp(0.0) == "00:00:00.000"
    assert timestamp(3.5) == "00:00:03.500"
    assert timestamp(3661.0456) == "01:01:01.046"
    assert timestamp(59.9996) == "00:01:00.000"
    assert timestamp(-1.0) == "00:00:00.000"
    assert timestamp(125.25, ",") == "00:02:05,250"


def test_vtt_escapes_markup_and_never_ends_a_cue_early() -> None:
    body = vtt([Cue("inbound", 1.0, 1.0, "a <b>bold</b> --> move &\n\nmore")])
    cue = "<v Caller>a &lt;b&gt;bold&lt;/b&gt; --&gt; move &amp; more"
    assert body == f"WEBVTT\n\n1\n00:00:01.000 --> 00:00:01.001\n{cue}\n\n"
    assert srt([Cue("outbound", 0.0, 0.0, "   ")]) == ""  # an empty cue is left out


async def test_live_and_batch_transcripts_as_vtt_and_srt(store: Store, served: Serve) -> None:
    await store.call_started(CALL, stream_sid="MZe1", tracks=["inbound", "outbound"], started_at=time.time())
    for track, start, end, text in [("outbound", 0.5, 3.25, "Customer support, how can I help?"),
                                    ("inbound", 4.6, 7.69, "I forgot my password.")]:  # fmt: skip
        await store.add_final(events.Final(call_sid=CALL, id=events.final_id(track, start), track=track,  # type: ignore[arg-type]
                                           start=start, end=end, text=text))  # fmt: skip
    batch = transcript(CALL, [["outbound", 0.48, 3.3, "Customer support, how can I help?"],
                              ["inbound", 3661.5, 3663.0, "I forgot my password."]])  # fmt: skip
    quality = CallQuality(call_sid=CALL, wer=0.0, tracks=[], flagged=False, threshold=0.35, live_finals=2)
    async with served() as srv, httpx.AsyncClient(base_url=srv.http) as client:
        r = await client.get(f"/calls/{CALL}/transcript", params={"format": "vtt"})
        assert r.status_code == 200 and r.headers["content-type"] == "text/vtt; charset=utf-8"
        assert r.text == (
            "WEBVTT\n\n"
            "1\n00:00:00.500 --> 00:00:03.250\n<v Agent>Customer support, how can I help?\n\n"
            "2\n00:00:04.600 --> 00:00:07.690\n<v Caller>I forgot my password.\n\n"
        )
        r = await client.get(f"/calls/{CALL}/transcript", params={"format": "srt"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-subrip")
        assert r.headers["content-disposition"] == f'inline; filename="{CALL}.srt"'
        assert r.text == (
            "1\n00:00:00,500 --> 00:00:03,250\nAgent: Customer support, how can I help?\n\n"
            "2\n00:00:04,600 --> 00:00:07,690\nCaller: I forgot my password.\n\n"
        )
        batch_vtt = {"format": "vtt", "source": "batch"}
        assert (await client.get(f"/calls/{CALL}/transcript", params=batch_vtt)).status_code == 404
        await store.save_batch_result(batch, quality)
        r = await client.get(f"/calls/{CALL}/transcript", params={"format": "srt", "source": "batch"})
        assert r.text.splitlines()[1] == "00:00:00,480 --> 00:00:03,300"
        assert r.text.splitlines()[5:7] == ["01:01:01,500 --> 01:01:03,000", "Caller: I forgot my password."]
        r = await client.get(f"/calls/{CALL}/transcript", params={"format": "vtt", "source": "batch"})
        assert r.text.startswith("WEBVTT\n\n1\n00:00:00.480 --> 00:00:03.300\n<v Agent>Customer support")
        # The formats that were there before keep working.
        assert (await client.get(f"/calls/{CALL}/transcript", params={"format": "text"})).text.startswith("Agent:")
        r = await client.get(f"/calls/{CALL}/transcript", params={"format": "json", "source": "batch"})
        assert transcripts.decode_transcript(r.content) == batch
        r = await client.get(f"/calls/{CALL}/transcript", params={"format": "docx"})
        assert r.status_code == 400 and "vtt or srt" in r.json()["error"]
