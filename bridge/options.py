"""Per-call recognizer options: what one call may set, validated once when its media stream starts,
and the per-number defaults (``BRIDGE_NUMBER_PROFILES``) the voice webhook turns into them.

Twilio forbids query strings on stream URLs, so options travel as TwiML ``<Parameter>``s
(https://www.twilio.com/docs/voice/twiml/stream#custom-parameters) and arrive in the Media Streams
``start`` message's ``customParameters``. Only the names in :data:`PARAMETERS` are options; every
other parameter (``From``, ``To``, the stream token, the customer's own) passes untouched.

================  =============================================================================
parameter         value
================  =============================================================================
``recognizer``    which configured recognizer serves the call (the other one is its fallback)
``language``      BCP-47 tag (``en``, ``es-419``) or ``multi``
``endpointing``   milliseconds of silence that end an utterance (10-10000), or ``false``
``utterance_end`` milliseconds for the utterance-end event (1000-5000)
``keyterms``      comma-separated words or phrases to bias recognition toward
``redact``        comma-separated redaction categories (``pci``, ``ssn``, ``pii``…) added to ``BRIDGE_REDACT``
                  (bridge/redact/; unknown ones carried and ignored)
================  =============================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import msgspec

RECOGNIZERS = ("embedded", "deepgram", "elevenlabs")
PARAMETERS = ("recognizer", "language", "endpointing", "utterance_end", "keyterms", "redact")
#: Twilio: "The combined length of each <Parameter> name and value attributes must be under 500 characters."
PARAMETER_LIMIT = 499
MAX_KEYTERMS, MAX_KEYTERM_CHARS = 100, 50
MAX_REDACT = 20

_LANGUAGE = re.compile(r"multi|[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_REDACT = re.compile(r"[a-z][a-z0-9_]{1,39}")
#: Not in keyterms: the list separator, and what vendors refuse (ElevenLabs: ``<>{}[]\``).
_KEYTERM_FORBIDDEN = re.compile(r"[,<>{}\[\]\\\x00-\x1f\x7f]")


class OptionsError(ValueError):
    """A per-call option (or a number profile) has a value the bridge cannot use."""


class CallOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Options of one call; ``None``/empty means the bridge's default (:mod:`bridge.settings`)."""

    recognizer: str | None = None
    language: str | None = None
    #: Milliseconds of silence that end an utterance, or ``False`` to turn endpointing off.
    endpointing: int | bool | None = None
    utterance_end: int | None = None
    keyterms: tuple[str, ...] = ()
    #: Redaction categories: those bridge/redact knows add to ``BRIDGE_REDACT``'s kinds for this call.
    redact: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.recognizer is not None and self.recognizer not in RECOGNIZERS:
            raise ValueError(f"recognizer: {self.recognizer!r} is not one of {', '.join(RECOGNIZERS)}")
        if self.language is not None and not _LANGUAGE.fullmatch(self.language):
            raise ValueError(f"language: {self.language!r} is not a BCP-47 tag (en, es-419) or multi")
        e = self.endpointing
        if e is True or (type(e) is int and not 10 <= e <= 10000):
            raise ValueError(f"endpointing: {e!r} must be milliseconds from 10 to 10000, or false")
        if self.utterance_end is not None and not 1000 <= self.utterance_end <= 5000:
            raise ValueError(f"utterance_end: {self.utterance_end} must be milliseconds from 1000 to 5000")
        if len(self.keyterms) > MAX_KEYTERMS:
            raise ValueError(f"keyterms: {len(self.keyterms)} given, at most {MAX_KEYTERMS}")
        for term in self.keyterms:
            if not term.strip() or len(term) > MAX_KEYTERM_CHARS or _KEYTERM_FORBIDDEN.search(term):
                limit = MAX_KEYTERM_CHARS
                raise ValueError(f"keyterms: {term!r} must be 1-{limit} characters without , < > {{ }} [ ] \\")
        if len(self.redact) > MAX_REDACT:
            raise ValueError(f"redact: {len(self.redact)} categories given, at most {MAX_REDACT}")
        for category in self.redact:
            if not _REDACT.fullmatch(category):
                raise ValueError(f"redact: {category!r} is not a category name (pci, pii, phi, numbers…)")


def _int(name: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise OptionsError(f"{name}: {raw!r} is not a whole number of milliseconds") from None


def _items(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def from_parameters(params: Mapping[str, str]) -> CallOptions:
    """The options among a stream's custom parameters; :class:`OptionsError` names the bad one."""
    kw: dict[str, object] = {}
    if "recognizer" in params:
        kw["recognizer"] = params["recognizer"].strip().lower()
    if "language" in params:
        kw["language"] = params["language"].strip()
    if "endpointing" in params:
        raw = params["endpointing"].strip().lower()
        kw["endpointing"] = False if raw == "false" else _int("endpointing", raw)
    if "utterance_end" in params:
        kw["utterance_end"] = _int("utterance_end", params["utterance_end"])
    if "keyterms" in params:
        kw["keyterms"] = _items(params["keyterms"])
    if "redact" in params:
        kw["redact"] = tuple(item.lower() for item in _items(params["redact"]))
    try:
        return CallOptions(**kw)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise OptionsError(str(exc)) from None


def to_parameters(options: CallOptions) -> dict[str, str]:
    """The ``<Parameter>``s that carry ``options`` (the inverse of :func:`from_parameters`)."""
    out: dict[str, str] = {}
    if options.recognizer is not None:
        out["recognizer"] = options.recognizer
    if options.language is not None:
        out["language"] = options.language
    if options.endpointing is not None:
        out["endpointing"] = "false" if options.endpointing is False else str(options.endpointing)
    if options.utterance_end is not None:
        out["utterance_end"] = str(options.utterance_end)
    if options.keyterms:
        out["keyterms"] = ",".join(options.keyterms)
    if options.redact:
        out["redact"] = ",".join(options.redact)
    return out


def load_profiles(path: Path) -> dict[str, CallOptions]:
    """``BRIDGE_NUMBER_PROFILES``: called number (the ``To`` of the voice webhook) -> its calls' options,
    as JSON or TOML (by extension). Unknown fields, bad values and values too long for a TwiML
    ``<Parameter>`` are refused here, at start-up, not on a live call."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OptionsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            profiles = msgspec.toml.decode(data, type=dict[str, CallOptions])
        else:
            profiles = msgspec.json.decode(data, type=dict[str, CallOptions])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise OptionsError(f"{path}: {exc}") from None
    for number, options in profiles.items():
        if not number.strip():
            raise OptionsError(f"{path}: a profile has an empty number")
        for name, value in to_parameters(options).items():
            if len(name) + len(value) > PARAMETER_LIMIT:
                raise OptionsError(f"{path}: {number}: {name} is longer than a TwiML <Parameter> may be")
    return profiles


__all__ = [
    "PARAMETERS",
    "PARAMETER_LIMIT",
    "RECOGNIZERS",
    "CallOptions",
    "OptionsError",
    "from_parameters",
    "load_profiles",
    "to_parameters",
]
