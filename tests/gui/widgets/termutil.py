"""Small helpers shared by the terminal tests."""

from __future__ import annotations

from app.widgets.terminal import TerminalWidget


def fed(widget: TerminalWidget, data: bytes) -> TerminalWidget:
    widget.feed(data)
    widget.flush()
    return widget


def row_text(widget: TerminalWidget, row: int) -> str:
    screen = widget.term_screen
    return "".join(screen.buffer[row][x].data for x in range(screen.columns)).rstrip()
