"""Fixtures shared by the relay's unit tests (accounting, spare channels, named pipes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vm_backend.machine.relay import EngineSocketRelay


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "docker.sock"


@pytest.fixture
def relays() -> Iterator[list[EngineSocketRelay]]:
    """Relays a test started: stopped at its end, whatever happened."""
    started: list[EngineSocketRelay] = []
    yield started
    for relay in started:
        relay.stop()
