"""Logs tab against the real engines: known lines, follow, tail, and a log flood."""

from __future__ import annotations

import time
from typing import Any

import pytest
from PySide6.QtCore import QDateTime, QElapsedTimer, QTimer

from tests.gui.details.conftest import STALL_MS, session_for
from vm_backend.engine.client import EngineClient
from vm_backend.engine.models import LogEntry

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

    # A chosen time: the picker appears; an hour back includes everything.
    details.logs.since.setCurrentIndex(details.logs.since.count() - 1)
    assert details.logs.since_time.isVisibleTo(details.logs)
    qtbot.waitUntil(lambda: texts(details) == ["n-5", "n-6"], timeout=15_000)
    details.logs.since_time.setDateTime(QDateTime.currentDateTime().addSecs(3600))
    details.logs.restart()
    qtbot.waitUntil(lambda: not details.logs.panel.model.line_count(), timeout=15_000)

    # "Since the last 5 minutes" includes everything this young container logged.
    details.logs.tail.setValue(0)
    details.logs.since.setCurrentIndex(1)
    qtbot.waitUntil(lambda: len(texts(details)) == 6, timeout=15_000)
    assert details.logs.query().since is not None


class GapMeter:
    """Ticks every 10 ms on the GUI thread and records the longest gap between ticks."""

    def __init__(self) -> None:
        self.gaps: list[int] = []
        self._clock = QElapsedTimer()
        self._clock.start()
        self._last = 0
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    def _tick(self) -> None:
        now = self._clock.elapsed()
        self.gaps.append(now - self._last)
        self._last = now

    def stop(self) -> int:
        self._timer.stop()
        return max(self.gaps[3:], default=0)


def test_flood_from_a_real_container_keeps_the_gui_responsive(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    """`yes` logs as fast as the engine lets it: the GUI keeps ticking, memory bounded.

    How many lines arrive depends on the engine's log driver and the machine's load (a
    loaded CI host managed ~12,000 lines/s through dockerd's json-file reader); the
    50,000 lines/s case without that ceiling is the fake-stream test below.
    """
    cid = new_docker_container(["yes", "a flood line of moderate length, like a chatty server"])
    details.show_container(session_for(docker_client), cid)
    meter = GapMeter()
    started = time.monotonic()
    model = details.logs.panel.model
    try:
        qtbot.waitUntil(
            lambda: time.monotonic() - started > 4 and model.line_count() > 1000, timeout=20_000
        )
    finally:
        worst = meter.stop()
    assert model.line_count() <= model.capacity
    # The event loop never stalled for long (generous for loaded CI machines).
    assert worst < STALL_MS, f"GUI stalled for {worst} ms"


class FloodStream:
    """Stands in for client.logs(): yields ``total`` lines as fast as Python can."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.closed = False

    def __iter__(self) -> Any:
        for i in range(self.total):
            if self.closed:
                return
            yield LogEntry("stdout", f"flood line {i}", "2026-01-01T00:00:00.000000000Z")

    def close(self) -> None:
        self.closed = True


class FloodClient:
    url = "unix:///flood.sock"

    def __init__(self, total: int) -> None:
        self.total = total

    def logs(self, _cid: str, **_kwargs: Any) -> FloodStream:
        return FloodStream(self.total)


def test_pipeline_under_a_flood(qtbot: Any, details: Any) -> None:
    """Without an engine's ceiling: 400,000 lines as fast as the reader can make them.

    The queue holds the reader back instead of dropping, the view's ring drops the
    oldest lines and counts them, every line is accounted for, the GUI never stalls.
    Throughput is machine-bound (reader and GUI share the GIL): 40,000-60,000 lines/s on
    this 2-core CI host at load 15-40, with the worst GUI pause 300-600 ms (an idle Qt
    process pauses up to ~160 ms there); the floor below only catches a regression to
    per-line signalling, which manages a few thousand.
    """
    total = 400_000
    tab = details.logs
    meter = GapMeter()
    started = time.monotonic()
    tab.bind(FloodClient(total), "f" * 64)  # type: ignore[arg-type]
    tab.activate()
    model = tab.panel.model
    try:
        qtbot.waitUntil(lambda: not tab.running, timeout=60_000)
    finally:
        worst = meter.stop()
    elapsed = time.monotonic() - started
    assert model.line_count() == model.capacity
    assert model.line_count() + model.dropped == total
    assert next(iter(model.all_lines())).text.startswith("flood line")
    assert list(model.all_lines())[-1].text == f"flood line {total - 1}"
    assert total / elapsed > 15_000, f"{total / elapsed:.0f} lines/s"
    assert worst < STALL_MS, f"GUI stalled for {worst} ms"
    assert tab.panel.toolbar.dropped.text() == f"{total - model.capacity:,} lines dropped"
