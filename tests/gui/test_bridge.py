"""The bridge: results come back on the GUI thread, whoever touched it first."""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import QThread

import app.bridge as bridge


def test_relay_first_created_on_a_worker_still_runs_on_the_gui_thread(qtbot: Any) -> None:
    bridge._relay = None  # as if a monitor thread were the first user
    seen: list[bool] = []
    gui = QThread.currentThread()
    worker = threading.Thread(
        target=lambda: bridge.call_in_gui(lambda: seen.append(QThread.currentThread() is gui))
    )
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: seen == [True], timeout=5000)


def test_op_success_and_failure_on_the_gui_thread(qtbot: Any) -> None:
    gui = QThread.currentThread()
    results: list[Any] = []
    bridge.Op(lambda: 41 + 1).success(
        lambda v: results.append((v, QThread.currentThread() is gui))
    ).run()
    bridge.Op(lambda: 1 / 0).failure(
        lambda e: results.append((type(e).__name__, QThread.currentThread() is gui))
    ).run()
    qtbot.waitUntil(lambda: len(results) == 2, timeout=5000)
    assert set(results) == {(42, True), ("ZeroDivisionError", True)}
