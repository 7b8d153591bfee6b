"""Files shipped inside the package, so an installed bridge (wheel, container) finds them.

``calls/support_call.wav`` is the demo call ``bridge demo`` replays: 60.8 s, two legs (caller,
agent), 8 kHz mu-law; ``calls/support_call.json`` holds its reference turns.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_CALL = "support_call"


def call_path(name: str = DEMO_CALL, suffix: str = ".wav") -> Path:
    """The path of a shipped call file (``.wav`` audio or ``.json`` reference)."""
    return Path(str(resources.files(__package__).joinpath("calls", name + suffix)))


__all__ = ["DEMO_CALL", "call_path"]
