"""Fixtures for the widget tests (offscreen Qt, pytest-qt).

PySide6 6.12.0 drops a reference to ``None`` (and to ``True``/``False``) on
every call of a C++ method returning void when run on CPython 3.11, where
these singletons are not yet immortal (3.12 made them so, which hides the
bug there). A few thousand calls later the interpreter aborts with "Fatal
Python error: none_dealloc". The widget tests make hundreds of thousands of
such calls (a million log lines), so on 3.11 they give the singletons a
reference count no test can exhaust, which is what 3.12+ does natively.
PySide6 6.11.x does not have the bug.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _pin_singletons() -> None:
    if sys.version_info >= (3, 12):
        return
    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += 1 << 40


_pin_singletons()

from app.widgets.terminal import TerminalWidget  # noqa: E402

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def term(qtbot: Any) -> Iterator[TerminalWidget]:
    """An 80x24 terminal, shown (offscreen) so it has a real size."""
    widget = TerminalWidget(scrollback=500)
    qtbot.addWidget(widget)
    scrollbar = widget._scrollbar.sizeHint().width()
    widget.resize(int(widget._cell_w * 80) + scrollbar + 1, int(widget._cell_h * 24) + 1)
    widget.show()
    qtbot.waitExposed(widget)
    assert widget.size_in_cells() == (80, 24)
    yield widget
