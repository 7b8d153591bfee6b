"""The settings of retention, erasure and webhooks are validated at start-up (one clear line)."""

from __future__ import annotations

import pytest

from bridge.settings import Settings, SettingsError


def test_webhook_and_admin_settings_are_read() -> None:
    s = Settings.from_env({"BRIDGE_WEBHOOK_URLS": " https://a.example/hook, http://127.0.0.1:9/x ,",
                           "BRIDGE_WEBHOOK_SECRET": "k", "BRIDGE_ADMIN_TOKEN": " t ",
                           "BRIDGE_WEBHOOK_MAX_ATTEMPTS": "3", "BRIDGE_SWEEP_INTERVAL_SECONDS": "60"})  # fmt: skip
    assert s.webhook_urls == ("https://a.example/hook", "http://127.0.0.1:9/x")
    assert (s.admin_token, s.webhook_max_attempts, s.sweep_interval_seconds) == ("t", 3, 60.0)
    assert Settings.from_env({}).webhook_urls == () and Settings.from_env({}).admin_token == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRIDGE_WEBHOOK_URLS": "https://a.example/hook"}, "needs BRIDGE_WEBHOOK_SECRET"),
        ({"BRIDGE_WEBHOOK_URLS": "ftp://a.example/x", "BRIDGE_WEBHOOK_SECRET": "k"}, "not an absolute http"),
        ({"BRIDGE_WEBHOOK_URLS": "a.example/hook", "BRIDGE_WEBHOOK_SECRET": "k"}, "not an absolute http"),
        ({"BRIDGE_WEBHOOK_MAX_ATTEMPTS": "0"}, "BRIDGE_WEBHOOK_MAX_ATTEMPTS=0 must be at least 1"),
        ({"BRIDGE_WEBHOOK_BACKOFF_SECONDS": "0"}, "BRIDGE_WEBHOOK_BACKOFF_SECONDS"),
        ({"BRIDGE_SWEEP_INTERVAL_SECONDS": "-1"}, "BRIDGE_SWEEP_INTERVAL_SECONDS"),
    ],
)
def test_unusable_values_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
