"""EngineSession's batching: the first change after a quiet spell goes out at once, the
changes that follow it are gathered into the next batch."""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import QCoreApplication

from app.session import EngineSession
from tests.gui.conftest import endpoint_for
from vm_backend.engine.monitor import Diff

pytestmark = pytest.mark.engine


def test_first_change_is_flushed_alone_then_the_burst_in_one_batch(
    qtbot: Any, docker_url: str
) -> None:
    session = EngineSession(endpoint_for(docker_url))  # not started: diffs come from the test
    batches: list[list[Diff[Any]]] = []
    session.diffs.connect(lambda diffs: batches.append(list(diffs)))
    try:
        first = Diff("container", removed=("a",))
        session.on_diff(first)
        # Out within a few turns of the event loop, not after a BATCH_MS timer.
        for _ in range(5):
            QCoreApplication.processEvents()
        assert batches == [[first]]

        burst = [Diff("container", removed=(str(i),)) for i in range(50)]
        for diff in burst:
            session.on_diff(diff)
        qtbot.waitUntil(lambda: len(batches) == 2, timeout=5_000)
        assert batches[1] == burst
        qtbot.wait(300)  # nothing else is pending: no further signal
        assert len(batches) == 2
    finally:
        session.stop()
        session.deleteLater()
