"""The Deepgram live query parameters the embedded recognizer understands, parsed strictly.

Anything unknown or malformed is refused at the upgrade (HTTP 400 with a reason) rather than
silently ignored, so a misconfigured client finds out at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ENCODINGS = {"mulaw": 1, "linear16": 2}
SAMPLE_RATES = (8000, 16000)
#: Accepted for compatibility and ignored (they do not change what this engine produces).
IGNORED = frozenset({"model", "version", "tag", "extra", "mip_opt_out", "numerals"})
#: Deepgram's limits on keyterm prompting (https://developers.deepgram.com/docs/keyterm).
MAX_KEYTERMS = 100
MAX_KEYTERM_CHARS = 100


class ParamError(ValueError):
    """A query parameter is unknown or has a value we cannot honour."""


@dataclass(frozen=True, kw_only=True)
class ListenParams:
    encoding: str = "linear16"
    sample_rate: int = 16000
    channels: int = 1
    interim_results: bool = False
    #: Silence (ms) that ends an utterance with ``speech_final``; ``None`` = endpointing off.
    endpointing_ms: int | None = 10
    utterance_end_ms: int | None = None
    vad_events: bool = False
    language: str = "en"
    punctuate: bool = False
    smart_format: bool = False
    model: str = ""
    #: Words and phrases to favour (``keyterm``, repeated; ``keywords`` of older models, ``word:boost``).
    keyterms: tuple[str, ...] = ()

    @property
    def bytes_per_sample(self) -> int:
        return ENCODINGS[self.encoding]


def _bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v == "true":
        return True
    if v == "false":
        return False
    raise ParamError(f"{name}={raw!r} must be true or false")


def _int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ParamError(f"{name}={raw!r} must be an integer") from None
    if not lo <= value <= hi:
        raise ParamError(f"{name}={value} must be between {lo} and {hi}")
    return value


def _all(query: Mapping[str, str], name: str) -> list[str]:
    getlist = getattr(query, "getlist", None)
    if getlist is not None:
        return [str(v) for v in getlist(name)]
    return [query[name]] if name in query else []


def _keyterms(query: Mapping[str, str]) -> tuple[str, ...]:
    terms = [t.strip() for t in _all(query, "keyterm")]
    for raw in _all(query, "keywords"):
        word, _, boost = raw.rpartition(":") if ":" in raw else (raw, "", "")
        if boost:
            try:
                float(boost)
            except ValueError:
                raise ParamError(f"keywords={raw!r}: the boost after ':' must be a number") from None
        terms.append(word.strip())
    terms = [t for t in dict.fromkeys(terms) if t]
    if len(terms) > MAX_KEYTERMS:
        raise ParamError(f"at most {MAX_KEYTERMS} keyterms")
    if any(len(t) > MAX_KEYTERM_CHARS for t in terms):
        raise ParamError(f"a keyterm is longer than {MAX_KEYTERM_CHARS} characters")
    return tuple(terms)


def parse_params(query: Mapping[str, str]) -> ListenParams:
    """Validate the query string of ``/v1/listen``; raises :class:`ParamError`."""
    unknown = sorted(k for k in query if k not in IGNORED and k not in _FIELDS)
    if unknown:
        raise ParamError(f"unsupported query parameter(s): {', '.join(unknown)}")
    kw: dict[str, object] = {}
    if "encoding" in query:
        enc = query["encoding"].strip().lower()
        if enc not in ENCODINGS:
            raise ParamError(f"encoding={enc!r} is not supported (use {', '.join(ENCODINGS)})")
        kw["encoding"] = enc
    if "sample_rate" in query:
        rate = _int("sample_rate", query["sample_rate"], 1, 192000)
        if rate not in SAMPLE_RATES:
            raise ParamError(f"sample_rate={rate} is not supported (use 8000 or 16000)")
        kw["sample_rate"] = rate
    if "channels" in query and _int("channels", query["channels"], 1, 32) != 1:
        raise ParamError("only channels=1 is supported (open one stream per track)")
    if "multichannel" in query and _bool("multichannel", query["multichannel"]):
        raise ParamError("multichannel=true is not supported (open one stream per track)")
    for name in ("interim_results", "vad_events", "punctuate", "smart_format"):
        if name in query:
            kw[name] = _bool(name, query[name])
    if "diarize" in query and _bool("diarize", query["diarize"]):
        raise ParamError("diarize=true is not supported")
    if "endpointing" in query:
        raw = query["endpointing"].strip().lower()
        if raw == "false":
            kw["endpointing_ms"] = None
        elif raw == "true":
            kw["endpointing_ms"] = 10
        else:
            kw["endpointing_ms"] = _int("endpointing", raw, 0, 60000)
    if "utterance_end_ms" in query:
        kw["utterance_end_ms"] = _int("utterance_end_ms", query["utterance_end_ms"], 0, 60000)
    if "language" in query:
        lang = query["language"].strip()
        if not (lang.lower() == "en" or lang.lower().startswith("en-")):
            raise ParamError(f"language={lang!r} is not supported (English models only)")
        kw["language"] = lang
    if "model" in query:
        kw["model"] = query["model"]
    if kw.get("encoding") == "mulaw" and "sample_rate" not in query:
        kw["sample_rate"] = 8000
    kw["keyterms"] = _keyterms(query)
    return ListenParams(**kw)  # type: ignore[arg-type]


_FIELDS = frozenset(
    {
        "encoding",
        "sample_rate",
        "channels",
        "multichannel",
        "interim_results",
        "vad_events",
        "punctuate",
        "smart_format",
        "diarize",
        "endpointing",
        "utterance_end_ms",
        "language",
        "keyterm",
        "keywords",
    }
)
