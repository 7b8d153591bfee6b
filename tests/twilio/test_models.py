"""Every recorded Twilio frame and callback form parses into its typed model, and back."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qsl

import pytest

from bridge.twilio import models as tm
from tests.twilio.conftest import CALL_SID, STREAM_SID, TWILIO_FIXTURES, fixture_text

FRAMES = {
    "connected.json": tm.Connected,
    "start_inbound.json": tm.Start,
    "start_both.json": tm.Start,
    "media_inbound.json": tm.Media,
    "media_outbound.json": tm.Media,
    "dtmf.json": tm.Dtmf,
    "mark.json": tm.Mark,
    "stop.json": tm.Stop,
}


def test_every_fixture_frame_is_covered() -> None:
    assert {p.name for p in TWILIO_FIXTURES.glob("*.json")} == set(FRAMES)


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_fixture_parses_to_typed_model_and_reencodes_identically(name: str) -> None:
    text = fixture_text(name)
    message = tm.parse(text)
    assert type(message) is FRAMES[name]
    assert json.loads(tm.encode(message)) == json.loads(text)


def test_start_fields() -> None:
    start = tm.parse(fixture_text("start_both.json"))
    assert isinstance(start, tm.Start)
    assert start.sequence == 1
    assert start.stream_sid == STREAM_SID
    assert start.call_sid == CALL_SID
    assert start.start.tracks == ["inbound", "outbound"]
    assert start.start.media_format == tm.MediaFormat(encoding="audio/x-mulaw", sample_rate=8000, channels=1)
    assert start.start.custom_parameters["From"] == "+15550100001"
    inbound_only = tm.parse(fixture_text("start_inbound.json"))
    assert isinstance(inbound_only, tm.Start)
    assert inbound_only.start.tracks == ["inbound"]
    assert inbound_only.start.custom_parameters == {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}


def test_media_numeric_strings_have_int_helpers() -> None:
    media = tm.parse(fixture_text("media_inbound.json"))
    assert isinstance(media, tm.Media)
    assert media.media.chunk == "1" and media.media.chunk_number == 1
    assert media.media.timestamp == "5" and media.media.timestamp_ms == 5
    assert media.sequence_number == "3" and media.sequence == 3
    assert len(base64.b64decode(media.media.payload)) == 160
    outbound = tm.parse(fixture_text("media_outbound.json"))
    assert isinstance(outbound, tm.Media) and outbound.media.track == "outbound"


def test_dtmf_mark_stop_fields() -> None:
    dtmf = tm.parse(fixture_text("dtmf.json"))
    assert isinstance(dtmf, tm.Dtmf) and dtmf.dtmf.digit == "1" and dtmf.dtmf.track == "inbound_track"
    mark = tm.parse(fixture_text("mark.json"))
    assert isinstance(mark, tm.Mark) and mark.mark.name == "my label"
    stop = tm.parse(fixture_text("stop.json"))
    assert isinstance(stop, tm.Stop) and stop.stop.call_sid == CALL_SID


def test_unknown_fields_are_ignored() -> None:
    raw = json.loads(fixture_text("mark.json"))
    raw["somethingNew"] = {"x": 1}
    assert isinstance(tm.parse(json.dumps(raw)), tm.Mark)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json", tm.MalformedMessage),
        ("[1, 2]", tm.MalformedMessage),
        ('{"event": 5}', tm.MalformedMessage),
        ('{"event": "media", "sequenceNumber": "2"}', tm.MalformedMessage),
        (
            '{"event": "media", "sequenceNumber": 2, "streamSid": "MZ", '
            '"media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": ""}}',
            tm.MalformedMessage,
        ),
        (
            '{"event": "media", "sequenceNumber": "2", "streamSid": "MZ", '
            '"media": {"track": "sideways", "chunk": "1", "timestamp": "0", "payload": ""}}',
            tm.MalformedMessage,
        ),
        ('{"event": "transcript", "text": "hi"}', tm.UnknownEvent),
    ],
)
def test_parse_errors_are_typed(text: str, error: type[tm.TwilioParseError]) -> None:
    with pytest.raises(error):
        tm.parse(text)


def _form(name: str) -> dict[str, str]:
    return dict(parse_qsl(fixture_text(name), keep_blank_values=True))


def test_call_status_form() -> None:
    form = tm.parse_form(tm.CallStatusForm, _form("call_status_completed.form"))
    assert form.call_sid == CALL_SID
    assert form.call_status == "completed"
    assert form.call_duration == 37
    assert form.sequence_number == 3
    assert form.from_ == "+15550100001" and form.to == "+15550100002"


def test_stream_status_forms() -> None:
    started = tm.parse_form(tm.StreamStatusForm, _form("stream_status_started.form"))
    assert started.stream_event == "stream-started" and started.stream_sid == STREAM_SID
    failed = tm.parse_form(tm.StreamStatusForm, _form("stream_status_error.form"))
    assert failed.stream_event == "stream-error"
    assert failed.stream_error == "Stream - WebSocket - Connection Refused"


def test_recording_status_form() -> None:
    rec = tm.parse_form(tm.RecordingStatusForm, _form("recording_status_completed.form"))
    assert rec.recording_status == "completed"
    assert rec.recording_duration == 36 and rec.recording_channels == 2
    assert rec.recording_sid.startswith("RE")


@pytest.mark.parametrize(
    "form",
    [
        {"AccountSid": "AC1", "CallStatus": "completed"},
        {"AccountSid": "AC1", "CallSid": "CA1", "CallStatus": "exploded"},
        {"AccountSid": "AC1", "CallSid": "CA1", "CallStatus": "completed", "CallDuration": "long"},
    ],
)
def test_bad_call_status_forms_raise_form_error(form: dict[str, str]) -> None:
    with pytest.raises(tm.FormError):
        tm.parse_form(tm.CallStatusForm, form)
