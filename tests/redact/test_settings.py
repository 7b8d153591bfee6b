"""``BRIDGE_REDACT`` and ``BRIDGE_KEEP_UNREDACTED``: card data on by default, validated at start-up."""

from __future__ import annotations

import pytest

from bridge.settings import Settings, SettingsError


def test_card_data_is_redacted_by_default_and_kinds_are_validated() -> None:
    assert Settings.from_env({}).redact == ("card",)
    assert Settings.from_env({"BRIDGE_REDACT": "PCI, ssn"}).redact == ("card", "ssn")
    with pytest.raises(SettingsError, match="unknown kind 'phone'"):
        Settings.from_env({"BRIDGE_REDACT": "card,phone"})


def test_turning_redaction_off_or_keeping_originals_is_warned_about() -> None:
    off = Settings.from_env({"BRIDGE_REDACT": "none", "BRIDGE_KEEP_UNREDACTED": "true"})
    assert off.redact == () and off.keep_unredacted
    warnings = " ".join(off.startup_warnings())
    assert "BRIDGE_REDACT=none" in warnings and "BRIDGE_KEEP_UNREDACTED" in warnings
    assert not any("REDACT" in w for w in Settings.from_env({}).startup_warnings())


def test_a_calls_redact_parameter_adds_kinds_and_never_removes_them() -> None:
    from bridge.redact.detector import kinds_for

    assert kinds_for("PCI, ssn") == {"card", "ssn"}
    assert kinds_for(("pii", "phi", "none")) == {"ssn"}  # unknown categories are carried, not applied
    assert kinds_for("") == frozenset()
