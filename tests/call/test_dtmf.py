"""A caller keying in a card number on the keypad: the digits reach no log line."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer
from bridge.testing.twilio import TwilioStream
from bridge.twilio import models as tm

TOKEN = "dtmf-token"


async def test_dtmf_digits_are_never_logged(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: every DTMF digit was logged at info, so a card keyed in was in the logs digit by digit."""
    caplog.set_level(logging.DEBUG)
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=scripted.url,
    )  # fmt: skip
    async with running_bridge(settings) as (_app, http):
        url = http.replace("http://", "ws://") + "/twilio/media"
        async with TwilioStream(url, "CA" + "d7" * 16, auth_token=TOKEN) as stream:
            for digit in "4111111111111111":
                await stream._send(tm.Dtmf(sequence_number=stream._next(), stream_sid=stream.stream_sid,
                                           dtmf=tm.DtmfInfo(digit=digit)))  # fmt: skip
            await stream.media("inbound", 0, b"\xff" * 160)
            await stream.stop()
    # The bridge's own loggers (it keeps the websockets library's frame dumps at warning: bridge/logs.py).
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("bridge")]
    dtmf = [line for line in ours if "dtmf" in line.lower()]
    assert len(dtmf) == 16 and not any(c.isdigit() for line in dtmf for c in line)
    assert not any("1111" in line for line in ours)
