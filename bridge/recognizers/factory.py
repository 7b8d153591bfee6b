"""The recognizer clients the settings ask for: the primary, and the fallback if any.

The embedded recognizer speaks Deepgram's protocol, so the Deepgram client serves it too.
"""

from __future__ import annotations

from bridge.recognizers.base import Recognizer
from bridge.settings import RecognizerKind, Settings

#: Each vendor's streaming host, when no URL is configured.
DEFAULT_URLS: dict[str, str] = {"deepgram": "wss://api.deepgram.com", "elevenlabs": "wss://api.elevenlabs.io"}


def recognizer_endpoint(kind: RecognizerKind, url: str) -> str:
    """The base URL a ``kind`` client talks to: ``url``, or the vendor's default host."""
    return url or DEFAULT_URLS.get(kind, "")


#: ``BRIDGE_REDACT`` kinds -> Deepgram's ``redact`` values (https://developers.deepgram.com/docs/redaction).
DEEPGRAM_REDACT = {"card": "pci", "ssn": "ssn"}


def make_recognizer(
    kind: RecognizerKind, url: str, *, api_key: str = "", model: str = "", redact: tuple[str, ...] = ()
) -> Recognizer:
    """A ``kind`` client talking to ``url`` (or the vendor's default host); Deepgram is also asked to
    redact ``redact`` (the bridge redacts anyway: :mod:`bridge.redact`)."""
    if kind == "elevenlabs":
        from bridge.recognizers.elevenlabs.live import ElevenLabsRecognizer

        return ElevenLabsRecognizer(url=recognizer_endpoint(kind, url), api_key=api_key,
                                    model_id=model or "scribe_v2_realtime")  # fmt: skip
    from bridge.recognizers.deepgram.live import DeepgramRecognizer

    if kind == "deepgram":
        return DeepgramRecognizer(url=recognizer_endpoint(kind, url), api_key=api_key, model=model or "nova-3",
                                  redact=tuple(DEEPGRAM_REDACT[k] for k in redact if k in DEEPGRAM_REDACT))  # fmt: skip
    # Ours: no vendor ingest limit to respect, and it takes keyterms as Deepgram's nova-3 does.
    return DeepgramRecognizer(url=url, api_key=api_key, model=model or "tiny.en", name="embedded",
                              max_ingest_rate=None, keyterms_as="keyterm")  # fmt: skip


def primary_recognizer(settings: Settings, url: str) -> Recognizer:
    """The configured recognizer (``url``: the embedded one's when it runs in-process)."""
    return make_recognizer(settings.recognizer, url, api_key=settings.recognizer_api_key,
                           model=settings.recognizer_model, redact=settings.redact)  # fmt: skip


def fallback_recognizer(settings: Settings, url: str) -> Recognizer | None:
    """``BRIDGE_FALLBACK_RECOGNIZER`` with the vendor's default model, or ``None``."""
    if settings.fallback_recognizer is None:
        return None
    return make_recognizer(settings.fallback_recognizer, url, api_key=settings.fallback_recognizer_api_key,
                           redact=settings.redact)  # fmt: skip


__all__ = [
    "DEEPGRAM_REDACT", "DEFAULT_URLS", "fallback_recognizer", "make_recognizer", "primary_recognizer",
    "recognizer_endpoint",
]
