"""A terminal emulator view on pyte, independent of where the bytes come from.

Used for a container exec shell, the VM serial console and the VM SSH shell.
The caller wires a transport to two ends:

* output: ``terminal.feed(data)`` on the GUI thread, as often as it likes; the
  bytes are queued and parsed from a short single-shot timer in slices with a
  time budget, so a flood of output never blocks the GUI thread for long and
  repaints are coalesced (never one repaint per byte or per ``feed``);
* input: the ``input_bytes(bytes)`` signal carries keystrokes, pastes and the
  terminal's answers to device queries; ``resized(cols, rows)`` tells the
  caller to resize the remote TTY.

Text is drawn cell by cell with QPainter; engine or guest output is never
interpreted as markup.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyte
from PySide6.QtCore import QEvent, QPoint, QPointF, QRect, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QColor,
    QContextMenuEvent,
    QFocusEvent,
    QFont,
    QFontDatabase,
    QFontMetricsF,
    QGuiApplication,
    QInputMethodEvent,
    QKeyEvent,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QRegion,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QScrollBar,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from pyte.screens import Char

from app.widgets._termscreen import CellRow, FrozenLine, TermScreen

__all__ = ["TerminalWidget", "key_to_bytes"]

_log = logging.getLogger(__name__)

#: The 16 ANSI colours under pyte's names (xterm's defaults, slightly softened).
#: "bfightmagenta" is pyte 0.8's spelling of bright magenta background (a typo
#: upstream); without it that colour would fall back to the default.
_ANSI: dict[str, str] = {
    "black": "#000000",
    "red": "#cd3131",
    "green": "#0dbc79",
    "brown": "#e5e510",
    "yellow": "#e5e510",
    "blue": "#2472c8",
    "magenta": "#bc3fbc",
    "cyan": "#11a8cd",
    "white": "#e5e5e5",
    "brightblack": "#666666",
    "brightred": "#f14c4c",
    "brightgreen": "#23d18b",
    "brightbrown": "#f5f543",
    "brightyellow": "#f5f543",
    "brightblue": "#3b8eea",
    "brightmagenta": "#d670d6",
    "bfightmagenta": "#d670d6",
    "brightcyan": "#29b8db",
    "brightwhite": "#ffffff",
}
_DEFAULT_FG = "#d4d4d4"
_DEFAULT_BG = "#1e1e1e"
_SELECTION = QColor(38, 79, 120, 150)
_HEX6 = re.compile(r"[0-9a-fA-F]{6}")

#: Parse at most this many bytes between budget checks.
_SLICE = 2048
#: The smallest slice: dense output (a flood of short lines, each one a scroll)
#: costs far more per byte, so the slice shrinks until one fits in a quarter of
#: the budget, and grows back when output is cheap again.
_SLICE_MIN = 96
#: Time budget for one parse pass on the GUI thread, in seconds.
_BUDGET = 0.008
#: Resizing parses queued output first only up to this much (see _canvas_resized).
_FLUSH_ON_RESIZE = 64 * 1024
#: Delay that coalesces a burst of feed() calls into one parse + one repaint.
_COALESCE_MS = 8
#: While a flood is being parsed (output still queued after a pass), repaint at
#: most this often; the last pass of a burst always repaints.
_FLOOD_PAINT_S = 0.04

# On macOS Qt maps Command to ControlModifier; the physical Control key is Meta.
_CTRL = (
    Qt.KeyboardModifier.MetaModifier
    if sys.platform == "darwin"
    else Qt.KeyboardModifier.ControlModifier
)
_SHIFT = Qt.KeyboardModifier.ShiftModifier
_ALT = Qt.KeyboardModifier.AltModifier

#: Keys whose CSI form takes an xterm modifier parameter: final byte.
_CURSOR_KEYS: dict[int, str] = {
    Qt.Key.Key_Up: "A",
    Qt.Key.Key_Down: "B",
    Qt.Key.Key_Right: "C",
    Qt.Key.Key_Left: "D",
    Qt.Key.Key_Home: "H",
    Qt.Key.Key_End: "F",
}
#: Keys sent as ``CSI n ~``.
_TILDE_KEYS: dict[int, int] = {
    Qt.Key.Key_Insert: 2,
    Qt.Key.Key_Delete: 3,
    Qt.Key.Key_PageUp: 5,
    Qt.Key.Key_PageDown: 6,
    Qt.Key.Key_F5: 15,
    Qt.Key.Key_F6: 17,
    Qt.Key.Key_F7: 18,
    Qt.Key.Key_F8: 19,
    Qt.Key.Key_F9: 20,
    Qt.Key.Key_F10: 21,
    Qt.Key.Key_F11: 23,
    Qt.Key.Key_F12: 24,
}
#: F1–F4 are SS3 P..S (xterm).
_SS3_KEYS: dict[int, str] = {
    Qt.Key.Key_F1: "P",
    Qt.Key.Key_F2: "Q",
    Qt.Key.Key_F3: "R",
    Qt.Key.Key_F4: "S",
}
#: Ctrl + punctuation → C0 code, as xterm sends them.
_CTRL_PUNCT: dict[int, bytes] = {
    Qt.Key.Key_Space: b"\x00",
    Qt.Key.Key_At: b"\x00",
    Qt.Key.Key_2: b"\x00",
    Qt.Key.Key_BracketLeft: b"\x1b",
    Qt.Key.Key_3: b"\x1b",
    Qt.Key.Key_Backslash: b"\x1c",
    Qt.Key.Key_4: b"\x1c",
    Qt.Key.Key_BracketRight: b"\x1d",
    Qt.Key.Key_5: b"\x1d",
    Qt.Key.Key_AsciiCircum: b"\x1e",
    Qt.Key.Key_6: b"\x1e",
    Qt.Key.Key_Underscore: b"\x1f",
    Qt.Key.Key_Minus: b"\x1f",
    Qt.Key.Key_7: b"\x1f",
    Qt.Key.Key_Question: b"\x7f",
    Qt.Key.Key_8: b"\x7f",
}


@dataclass(frozen=True, order=True)
class _Pos:
    """A cell boundary in absolute line numbers (stable while output scrolls)."""

    line: int
    col: int


def _modifier_param(mods: Qt.KeyboardModifier) -> int:
    """xterm's modifier parameter: 1 + shift(1) + alt(2) + ctrl(4)."""
    value = 1
    if mods & _SHIFT:
        value += 1
    if mods & _ALT:
        value += 2
    if mods & _CTRL:
        value += 4
    return value


def key_to_bytes(event: QKeyEvent, app_cursor: bool) -> bytes:
    """The bytes an xterm-compatible terminal sends for a key press.

    ``app_cursor`` is DECCKM: full-screen programs (vi, less) switch the cursor
    keys to their SS3 form and expect exactly that.
    """
    key = event.key()
    mods = event.modifiers()
    text = event.text()
    param = _modifier_param(mods)

    if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
        return b"\x1b\r" if mods & _ALT else b"\r"
    if key == Qt.Key.Key_Backspace:
        seq = b"\x08" if mods & _CTRL else b"\x7f"
        return b"\x1b" + seq if mods & _ALT else seq
    if key == Qt.Key.Key_Backtab or (key == Qt.Key.Key_Tab and mods & _SHIFT):
        return b"\x1b[Z"
    if key == Qt.Key.Key_Tab:
        return b"\x1b\t" if mods & _ALT else b"\t"
    if key == Qt.Key.Key_Escape:
        return b"\x1b"
    if key in _CURSOR_KEYS:
        final = _CURSOR_KEYS[key]
        if param > 1:
            return f"\x1b[1;{param}{final}".encode()
        return f"\x1bO{final}".encode() if app_cursor else f"\x1b[{final}".encode()
    if key in _TILDE_KEYS:
        n = _TILDE_KEYS[key]
        return f"\x1b[{n};{param}~".encode() if param > 1 else f"\x1b[{n}~".encode()
    if key in _SS3_KEYS:
        final = _SS3_KEYS[key]
        return f"\x1b[1;{param}{final}".encode() if param > 1 else f"\x1bO{final}".encode()

    if mods & _CTRL and mods & _ALT and text and text.isprintable():
        # AltGr arrives as Ctrl+Alt on Windows: '@' from AltGr+Q is a character.
        return text.encode("utf-8", "replace")
    prefix = b"\x1b" if mods & _ALT else b""
    if mods & _CTRL:
        if Qt.Key.Key_A <= key <= Qt.Key.Key_Z:
            return prefix + bytes([key - Qt.Key.Key_A + 1])
        if key in _CTRL_PUNCT:
            return prefix + _CTRL_PUNCT[key]
    if text:
        # With Alt, Qt may still report the plain character as text: send it
        # ESC-prefixed (xterm's metaSendsEscape), the convention shells expect.
        return prefix + text.encode("utf-8", "replace")
    return b""


class _FindBar(QWidget):
    """Search field with previous/next buttons for the scrollback."""

    def __init__(self, terminal: TerminalWidget) -> None:
        super().__init__(terminal)
        self._terminal = terminal
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        self.edit = QLineEdit(self)
        self.edit.setPlaceholderText(self.tr("Find in terminal"))
        self.edit.setClearButtonEnabled(True)
        self.case = QCheckBox(self.tr("Match case"), self)
        self.prev_button = QToolButton(self)
        self.prev_button.setText(self.tr("Previous"))
        self.next_button = QToolButton(self)
        self.next_button.setText(self.tr("Next"))
        self.status = QLabel(self)
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.close_button = QToolButton(self)
        self.close_button.setText(self.tr("Close"))
        for w in (self.edit, self.case, self.prev_button, self.next_button, self.status):
            layout.addWidget(w)
        layout.addStretch(1)
        layout.addWidget(self.close_button)
        self.edit.returnPressed.connect(self.find_next)
        self.next_button.clicked.connect(self.find_next)
        self.prev_button.clicked.connect(self.find_previous)
        self.close_button.clicked.connect(self.close_bar)
        self.edit.textChanged.connect(lambda _text: self.status.clear())

    def find_next(self) -> None:
        self._run(backward=False)

    def find_previous(self) -> None:
        self._run(backward=True)

    def _run(self, backward: bool) -> None:
        text = self.edit.text()
        if not text:
            return
        found = self._terminal.find_text(
            text, backward=backward, case_sensitive=self.case.isChecked()
        )
        self.status.setText("" if found else self.tr("Not found"))

    def close_bar(self) -> None:
        self.hide()
        self._terminal.setFocus()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape:
            self.close_bar()
            return
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and event.modifiers() & _SHIFT:
            self.find_previous()
            return
        super().keyPressEvent(event)


class _Canvas(QWidget):
    """The painted cell grid; input events are forwarded to the terminal."""

    def __init__(self, terminal: TerminalWidget) -> None:
        super().__init__(terminal)
        self._t = terminal
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setAttribute(Qt.WidgetAttribute.WA_InputMethodEnabled)
        self.setCursor(Qt.CursorShape.IBeamCursor)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def event(self, event: QEvent) -> bool:
        # Tab and Backtab would otherwise move focus out of the terminal.
        if (
            event.type() == QEvent.Type.KeyPress
            and isinstance(event, QKeyEvent)
            and event.key() in (Qt.Key.Key_Tab, Qt.Key.Key_Backtab)
        ):
            self._t._key_press(event)
            return True
        return super().event(event)

    def paintEvent(self, event: QPaintEvent) -> None:
        self._t._paint(self, event.rect())

    def resizeEvent(self, event: QResizeEvent) -> None:
        self._t._canvas_resized()
        super().resizeEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        self._t._key_press(event)

    def inputMethodEvent(self, event: QInputMethodEvent) -> None:
        if event.commitString():
            self._t._send_user(event.commitString().encode("utf-8"))
        event.accept()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self._t._mouse_press(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        self._t._mouse_move(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._t._mouse_release(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        self._t._mouse_double_click(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        self._t._wheel(event)

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        self._t._context_menu(event.globalPos())

    def focusInEvent(self, event: QFocusEvent) -> None:
        self._t._update_cursor_cell()
        super().focusInEvent(event)

    def focusOutEvent(self, event: QFocusEvent) -> None:
        self._t._update_cursor_cell()
        super().focusOutEvent(event)


class TerminalWidget(QWidget):
    """A terminal emulator view: feed it output bytes, read keystrokes from
    :attr:`input_bytes`, resize the remote TTY on :attr:`resized`."""

    #: Bytes for the remote side: keystrokes, pastes, replies to queries.
    input_bytes = Signal(bytes)
    #: The view's size in cells changed: (columns, rows).
    resized = Signal(int, int)
    #: The remote program set the window title (OSC 0 / OSC 2). Remote-chosen
    #: text: show it as plain text only.
    title_changed = Signal(str)

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        columns: int = 80,
        rows: int = 24,
        scrollback: int = 10_000,
    ) -> None:
        super().__init__(parent)
        self._screen = TermScreen(columns, rows, history=scrollback, reply=self._reply)
        self._stream = pyte.ByteStream(self._screen)
        self._pending: bytearray = bytearray()
        self._slice = _SLICE  # adapts to the output's parse cost (see _process_pending)
        self._last_paint = 0.0
        self._repaint_owed = False
        self._read_only = False
        self._offset = 0  # lines scrolled back from the live screen
        self._anchor: _Pos | None = None
        self._head: _Pos | None = None
        self._selecting = False
        self._last_cursor: tuple[int, int] = (0, 0)
        self._pushed_seen = 0
        self._title = ""
        self._colors: dict[str, QColor] = {}
        self._fonts: dict[tuple[bool, bool, bool, bool], QFont] = {}
        self._default_fg = QColor(_DEFAULT_FG)
        self._default_bg = QColor(_DEFAULT_BG)
        # Longest single parse pass on the GUI thread, wall clock and CPU time
        # (the latter is what the widget costs, whatever the machine's load).
        self.max_parse_seconds = 0.0
        self.max_parse_cpu_seconds = 0.0

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(_COALESCE_MS)
        self._timer.timeout.connect(self._process_pending)

        self._canvas = _Canvas(self)
        self._scrollbar = QScrollBar(Qt.Orientation.Vertical, self)
        self._scrollbar.setRange(0, 0)
        self._scrollbar.valueChanged.connect(self._scrollbar_moved)
        self._find_bar = _FindBar(self)
        self._find_bar.hide()

        grid = QHBoxLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(0)
        grid.addWidget(self._canvas, 1)
        grid.addWidget(self._scrollbar)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        outer.addLayout(grid, 1)
        outer.addWidget(self._find_bar)
        self.setFocusProxy(self._canvas)

        font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.set_font(font)

    # ----------------------------------------------------------------- public

    @property
    def term_screen(self) -> TermScreen:
        """The emulated screen (read it; feed bytes through :meth:`feed`)."""
        return self._screen

    def title(self) -> str:
        """The last title the remote program set ("" if none)."""
        return self._title

    def size_in_cells(self) -> tuple[int, int]:
        """``(columns, rows)`` of the emulated screen."""
        return self._screen.columns, self._screen.lines

    def feed(self, data: bytes) -> None:
        """Queue output from the remote side; parsed and painted shortly after."""
        if not data:
            return
        self._pending += data
        if not self._timer.isActive():
            # Explicit interval: a flood re-arms the timer with 0 ms between
            # passes, which must not stick once the flood is over.
            self._timer.start(_COALESCE_MS)

    @property
    def pending_bytes(self) -> int:
        """Bytes fed but not parsed yet (a transport may throttle on this)."""
        return len(self._pending)

    def flush(self) -> None:
        """Parse everything queued now (before reading the screen or saving)."""
        self._timer.stop()
        while self._pending:
            self._process_slice(len(self._pending))
        self._after_parse()

    def set_font(self, font: QFont) -> None:
        """Use ``font`` (forced to fixed pitch) and recompute the cell size."""
        font = QFont(font)
        font.setFixedPitch(True)
        font.setStyleHint(QFont.StyleHint.Monospace)
        font.setKerning(False)
        self._font = font
        self._fonts.clear()
        metrics = QFontMetricsF(font)
        self._cell_w = max(1.0, metrics.horizontalAdvance("M"))
        self._cell_h = max(1.0, float(round(metrics.height())))
        self._ascent = metrics.ascent()
        self._canvas.updateGeometry()
        self._canvas_resized()
        self._canvas.update()

    def terminal_font(self) -> QFont:
        """The font set by :meth:`set_font` (``font()`` stays QWidget's own)."""
        return QFont(self._font)

    def clear(self) -> None:
        """Empty the scrollback and the screen; the remote program keeps its modes."""
        self.flush()
        self._screen.clear_all()
        self._anchor = self._head = None
        self._offset = 0
        self._screen.dirty.clear()
        self._sync_scrollbar()
        self._canvas.update()

    def set_read_only(self, read_only: bool) -> None:
        """When read-only, nothing is emitted on :attr:`input_bytes`."""
        self._read_only = read_only

    def is_read_only(self) -> bool:
        return self._read_only

    def send_text(self, text: str) -> None:
        """Type ``text`` as if entered at the keyboard (no paste brackets)."""
        self._send_user(text.encode("utf-8"))

    def paste_text(self, text: str) -> None:
        """Paste ``text``; bracketed when the remote program enabled mode 2004."""
        if not text:
            return
        # Terminals send newlines as CR when pasting, as Enter does.
        data = text.replace("\r\n", "\r").replace("\n", "\r").encode("utf-8")
        if self._screen.bracketed_paste:
            # A paste must not be able to end the bracket early.
            data = b"\x1b[200~" + data.replace(b"\x1b[201~", b"") + b"\x1b[201~"
        self._send_user(data)

    def paste(self) -> None:
        """Paste from the clipboard."""
        self.paste_text(QGuiApplication.clipboard().text())

    def copy(self) -> None:
        """Copy the selection to the clipboard."""
        text = self.selected_text()
        if text:
            QGuiApplication.clipboard().setText(text)

    def has_selection(self) -> bool:
        return self._anchor is not None and self._head is not None and self._anchor != self._head

    def selected_text(self) -> str:
        """The selected cells as text, one line per row, trailing blanks removed."""
        span = self._selection_span()
        if span is None:
            return ""
        start, end = span
        base = self._base()
        out: list[str] = []
        for abs_line in range(start.line, end.line + 1):
            index = abs_line - base
            if not 0 <= index < self._line_count():
                continue
            cells = self._line_cells(index)
            c0 = start.col if abs_line == start.line else 0
            c1 = end.col if abs_line == end.line else len(cells)
            # Joining cells (not slicing text) keeps columns right with wide
            # characters, whose second cell is an empty stub.
            out.append("".join(cells[c0:c1]).rstrip())
        return "\n".join(out)

    def select_all(self) -> None:
        base = self._base()
        self._anchor = _Pos(base, 0)
        self._head = _Pos(base + self._line_count() - 1, self._screen.columns)
        self._canvas.update()

    def clear_selection(self) -> None:
        self._anchor = self._head = None
        self._canvas.update()

    def select(self, line: int, column: int, length: int) -> None:
        """Select ``length`` cells from ``column`` on logical ``line``
        (0 = oldest scrollback line; the live screen follows the scrollback)."""
        base = self._base()
        self._anchor = _Pos(base + line, column)
        self._head = _Pos(base + line, column + length)
        self._canvas.update()

    def text(self, include_scrollback: bool = True) -> str:
        """Scrollback (optionally) and screen as plain text, trailing blanks trimmed."""
        self.flush()
        start = 0 if include_scrollback else len(self._screen.scrollback)
        lines = [self._line_text(i).rstrip() for i in range(start, self._line_count())]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines) + ("\n" if lines else "")

    def save_text(self, path: str | Path) -> None:
        """Write scrollback and screen as UTF-8 text to ``path``.

        A small local write; callers saving to slow storage can write
        :meth:`text` from a worker instead. Raises ``OSError``.
        """
        Path(path).write_text(self.text(), encoding="utf-8")

    def find_text(self, text: str, *, backward: bool = False, case_sensitive: bool = False) -> bool:
        """Select and scroll to the next (or previous) match in scrollback + screen.

        Starts after (before) the current selection, or from the top (bottom)
        when nothing is selected, and wraps around.
        """
        if not text:
            return False
        self.flush()
        needle = text if case_sensitive else text.lower()
        count = self._line_count()
        span = self._selection_span()
        if span is None:
            start_line, start_col = (count - 1 if backward else 0), 0
        else:
            start_line = max(0, min(count - 1, span[0].line - self._base()))
            _text, columns = self._line_text_columns(start_line)
            # The search runs on text offsets; the selection is in columns.
            start_col = next((i for i, c in enumerate(columns) if c >= span[0].col), len(columns))
        for step in range(count + 1):
            index = (start_line - step if backward else start_line + step) % count
            hay, columns = self._line_text_columns(index)
            if not case_sensitive:
                hay = hay.lower()
            on_current = step == 0 and span is not None
            if backward:
                # A match ending before the current one's start + its length
                # begins strictly before it.
                col = (
                    hay.rfind(needle, 0, start_col + len(needle) - 1)
                    if on_current
                    else (hay.rfind(needle))
                )
            else:
                col = hay.find(needle, start_col + 1) if on_current else hay.find(needle)
            if col >= 0 and len(hay) == len(columns):
                first = columns[col]
                last = columns[col + len(needle) - 1]
                self.select(index, first, last - first + self._cell_span(index, last))
                self._scroll_into_view(index)
                return True
        return False

    def find_next(self, text: str, *, case_sensitive: bool = False) -> bool:
        return self.find_text(text, case_sensitive=case_sensitive)

    def find_previous(self, text: str, *, case_sensitive: bool = False) -> bool:
        return self.find_text(text, backward=True, case_sensitive=case_sensitive)

    def show_find_bar(self) -> None:
        self._find_bar.show()
        self._find_bar.edit.setFocus()
        self._find_bar.edit.selectAll()

    @property
    def find_bar(self) -> QWidget:
        return self._find_bar

    @property
    def scroll_offset(self) -> int:
        """Lines scrolled back from the live screen (0 = following output)."""
        return self._offset

    def scroll_lines(self, delta: int) -> None:
        """Scroll the view; negative goes back into the scrollback."""
        self._scrollbar.setValue(self._scrollbar.value() + delta)

    def scroll_to_bottom(self) -> None:
        self._scrollbar.setValue(self._scrollbar.maximum())

    def sizeHint(self) -> QSize:
        # 80x24 cells: what a caller gets unless the layout says otherwise.
        return QSize(
            int(self._cell_w * 80) + self._scrollbar.sizeHint().width(),
            int(self._cell_h * 24),
        )

    # ----------------------------------------------------------- parse/paint

    def _reply(self, data: str) -> None:
        if not self._read_only:
            self.input_bytes.emit(data.encode("utf-8"))

    def _process_pending(self) -> None:
        started = time.perf_counter()
        cpu_started = time.thread_time()
        size = self._slice
        now = started
        while self._pending and now - started < _BUDGET:
            self._process_slice(size)
            took = time.perf_counter() - now
            now += took
            if took > _BUDGET / 4:
                size = max(_SLICE_MIN, size // 2)
            elif took < _BUDGET / 16:
                size = min(_SLICE, size * 2)
        self._slice = size
        self.max_parse_seconds = max(self.max_parse_seconds, time.perf_counter() - started)
        self.max_parse_cpu_seconds = max(
            self.max_parse_cpu_seconds, time.thread_time() - cpu_started
        )
        self._after_parse()
        if self._pending:
            # Let input and paint events run before the next slice.
            self._timer.start(0)

    def _process_slice(self, size: int) -> None:
        chunk = bytes(self._pending[:size])
        del self._pending[:size]
        try:
            self._stream.feed(chunk)
        except Exception:  # noqa: BLE001 - any pyte failure, see below
            # pyte has edge cases that raise on malformed sequences; a bad
            # byte from a container must never take the window down. Start a
            # fresh parser (the screen contents survive) and carry on.
            _log.warning("terminal parser failed on a malformed sequence", exc_info=True)
            self._stream = pyte.ByteStream(self._screen)

    def _after_parse(self) -> None:
        screen = self._screen
        history = len(screen.scrollback)
        pushed = screen.pushed - self._pushed_seen
        self._pushed_seen = screen.pushed
        if self._offset and pushed:
            self._offset = min(history, self._offset + pushed)
        self._offset = min(self._offset, history)
        self._sync_scrollbar()
        cursor = (min(screen.cursor.x, screen.columns - 1), screen.cursor.y)
        dirty = set(screen.dirty)
        screen.dirty.clear()
        if self._pending and time.perf_counter() - self._last_paint < _FLOOD_PAINT_S:
            # Mid-flood: the rows change again before anyone could read them;
            # owe one full repaint instead of painting every pass.
            if dirty or pushed or cursor != self._last_cursor:
                self._repaint_owed = True
        elif self._repaint_owed:
            self._repaint_owed = False
            self._canvas.update()
        elif self._offset:
            if dirty or pushed:
                self._canvas.update()
        elif dirty or cursor != self._last_cursor:
            dirty.add(cursor[1])
            dirty.add(self._last_cursor[1])
            region = QRegion()
            width = self._canvas.width()
            for row in dirty:
                top = int(row * self._cell_h)
                region += QRect(0, top, width, int(self._cell_h) + 1)
            self._canvas.update(region)
        self._last_cursor = cursor
        if screen.title != self._title:
            self._title = screen.title
            self.title_changed.emit(self._title)

    def _sync_scrollbar(self) -> None:
        history = len(self._screen.scrollback)
        bar = self._scrollbar
        bar.blockSignals(True)
        bar.setRange(0, history)
        bar.setPageStep(self._screen.lines)
        bar.setValue(history - self._offset)
        bar.blockSignals(False)

    def _scrollbar_moved(self, value: int) -> None:
        self._offset = max(0, len(self._screen.scrollback) - value)
        self._canvas.update()

    def _scroll_into_view(self, index: int) -> None:
        history = len(self._screen.scrollback)
        top = history - self._offset
        if top <= index < top + self._screen.lines:
            self._canvas.update()
            return
        new_top = max(0, min(history, index - self._screen.lines // 2))
        self._offset = history - new_top
        self._sync_scrollbar()
        self._canvas.update()

    def _update_cursor_cell(self) -> None:
        row = self._screen.cursor.y
        self._canvas.update(
            QRect(0, int(row * self._cell_h), self._canvas.width(), int(self._cell_h) + 1)
        )

    def _base(self) -> int:
        """Absolute number of logical line 0 (the oldest scrollback line)."""
        return self._screen.pushed - len(self._screen.scrollback)

    def _line_count(self) -> int:
        return len(self._screen.scrollback) + self._screen.lines

    def _line(self, index: int) -> CellRow:
        history = self._screen.scrollback
        if index < len(history):
            return FrozenLine(history[index])
        return self._screen.buffer[index - len(history)]

    def _line_cells(self, index: int) -> list[str]:
        """One string per column ("" for the stub after a wide character)."""
        line = self._line(index)
        return [line[x].data for x in range(self._screen.columns)]

    def _line_text(self, index: int) -> str:
        return "".join(self._line_cells(index))

    def _cell_span(self, index: int, col: int) -> int:
        """2 for a wide character (its stub follows), else 1."""
        cells = self._line_cells(index)
        return 2 if col + 1 < len(cells) and cells[col + 1] == "" else 1

    def _line_text_columns(self, index: int) -> tuple[str, list[int]]:
        """The line's text and, for each of its characters, the column it is in."""
        text: list[str] = []
        columns: list[int] = []
        for col, data in enumerate(self._line_cells(index)):
            text.append(data)
            columns.extend([col] * len(data))
        return "".join(text), columns

    def _color(self, name: str, default: QColor) -> QColor:
        if name == "default":
            return default
        color = self._colors.get(name)
        if color is None:
            if name in _ANSI:
                color = QColor(_ANSI[name])
            elif _HEX6.fullmatch(name):
                color = QColor("#" + name)
            else:
                color = default
            self._colors[name] = color
        return color

    def _styled_font(self, bold: bool, italic: bool, underline: bool, strike: bool) -> QFont:
        key = (bold, italic, underline, strike)
        font = self._fonts.get(key)
        if font is None:
            font = QFont(self._font)
            font.setBold(bold)
            font.setItalic(italic)
            font.setUnderline(underline)
            font.setStrikeOut(strike)
            self._fonts[key] = font
        return font

    def _paint(self, canvas: QWidget, rect: QRect) -> None:
        self._last_paint = time.perf_counter()
        painter = QPainter(canvas)
        painter.fillRect(rect, self._default_bg)
        screen = self._screen
        ch = self._cell_h
        cols = screen.columns
        first_row = max(0, int(rect.top() // ch))
        last_row = min(screen.lines - 1, int(rect.bottom() // ch))
        top_index = len(screen.scrollback) - self._offset
        for row in range(first_row, last_row + 1):
            self._paint_line(painter, self._line(top_index + row), row * ch, cols)
        self._paint_selection(painter, top_index, first_row, last_row)
        if self._offset == 0 and not screen.cursor.hidden:
            self._paint_cursor(painter)
        painter.end()

    def _paint_line(self, painter: QPainter, line: CellRow, y: float, cols: int) -> None:
        if not line:
            return  # never written: the background fill is all it needs
        # Cells past the last one written are blank with the line's default
        # attributes: when those paint nothing (the usual case), stop there
        # instead of walking every column of a short line (a flood of them
        # otherwise costs a whole screen width of Python per line).
        if isinstance(line, FrozenLine):
            cols = min(cols, len(line))
        else:
            default: Char = line.default  # type: ignore[attr-defined]
            if (default.bg == "default" and not default.reverse
                    and not default.underscore and not default.strikethrough):
                cols = min(cols, max(line) + 1)  # type: ignore[call-overload]
        cw, ch = self._cell_w, self._cell_h
        x = 0
        while x < cols:
            cell: Char = line[x]
            style = cell[1:]
            start = x
            x += 1
            while x < cols and line[x][1:] == style:
                x += 1
            self._paint_run(painter, line, start, x, y, cell, cw, ch)

    def _paint_run(
        self,
        painter: QPainter,
        line: CellRow,
        start: int,
        end: int,
        y: float,
        cell: Char,
        cw: float,
        ch: float,
    ) -> None:
        fg = self._color(cell.fg, self._default_fg)
        bg = self._color(cell.bg, self._default_bg)
        if cell.reverse:
            fg, bg = bg, fg
        if bg is not self._default_bg:
            painter.fillRect(QRectF(start * cw, y, (end - start) * cw, ch), bg)
        text = "".join(line[x].data for x in range(start, end))
        decorated = cell.underscore or cell.strikethrough
        if not decorated and not text.strip():
            return
        painter.setFont(
            self._styled_font(cell.bold, cell.italics, cell.underscore, cell.strikethrough)
        )
        painter.setPen(fg)
        baseline = y + self._ascent
        if text.isascii() and len(text) == end - start:
            painter.drawText(QPointF(start * cw, baseline), text)
            return
        # Wide or combining characters: place each at its own cell so the
        # grid stays aligned whatever the font's advance for them is.
        for x in range(start, end):
            data = line[x].data
            if data:
                painter.drawText(QPointF(x * cw, baseline), data)

    def _paint_selection(
        self, painter: QPainter, top_index: int, first_row: int, last_row: int
    ) -> None:
        span = self._selection_span()
        if span is None:
            return
        start, end = span
        base = self._base()
        cw, ch = self._cell_w, self._cell_h
        cols = self._screen.columns
        for row in range(first_row, last_row + 1):
            abs_line = base + top_index + row
            if abs_line < start.line or abs_line > end.line:
                continue
            c0 = start.col if abs_line == start.line else 0
            c1 = end.col if abs_line == end.line else cols
            if c1 > c0:
                painter.fillRect(QRectF(c0 * cw, row * ch, (c1 - c0) * cw, ch), _SELECTION)

    def _paint_cursor(self, painter: QPainter) -> None:
        screen = self._screen
        x = min(screen.cursor.x, screen.columns - 1)
        y = screen.cursor.y
        cell = screen.buffer[y][x]
        rect = QRectF(x * self._cell_w, y * self._cell_h, self._cell_w, self._cell_h)
        fg = self._color(cell.fg, self._default_fg)
        bg = self._color(cell.bg, self._default_bg)
        if cell.reverse:
            fg, bg = bg, fg
        if self._canvas.hasFocus():
            painter.fillRect(rect, fg)
            if cell.data.strip():
                painter.setFont(self._styled_font(cell.bold, cell.italics, False, False))
                painter.setPen(bg)
                painter.drawText(QPointF(rect.x(), rect.y() + self._ascent), cell.data)
        else:
            painter.setPen(fg)
            painter.drawRect(rect.adjusted(0.5, 0.5, -0.5, -0.5))

    # ----------------------------------------------------------------- input

    def _canvas_resized(self) -> None:
        width, height = self._canvas.width(), self._canvas.height()
        # A canvas never shown has Qt's placeholder geometry (100x30 px): it
        # must not shrink the screen before the first real layout.
        if width <= 0 or height <= 0 or not self._canvas.isVisible():
            return
        cols = max(2, int(width // self._cell_w))
        rows = max(1, int(height // self._cell_h))
        if (cols, rows) == self.size_in_cells():
            return
        # Output already queued was written for the old size: parse it first,
        # unless a flood is queued (that would block the GUI; it then lands on
        # the new size, as it would on a terminal that is slow to catch up).
        if len(self._pending) <= _FLUSH_ON_RESIZE:
            self.flush()
        self._screen.resize(rows, cols)
        self._pushed_seen = self._screen.pushed
        self._offset = min(self._offset, len(self._screen.scrollback))
        self._last_cursor = (min(self._screen.cursor.x, cols - 1), self._screen.cursor.y)
        self._screen.dirty.clear()
        self._sync_scrollbar()
        self._canvas.update()
        self.resized.emit(cols, rows)

    def _send_user(self, data: bytes) -> None:
        if self._read_only or not data:
            return
        if self._offset:
            self.scroll_to_bottom()  # typing returns to the live screen
        self.input_bytes.emit(data)

    def _key_press(self, event: QKeyEvent) -> None:
        key = event.key()
        mods = event.modifiers()
        ctrl_shift = (mods & _CTRL) and (mods & _SHIFT)
        if ctrl_shift and key == Qt.Key.Key_C:
            self.copy()
            return
        if ctrl_shift and key == Qt.Key.Key_V:
            self.paste()
            return
        if ctrl_shift and key == Qt.Key.Key_F:
            self.show_find_bar()
            return
        if mods == _SHIFT and key in (Qt.Key.Key_PageUp, Qt.Key.Key_PageDown):
            page = max(1, self._screen.lines - 1)
            self.scroll_lines(-page if key == Qt.Key.Key_PageUp else page)
            return
        if mods == _SHIFT and key in (Qt.Key.Key_Home, Qt.Key.Key_End):
            if key == Qt.Key.Key_Home:
                self._scrollbar.setValue(0)
            else:
                self.scroll_to_bottom()
            return
        if sys.platform == "darwin":
            # Cmd+C / Cmd+V are free on macOS (Ctrl+C stays an interrupt).
            if event.matches(QKeySequence.StandardKey.Copy):
                self.copy()
                return
            if event.matches(QKeySequence.StandardKey.Paste):
                self.paste()
                return
        data = key_to_bytes(event, self._screen.application_cursor)
        if data:
            self._send_user(data)

    def _pos_at(self, point: QPoint) -> _Pos:
        cols = self._screen.columns
        col = max(0, min(cols, round(point.x() / self._cell_w)))
        row = max(0, min(self._screen.lines - 1, int(point.y() // self._cell_h)))
        index = len(self._screen.scrollback) - self._offset + row
        return _Pos(self._base() + index, col)

    def _selection_span(self) -> tuple[_Pos, _Pos] | None:
        if not self.has_selection():
            return None
        assert self._anchor is not None and self._head is not None
        return (min(self._anchor, self._head), max(self._anchor, self._head))

    def _mouse_press(self, event: QMouseEvent) -> None:
        self._canvas.setFocus()
        if event.button() == Qt.MouseButton.LeftButton:
            self._anchor = self._head = self._pos_at(event.position().toPoint())
            self._selecting = True
            self._canvas.update()
        elif event.button() == Qt.MouseButton.MiddleButton:
            clipboard = QGuiApplication.clipboard()
            mode = (
                clipboard.Mode.Selection
                if clipboard.supportsSelection()
                else clipboard.Mode.Clipboard
            )
            self.paste_text(clipboard.text(mode))

    def _mouse_move(self, event: QMouseEvent) -> None:
        if self._selecting and event.buttons() & Qt.MouseButton.LeftButton:
            point = event.position().toPoint()
            if point.y() < 0:
                self.scroll_lines(-1)
            elif point.y() > self._canvas.height():
                self.scroll_lines(1)
            self._head = self._pos_at(point)
            self._canvas.update()

    def _mouse_release(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self._selecting:
            self._selecting = False
            self._publish_selection()

    def _mouse_double_click(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        pos = self._pos_at(event.position().toPoint())
        index = pos.line - self._base()
        cells = self._line_cells(index)
        col = min(int(event.position().x() // self._cell_w), len(cells) - 1)

        def in_word(c: int) -> bool:
            data = cells[c]
            return data == "" or (bool(data.strip()) and data not in "\"'()[]{}<>")

        if col < 0 or not cells[col].strip():
            return
        start = end = col
        while start > 0 and in_word(start - 1):
            start -= 1
        while end < len(cells) and in_word(end):
            end += 1
        self.select(index, start, end - start)
        self._selecting = False
        self._publish_selection()

    def _publish_selection(self) -> None:
        """X11 convention: a finished selection becomes the primary selection."""
        clipboard = QGuiApplication.clipboard()
        if clipboard.supportsSelection() and self.has_selection():
            clipboard.setText(self.selected_text(), clipboard.Mode.Selection)

    def _wheel(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120
        if steps:
            self.scroll_lines(-round(steps * 3) or (-1 if steps > 0 else 1))
        event.accept()

    def _context_menu(self, global_pos: QPoint) -> None:
        menu = self._build_context_menu()
        menu.exec(global_pos)

    def _build_context_menu(self) -> QMenu:
        menu = QMenu(self)
        copy = QAction(self.tr("Copy"), menu)
        copy.setShortcut(QKeySequence("Ctrl+Shift+C"))
        copy.setEnabled(self.has_selection())
        copy.triggered.connect(self.copy)
        paste = QAction(self.tr("Paste"), menu)
        paste.setShortcut(QKeySequence("Ctrl+Shift+V"))
        paste.setEnabled(not self._read_only and bool(QGuiApplication.clipboard().text()))
        paste.triggered.connect(self.paste)
        select_all = QAction(self.tr("Select All"), menu)
        select_all.triggered.connect(self.select_all)
        find = QAction(self.tr("Find…"), menu)
        find.setShortcut(QKeySequence("Ctrl+Shift+F"))
        find.triggered.connect(self.show_find_bar)
        clear = QAction(self.tr("Clear Scrollback and Screen"), menu)
        clear.triggered.connect(self.clear)
        for action in (copy, paste, select_all):
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction(find)
        menu.addAction(clear)
        return menu
