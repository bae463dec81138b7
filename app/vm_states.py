"""The helper VM's states in words, shared by the Machine page and the tray (Qt-free)."""

from __future__ import annotations

STATE_WORDS = {
    "stopped": "Stopped",
    "starting": "Starting…",
    "running": "Running",
    "stopping": "Stopping…",
    "paused": "Paused",
    "crashed": "Crashed",
}
# The states in which Start, and Stop, make sense.
START_STATES = frozenset({"stopped", "crashed"})
STOP_STATES = frozenset({"starting", "running", "paused"})


def state_words(state: str) -> str:
    """"running" -> "Running"; an unknown state is shown as it came."""
    return STATE_WORDS.get(state, state)
