"""Fixtures shared by the machine unit tests: the relay's (accounting, spare channels,
named pipes) and an asyncio loop thread for QMP (over a socket and over a pipe)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vm_backend.machine.loopthread import EventLoopThread
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


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    """An asyncio loop on a thread of its own, as berthd's QMP runs; stopped after."""
    thread = EventLoopThread("test-qmp")
    yield thread
    thread.stop()
