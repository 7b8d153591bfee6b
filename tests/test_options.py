"""Per-call options (``<Parameter>``s), number profiles, and the fallback and catch-up settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.options import (
    MAX_KEYTERM_CHARS,
    CallOptions,
    OptionsError,
    from_parameters,
    load_profiles,
    to_parameters,
)
from bridge.settings import Settings, SettingsError


def test_parameters_become_options_and_others_pass_untouched() -> None:
    params = {
        "CallSid": "CA1", "From": "+1555", "token": "t", "crm_id": "42",
        "recognizer": "ElevenLabs", "language": "es-419", "endpointing": "500", "utterance_end": "1500",
        "keyterms": " Acme Cloud , Zephyr,,", "redact": "PCI,ssn",
    }  # fmt: skip
    assert from_parameters(params) == CallOptions(
        recognizer="elevenlabs", language="es-419", endpointing=500, utterance_end=1500,
        keyterms=("Acme Cloud", "Zephyr"), redact=("pci", "ssn"),
    )  # fmt: skip
    assert from_parameters({"endpointing": "false"}).endpointing is False
    assert from_parameters({"From": "+1555"}) == CallOptions()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"recognizer": "whisper"}, "recognizer: 'whisper' is not one of embedded, deepgram, elevenlabs"),
        ({"language": "english!"}, "language: 'english!' is not a BCP-47 tag"),
        ({"endpointing": "soon"}, "endpointing: 'soon' is not a whole number of milliseconds"),
        ({"endpointing": "true"}, "endpointing: 'true' is not a whole number of milliseconds"),
        ({"endpointing": "5"}, "endpointing: 5 must be milliseconds from 10 to 10000, or false"),
        ({"utterance_end": "300"}, "utterance_end: 300 must be milliseconds from 1000 to 5000"),
        ({"keyterms": "x" * (MAX_KEYTERM_CHARS + 1)}, "keyterms: 'xxxx"),
        ({"keyterms": "a<b"}, "keyterms: 'a<b' must be"),
        ({"keyterms": ",".join(f"k{i}" for i in range(101))}, "keyterms: 101 given, at most 100"),
        ({"redact": "credit cards"}, "redact: 'credit cards' is not a category name"),
    ],
)
def test_bad_parameters_are_refused_with_the_parameter_named(params: dict[str, str], message: str) -> None:
    with pytest.raises(OptionsError) as info:
        from_parameters(params)
    assert str(info.value).startswith(message)


_term = st.text(st.characters(codec="utf-8", exclude_characters=",<>{}[]\\", exclude_categories=("Cc", "Cs")),
                min_size=1, max_size=MAX_KEYTERM_CHARS).map(str.strip).filter(bool)  # fmt: skip


@given(
    st.builds(
        CallOptions,
        recognizer=st.none() | st.sampled_from(["embedded", "deepgram", "elevenlabs"]),
        language=st.none() | st.sampled_from(["en", "es-419", "multi", "pt-BR"]),
        endpointing=st.none() | st.just(False) | st.integers(10, 10000),
        utterance_end=st.none() | st.integers(1000, 5000),
        keyterms=st.lists(_term, max_size=5).map(tuple),
        redact=st.lists(st.sampled_from(["pci", "pii", "phi", "numbers"]), max_size=3).map(tuple),
    )
)
def test_options_survive_the_trip_through_twiml_parameters(options: CallOptions) -> None:
    assert from_parameters(to_parameters(options)) == options


def test_profiles_load_from_json_and_toml(tmp_path: Path) -> None:
    json_file = tmp_path / "profiles.json"
    json_file.write_text('{"+15550100002": {"language": "es", "keyterms": ["Acme"], "endpointing": false}}')
    toml_file = tmp_path / "profiles.toml"
    toml_file.write_text('["+15550100002"]\nlanguage = "es"\nkeyterms = ["Acme"]\nendpointing = false\n')
    expected = {"+15550100002": CallOptions(language="es", keyterms=("Acme",), endpointing=False)}
    assert load_profiles(json_file) == expected == load_profiles(toml_file)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"+1555": {"langauge": "es"}}', "unknown field `langauge`"),
        ('{"+1555": {"utterance_end": 10}}', "utterance_end: 10 must be"),
        ('{"+1555": {"endpointing": true}}', "endpointing: True must be"),
        ('{"+1555": ', "truncated"),
        ('{" ": {}}', "a profile has an empty number"),
        ('{"+1555": {"keyterms": [' + ",".join(['"' + "k" * 49 + '"'] * 10) + "]}}", "longer than a TwiML <Parameter>"),
    ],
)
def test_bad_profiles_are_refused_at_start_up(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "profiles.json"
    path.write_text(text)
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"BRIDGE_NUMBER_PROFILES": str(path)})
    assert "BRIDGE_NUMBER_PROFILES" in str(info.value) and message in str(info.value)


def test_a_missing_profiles_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.from_env({"BRIDGE_NUMBER_PROFILES": str(tmp_path / "nope.json")})


def test_fallback_and_catchup_settings() -> None:
    s = Settings.from_env({
        "BRIDGE_RECOGNIZER": "deepgram", "DEEPGRAM_API_KEY": "dg", "ELEVENLABS_API_KEY": "el",
        "BRIDGE_FALLBACK_RECOGNIZER": "elevenlabs", "BRIDGE_FALLBACK_RECOGNIZER_URL": "wss://el.example/",
        "BRIDGE_FALLBACK_AFTER_SECONDS": "2.5", "BRIDGE_CATCHUP_SECONDS": "30",
    })  # fmt: skip
    assert (s.recognizer, s.recognizer_api_key) == ("deepgram", "dg")
    assert (s.fallback_recognizer, s.fallback_recognizer_url, s.fallback_recognizer_api_key) == (
        "elevenlabs", "wss://el.example", "el")  # fmt: skip
    assert (s.fallback_after_seconds, s.catchup_seconds) == (2.5, 30.0)
    explicit = Settings.from_env({"BRIDGE_FALLBACK_RECOGNIZER": "embedded", "BRIDGE_FALLBACK_RECOGNIZER_URL": "ws://x",
                                  "BRIDGE_FALLBACK_RECOGNIZER_API_KEY": "k"})  # fmt: skip
    assert explicit.fallback_recognizer == "embedded" and explicit.fallback_recognizer_api_key == "k"
    assert Settings.from_env({}).fallback_recognizer is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRIDGE_FALLBACK_RECOGNIZER": "whisper"}, "BRIDGE_FALLBACK_RECOGNIZER='whisper' must be one of"),
        ({"BRIDGE_FALLBACK_RECOGNIZER": "embedded"}, "is the primary recognizer itself"),
        ({"BRIDGE_FALLBACK_AFTER_SECONDS": "0"}, "must be > 0"),
        ({"BRIDGE_CATCHUP_SECONDS": "-1"}, "BRIDGE_CATCHUP_SECONDS >= 0"),
        ({"BRIDGE_CATCHUP_SECONDS": "soon"}, "is not a number"),
    ],
)
def test_bad_fallback_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert message in str(info.value)
