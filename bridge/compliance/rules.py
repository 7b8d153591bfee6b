"""The compliance rules file: one file (TOML or YAML) of required phrases, forbidden phrases and alerts.

A rule is one of three kinds:

- ``required``: a phrase must be said (on ``track``, within the first ``within_seconds``), or the call
  fails the rule, e.g. the recording disclosure;
- ``forbidden``: a phrase must never be said, e.g. "guarantee";
- ``alert``: a phrase is worth a human's attention now ("supervisor"); alerts run on live finals too
  and never fail a call.

The file is decoded into typed structs and checked once at start-up (:func:`load`); a bad file stops
the bridge with one line saying what is wrong, never a call.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path
from typing import Literal

import msgspec

RuleKind = Literal["required", "forbidden", "alert"]
RuleTrack = Literal["inbound", "outbound", "any"]

#: The shipped default rules (package data).
DEFAULT_RULES = "default_rules.toml"
#: What a rule id may look like: it becomes a metric label and a webhook field.
_RULE_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: A phrase's word: letters, digits and apostrophes, optionally ending in ``*`` (a stem), or ``...``.
_WORD = re.compile(r"[\w'$%]+\*?|\.\.\.")
MAX_RULES, MAX_PHRASES = 200, 200
#: A phrase's words and gaps at most (matching tries every gap length: it must stay cheap on the call path).
MAX_PHRASE_WORDS, MAX_GAPS = 16, 3


class RulesError(ValueError):
    """The rules file cannot be used (unreadable, malformed, or a rule that cannot match)."""


class Rule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One rule. ``phrases`` are alternatives: any one of them matching is a match."""

    id: str
    kind: RuleKind
    phrases: list[str]
    description: str = ""
    #: Whose words are checked: ``inbound`` (the caller), ``outbound`` (the agent) or ``any``.
    track: RuleTrack = "any"
    #: Only words starting within this many seconds of the call's start count (``None``: the whole call).
    within_seconds: float | None = None
    #: Per-word similarity (0-100) a recognised word needs to count as a phrase word; ``None``: the file's.
    fuzzy: float | None = None
    #: How many other words ``...`` in a phrase may stand for.
    gap: int = 3

    def applies_to(self, track: str) -> bool:
        return self.track == "any" or self.track == track


class RuleSet(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The whole rules file."""

    rules: list[Rule]
    #: Default per-word similarity (0-100: 100 x (1 - edits / longer length)); 100 means exact words only.
    fuzzy: float = 85.0
    #: Words shorter than this are never matched fuzzily (short words are too alike: "can"/"cant").
    min_fuzzy_length: int = 5

    def of_kind(self, *kinds: RuleKind) -> list[Rule]:
        return [r for r in self.rules if r.kind in kinds]

    def threshold(self, rule: Rule) -> float:
        return self.fuzzy if rule.fuzzy is None else rule.fuzzy


def _check(rules: RuleSet) -> RuleSet:
    if not rules.rules:
        raise RulesError("no rules")
    if len(rules.rules) > MAX_RULES:
        raise RulesError(f"more than {MAX_RULES} rules")
    seen: set[str] = set()
    for rule in rules.rules:
        if _RULE_ID.fullmatch(rule.id) is None:
            raise RulesError(f"rule id {rule.id[:70]!r} must be lower-case letters, digits and _ (a metric label)")
        if rule.id in seen:
            raise RulesError(f"rule id {rule.id!r} appears twice")
        seen.add(rule.id)
        if not rule.phrases or len(rule.phrases) > MAX_PHRASES:
            raise RulesError(f"rule {rule.id}: needs 1 to {MAX_PHRASES} phrases")
        for phrase in rule.phrases:
            words = _WORD.findall(phrase.lower())
            if not [w for w in words if w != "..."] or words[0] == "..." or words[-1] == "...":
                raise RulesError(f"rule {rule.id}: phrase {phrase[:70]!r} has no word, or starts or ends with ...")
            if len(words) > MAX_PHRASE_WORDS or words.count("...") > MAX_GAPS:
                raise RulesError(f"rule {rule.id}: phrase {phrase[:70]!r} has more than {MAX_PHRASE_WORDS} words "
                                 f"or {MAX_GAPS} gaps")  # fmt: skip
        for value in (rule.fuzzy, rules.fuzzy):
            if value is not None and not 50 <= value <= 100:
                raise RulesError(f"rule {rule.id}: fuzzy must be between 50 and 100")
        if rule.within_seconds is not None and rule.within_seconds <= 0:
            raise RulesError(f"rule {rule.id}: within_seconds must be positive")
        if not 0 <= rule.gap <= 10:
            raise RulesError(f"rule {rule.id}: gap must be between 0 and 10")
        if rule.kind == "alert" and rule.within_seconds is not None:
            raise RulesError(f"rule {rule.id}: an alert has no window (within_seconds)")
    return rules


def parse(data: bytes, *, yaml: bool = False, name: str = "rules") -> RuleSet:
    """Decode and check a rules document; raises :class:`RulesError` saying what is wrong."""
    try:
        if yaml:
            rules = msgspec.yaml.decode(data, type=RuleSet)
        else:
            rules = msgspec.toml.decode(data, type=RuleSet)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise RulesError(f"{name}: {exc}") from None
    except ImportError as exc:  # YAML without PyYAML installed
        raise RulesError(f"{name}: {exc}") from None
    try:
        return _check(rules)
    except RulesError as exc:
        raise RulesError(f"{name}: {exc}") from None


def load(path: Path) -> RuleSet:
    """``BRIDGE_COMPLIANCE_RULES``: a ``.toml``, ``.yaml`` or ``.yml`` file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RulesError(f"cannot read {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise RulesError(f"{path}: a rules file is .toml, .yaml or .yml")
    return parse(data, yaml=suffix != ".toml", name=str(path))


@functools.cache
def default_rules() -> RuleSet:
    """The rules shipped with the bridge (``bridge/compliance/default_rules.toml``)."""
    data = resources.files(__package__).joinpath(DEFAULT_RULES).read_bytes()
    return parse(data, name=DEFAULT_RULES)


__all__ = ["DEFAULT_RULES", "Rule", "RuleKind", "RuleSet", "RuleTrack", "RulesError", "default_rules", "load", "parse"]
