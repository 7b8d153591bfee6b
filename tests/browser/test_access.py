"""Who may capture: the capture scope of tokens, ``bridge token --capture``, the per-address rate
limit's sliding minute, and the capture settings' validation at start-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bridge.browser.access import MAX_CLIENTS, RateLimiter
from bridge.live import auth
from bridge.settings import Settings, SettingsError

SECRET = "access-secret"


def test_bridge_token_capture_mints_a_token_with_the_capture_scope_and_no_calls() -> None:
    env = {**os.environ, "BRIDGE_SUBSCRIBER_SECRET": SECRET}
    out = subprocess.run([sys.executable, "-m", "bridge.cli", "token", "--capture", "--ttl", "60"], env=env,
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    claims = auth.parse(SECRET, out.stdout.strip())
    assert (claims.scope, claims.calls) == ("capture", [])
    assert not auth.verify(SECRET, out.stdout.strip(), "CA" + "0" * 32)  # reads nothing


def test_subscriber_tokens_keep_their_bytes() -> None:
    token = auth.mint(SECRET, ["*"], 60, now=1000.0)
    assert "scope" not in auth._unb64(token.split(".")[1]).decode()
    assert auth.parse(SECRET, token, now=1001.0).scope == "subscribe"


def test_the_rate_limit_is_a_sliding_minute_per_address() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.admit("a") == 0 and limiter.admit("a") == 0
    assert limiter.admit("a") == 60.0  # the oldest attempt leaves the window in a minute
    assert limiter.admit("b") == 0  # another address has its own
    now[0] = 30.0
    assert limiter.admit("a") == 30.0  # refusals do not count against the window
    now[0] = 60.0  # both attempts of second 0 have left the window
    assert limiter.admit("a") == 0 and limiter.admit("a") == 0 and limiter.admit("a") == 60.0


def test_the_rate_limiter_remembers_a_bounded_number_of_addresses() -> None:
    limiter = RateLimiter(1, clock=lambda: 0.0)
    for i in range(MAX_CLIENTS + 10):
        limiter.admit(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._seen) == MAX_CLIENTS
    assert limiter.admit("10.0.0.0") == 0  # forgotten first: the oldest


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"BRIDGE_CAPTURE_MAX_SECONDS": "0"}, "BRIDGE_CAPTURE_MAX_SECONDS=0.0 must be a positive number of seconds"),
        ({"BRIDGE_CAPTURE_MAX_SECONDS": "soon"}, "BRIDGE_CAPTURE_MAX_SECONDS='soon' is not a number"),
        ({"BRIDGE_CAPTURE_PER_MINUTE": "0"}, "BRIDGE_CAPTURE_PER_MINUTE=0 must be at least 1"),
    ],
)
def test_bad_capture_settings_are_refused_at_start_up(env: dict[str, str], error: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == error


def test_capture_settings_are_read_from_the_environment() -> None:
    s = Settings.from_env({"BRIDGE_CAPTURE_MAX_SECONDS": "90", "BRIDGE_CAPTURE_PER_MINUTE": "3"})
    assert (s.capture_max_seconds, s.capture_per_minute) == (90.0, 3)
