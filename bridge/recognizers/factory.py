"""The recognizer client the settings ask for.

The embedded recognizer speaks Deepgram's protocol, so the Deepgram client serves it too.
"""

from __future__ import annotations

from bridge.recognizers.base import Recognizer
from bridge.settings import Settings


def make_recognizer(settings: Settings, url: str) -> Recognizer:
    """The configured recognizer client, talking to ``url`` (or the vendor's default host)."""
    if settings.recognizer == "elevenlabs":
        from bridge.recognizers.elevenlabs.live import ElevenLabsRecognizer

        return ElevenLabsRecognizer(
            url=url or "wss://api.elevenlabs.io",
            api_key=settings.recognizer_api_key,
            model_id=settings.recognizer_model or "scribe_v2_realtime",
        )
    from bridge.recognizers.deepgram.live import DeepgramRecognizer

    default = "wss://api.deepgram.com" if settings.recognizer == "deepgram" else ""
    return DeepgramRecognizer(
        url=url or default,
        api_key=settings.recognizer_api_key,
        model=settings.recognizer_model or ("nova-3" if settings.recognizer == "deepgram" else "tiny.en"),
    )


__all__ = ["make_recognizer"]
