"""Fixtures for the widget tests (offscreen Qt, pytest-qt)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")



from app.widgets.terminal import TerminalWidget

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
