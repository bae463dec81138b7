"""Guard against the PySide6 6.12.0 bug on CPython 3.11 that aborts the interpreter.

6.12.0 drops a reference to None on every void call (setText, setEnabled, ...) and to
True/False on every signal emit; after a few thousand calls Python dies with
"Fatal Python error: none_dealloc". pyproject.toml excludes that release; this test
fails if an installed PySide6 leaks these references again, before users crash.
"""

from __future__ import annotations

import sys
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QLabel, QPushButton


class _Emitter(QObject):
    fired = Signal(bool)


def test_void_calls_and_emits_keep_singleton_refcounts(qtbot: Any) -> None:
    label, button, emitter = QLabel(), QPushButton(), _Emitter()
    qtbot.addWidget(label)
    qtbot.addWidget(button)
    emitter.fired.connect(lambda _v: None)
    none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
    for _ in range(500):
        label.setText("x")
        button.setEnabled(True)
        emitter.fired.emit(True)
    # A few references may come and go with caches; a leak per call shows as >= 500.
    assert abs(sys.getrefcount(None) - none_before) < 50
    assert abs(sys.getrefcount(True) - true_before) < 50
