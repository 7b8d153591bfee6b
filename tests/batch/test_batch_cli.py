"""``bridge batch``: bulk offline transcription with a progress bar, same JSON as the worker."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bridge import transcripts
from bridge.cli import main
from tests.support import SHORT_CALL as CALL


def test_bulk_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CALL, src / "a.wav")
    (src / "broken.wav").write_bytes(b"not audio at all")
    out = tmp_path / "out"
    rc = main(["batch", str(src), "--model", "tiny.en", "--out", str(out), "--threads", "2"])
    assert rc == 1  # one file failed, the other was still transcribed
    t = transcripts.decode_transcript((out / "a.batch.json").read_bytes())
    assert t.model == "tiny.en" and t.channels == 2
    assert {u.track for u in t.utterances} == {"inbound", "outbound"}
    assert {u.speaker for u in t.utterances} == {"Caller", "Agent"}
    assert all(u.words and u.words[0].start <= u.words[-1].end for u in t.utterances)
    assert "password" in t.text("inbound").lower()
    err = capsys.readouterr().err
    assert "2/2 files" in err and "audio h" in err and "ETA" in err
    assert "broken.wav: not a RIFF/WAVE file" in err


def test_no_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch"]) == 2
