"""Test doubles that ship with the product (like httpx's ``MockTransport``): real servers and clients on
127.0.0.1 that speak the vendors' protocols, for tests, benchmarks and the soak run.

- :class:`ScriptedDeepgramServer` (:mod:`.deepgram`): a Deepgram live server whose words are a pure
  function of the audio, with hooks to drop, reject, stall and garble connections;
- :class:`TwilioStream` (:mod:`.twilio`): a hand-driven Twilio Media Stream that can misbehave.
"""

from __future__ import annotations

from bridge.testing.deepgram import ScriptedConnection, ScriptedDeepgramServer, scripted_finals, window_word
from bridge.testing.twilio import TwilioStream

__all__ = ["ScriptedConnection", "ScriptedDeepgramServer", "TwilioStream", "scripted_finals", "window_word"]
