"""Logs tab against the real engines: known lines, follow, tail, and a log flood."""

from __future__ import annotations

import time
from typing import Any

import pytest
from PySide6.QtCore import QElapsedTimer, QTimer

from tests.gui.details.conftest import session_for
from vm_backend.engine.client import EngineClient

pytestmark = pytest.mark.engine

# Prints three known lines (one on stderr), then one more once /tmp/go exists.
SCRIPT = (
    "echo known-1; echo known-2; echo known-err >&2; "
    "while [ ! -f /tmp/go ]; do sleep 0.1; done; echo followed-line; sleep 600"
)


def texts(details: Any) -> list[str]:
    return [line.text for line in details.logs.panel.model.all_lines()]


def test_known_lines_appear_and_new_ones_follow(
    qtbot: Any, details: Any, engine_client: EngineClient, new_container: Any
) -> None:
    cid = new_container(["sh", "-c", SCRIPT])
    details.show_container(session_for(engine_client), cid)
    assert details.tabs.currentWidget() is details.logs

    expected = {"known-1", "known-2", "known-err"}
    qtbot.waitUntil(lambda: expected <= set(texts(details)), timeout=15_000)
    lines = list(details.logs.panel.model.all_lines())
    err = next(line for line in lines if line.text == "known-err")
    assert err.stream == "stderr"
    assert err.ts and err.ts[:4].isdigit()  # timestamps were asked for
    assert details.logs.running

    engine_client.exec_run(cid, ["touch", "/tmp/go"])
    qtbot.waitUntil(lambda: "followed-line" in texts(details), timeout=15_000)


def test_tail_change_restarts_the_stream(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["sh", "-c", "for i in 1 2 3 4 5 6; do echo n-$i; done; sleep 600"])
    details.show_container(session_for(docker_client), cid)
    qtbot.waitUntil(lambda: "n-6" in texts(details), timeout=15_000)
    assert texts(details)[0] == "n-1"

    details.logs.tail.setValue(2)
    details.logs.restart()  # what the settle timer does once typing stops
    qtbot.waitUntil(lambda: texts(details) == ["n-5", "n-6"], timeout=15_000)

    # "Since the last 5 minutes" includes everything this young container logged.
    details.logs.tail.setValue(0)
    details.logs.since.setCurrentIndex(1)
    qtbot.waitUntil(lambda: len(texts(details)) == 6, timeout=15_000)
    assert details.logs.query().since is not None


def test_flood_keeps_the_gui_responsive(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    """`yes` logs far beyond 50,000 lines/s: the GUI thread keeps ticking, memory bounded."""
    cid = new_docker_container(["yes", "a flood line of moderate length, like a chatty server"])
    details.show_container(session_for(docker_client), cid)

    gaps: list[int] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.elapsed()]

    def tick() -> None:
        now = clock.elapsed()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    started = time.monotonic()
    model = details.logs.panel.model
    try:
        qtbot.waitUntil(lambda: time.monotonic() - started > 4 and model.line_count() > 0,
                        timeout=20_000)
    finally:
        timer.stop()
    assert model.line_count() <= model.capacity
    received = model.line_count() + model.dropped
    assert received > 50_000, f"only {received} lines reached the view in 4 s"
    # The event loop never stalled for long (generous for slow CI machines).
    assert max(gaps[5:]) < 750, f"GUI stalled for {max(gaps[5:])} ms"
