"""Telephony transcription bridge: Twilio Media Streams in, live and stored transcripts out.

The public surface is small: :class:`bridge.settings.Settings`, :func:`bridge.app.create_app`,
the live event models in :mod:`bridge.events` and the recognizer interface in :mod:`bridge.recognizer`.
"""

__version__ = "0.1.0"
