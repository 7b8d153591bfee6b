"""Test doubles that ship with the product (like httpx's ``MockTransport``): real servers and clients on
127.0.0.1 that speak the vendors' protocols, for tests, benchmarks and the soak run.

- :class:`ScriptedDeepgramServer` (:mod:`.deepgram`): a Deepgram live server whose words are a pure
  function of the audio, with Deepgram's ingest limit, close codes and idle timeout, and hooks to
  drop, reject, stall, hang and garble connections;
- :class:`ScriptedScribeServer` (:mod:`.elevenlabs`): the same for ElevenLabs Scribe v2 Realtime,
  every message built from the SDK's payload shapes;
- :class:`TwilioStream` (:mod:`.twilio`): a hand-driven Twilio Media Stream that can misbehave;
- :class:`FakeTwilio` (:mod:`.twilio_api`): Twilio's Streams REST API and simulated calls that stream
  their audio in real time, open the streams the API asks for and report their ends, signed;
- :class:`TwilioRecordingsServer` (:mod:`.twilio_recordings`): Twilio's recording media downloads,
  mono unless ``RequestedChannels=2``.
"""

from __future__ import annotations

from bridge.testing.deepgram import ScriptedConnection, ScriptedDeepgramServer, scripted_finals, window_word
from bridge.testing.elevenlabs import ScribeConnection, ScriptedScribeServer
from bridge.testing.twilio import TwilioStream
from bridge.testing.twilio_api import FakeTwilio, SimulatedCall
from bridge.testing.twilio_recordings import TwilioRecordingsServer

__all__ = [
    "FakeTwilio",
    "ScribeConnection",
    "ScriptedConnection",
    "ScriptedDeepgramServer",
    "ScriptedScribeServer",
    "SimulatedCall",
    "TwilioRecordingsServer",
    "TwilioStream",
    "scripted_finals",
    "window_word",
]
