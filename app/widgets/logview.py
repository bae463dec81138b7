"""A virtualised view for container logs over a bounded ring buffer.

* :class:`LogModel` keeps at most ``capacity`` lines in a ring (O(1) append,
  drop and random access) and counts the lines that fell off the front.
  Appends arrive in batches (``append_lines``, driven by the caller's timer)
  and become one ``rowsRemoved`` + one ``rowsInserted`` per batch.
* Filtering is done in the model with an index list of matching line numbers
  rather than a ``QSortFilterProxyModel``: the proxy re-maps every row on each
  removal at the top of a 100k-line buffer and calls back into Python per row,
  whereas the index list costs O(batch) per append. A filter change is a real
  model reset (the rows shown are a different list); appends never reset.
* Lines are plain text. ANSI CSI sequences (colours, cursor moves) are
  stripped when a line is appended; any other control character is shown
  escaped as ``\\xNN`` (tab is expanded). Nothing is interpreted as markup:
  :class:`LogView` paints each visible row with ``QPainter.drawText``.
* :class:`LogView` is a painted ``QAbstractScrollArea`` (see its docstring for
  why not a ``QListView``); :class:`LogToolbar` holds the controls and
  :class:`LogPanel` puts the two together.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRect,
    Qt,
    Signal,
)
from PySide6.QtGui import (
    QColor,
    QContextMenuEvent,
    QFont,
    QFontDatabase,
    QFontMetrics,
    QGuiApplication,
    QKeyEvent,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QResizeEvent,
)
from PySide6.QtWidgets import (
    QAbstractScrollArea,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QScrollBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["LogLine", "LogModel", "LogPanel", "LogToolbar", "LogView", "clean_text"]

Stream = Literal["stdout", "stderr"]

#: CSI sequences: ESC [ params intermediates final. Colour codes are the
#: common case in container logs; cursor moves make no sense in a log either.
_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
#: Control characters left after CSI stripping (C0 except tab, DEL, C1).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
#: Lines longer than this are cut for display only (copy and save keep all).
DISPLAY_LIMIT = 4096

_STDERR_TINT = QColor("#c0392b")
_HIGHLIGHT = QColor(255, 213, 79, 170)


def clean_text(text: str) -> str:
    """Strip ANSI CSI sequences (colours) from a raw log line."""
    if "\x1b" in text:
        text = _CSI.sub("", text)
    return text


def display_text(text: str) -> str:
    """Make ``text`` safe to draw: control characters become ``\\xNN``."""
    if "\t" in text:
        text = text.expandtabs(8)
    if len(text) > DISPLAY_LIMIT:
        text = f"{text[:DISPLAY_LIMIT]}… ({len(text) - DISPLAY_LIMIT} more characters)"
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@dataclass(frozen=True, slots=True)
class LogLine:
    """One log line: engine timestamp (if asked for), stream and text."""

    ts: str | None
    stream: Stream
    text: str

    @classmethod
    def of(cls, item: LogLine | str | tuple[str | None, str, str]) -> LogLine:
        """Accept a LogLine, a bare string (stdout) or a (ts, stream, text) tuple."""
        if isinstance(item, LogLine):
            line = item
        elif isinstance(item, str):
            line = cls(None, "stdout", item)
        else:
            ts, stream, text = item
            line = cls(ts, "stderr" if stream == "stderr" else "stdout", text)
        if "\x1b" in line.text:
            line = cls(line.ts, line.stream, clean_text(line.text))
        return line


_Stored = tuple[str | None, str, str]


class _Ring:
    """Fixed-capacity ring with O(1) append, drop-oldest and indexing.

    ``collections.deque`` indexes in O(n) towards the middle, which a view
    painting rows in the middle of 100k lines (and a filter walking them)
    would pay on every access.

    Lines are stored as plain tuples of strings, not as LogLine objects:
    CPython stops tracking such tuples in its cyclic GC, whereas 100k
    dataclass instances would be walked by every full collection (measured:
    up to 90 ms GUI pauses). LogLine objects are made on access.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: list[_Stored | None] = [None] * capacity
        self._head = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def raw(self, i: int) -> _Stored:
        item = self._items[(self._head + i) % self.capacity]
        assert item is not None
        return item

    def __getitem__(self, i: int) -> LogLine:
        ts, stream, text = self.raw(i)
        return LogLine(ts, "stderr" if stream == "stderr" else "stdout", text)

    def __iter__(self) -> Iterator[LogLine]:
        for i in range(self._len):
            yield self[i]

    def texts(self) -> Iterator[str]:
        for i in range(self._len):
            yield self.raw(i)[2]

    def drop(self, n: int) -> None:
        for i in range(n):
            self._items[(self._head + i) % self.capacity] = None  # free memory now
        self._head = (self._head + n) % self.capacity
        self._len -= n

    def extend(self, lines: Sequence[LogLine]) -> None:
        assert self._len + len(lines) <= self.capacity
        stored = [(line.ts, line.stream, line.text) for line in lines]
        cap = self.capacity
        start = (self._head + self._len) % cap
        first = min(len(stored), cap - start)
        self._items[start : start + first] = stored[:first]
        if first < len(stored):
            self._items[0 : len(stored) - first] = stored[first:]
        self._len += len(stored)

    def clear(self) -> None:
        self._items = [None] * self.capacity
        self._head = self._len = 0


class LogModel(QAbstractListModel):
    """Bounded log buffer as a list model, with filter and display options."""

    #: Total lines dropped from the front since the last clear.
    dropped_changed = Signal(int)

    #: The :class:`LogLine` of a row.
    LineRole = Qt.ItemDataRole.UserRole + 1

    def __init__(self, capacity: int = 100_000, parent: QObject | None = None) -> None:
        super().__init__(parent)
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._ring = _Ring(capacity)
        self._first = 0  # absolute number of ring[0]
        self._dropped = 0
        self._show_ts = False
        self._filter: re.Pattern[str] | None = None
        self._rows: list[int] = []  # absolute numbers of matching lines (filter only)
        self._max_len = 0

    # -------------------------------------------------------------- buffer

    @property
    def capacity(self) -> int:
        return self._ring.capacity

    @property
    def dropped(self) -> int:
        return self._dropped

    def line_count(self) -> int:
        """Lines in the buffer, whatever the filter."""
        return len(self._ring)

    def append_lines(self, items: Iterable[LogLine | str | tuple[str | None, str, str]]) -> None:
        """Append a batch (oldest first); drops the oldest lines beyond capacity."""
        batch = [LogLine.of(item) for item in items]
        if not batch:
            return
        cap = self._ring.capacity
        lost = 0
        if len(batch) > cap:
            lost = len(batch) - cap
            batch = batch[lost:]
        overflow = len(self._ring) + len(batch) - cap
        if overflow > 0:
            self._drop_front(overflow)
        if lost:
            self._first += lost
        self._dropped += max(overflow, 0) + lost
        first_new = self._first + len(self._ring)
        self._max_len = max(self._max_len, *(len(line.text) for line in batch))
        if self._filter is None:
            start = len(self._ring)
            self.beginInsertRows(QModelIndex(), start, start + len(batch) - 1)
            self._ring.extend(batch)
            self.endInsertRows()
        else:
            search = self._filter.search
            matches = [first_new + i for i, line in enumerate(batch) if search(line.text)]
            self._ring.extend(batch)
            if matches:
                start = len(self._rows)
                self.beginInsertRows(QModelIndex(), start, start + len(matches) - 1)
                self._rows.extend(matches)
                self.endInsertRows()
        if overflow > 0 or lost:
            self.dropped_changed.emit(self._dropped)

    def _drop_front(self, n: int) -> None:
        n = min(n, len(self._ring))
        if n <= 0:
            return
        new_first = self._first + n
        if self._filter is None:
            self.beginRemoveRows(QModelIndex(), 0, n - 1)
            self._ring.drop(n)
            self._first = new_first
            self.endRemoveRows()
            return
        # Matching rows are in ascending order: count those that fall off.
        gone = bisect_left(self._rows, new_first)
        if gone:
            self.beginRemoveRows(QModelIndex(), 0, gone - 1)
            del self._rows[:gone]
            self._ring.drop(n)
            self._first = new_first
            self.endRemoveRows()
        else:
            self._ring.drop(n)
            self._first = new_first

    def clear(self) -> None:
        """Empty the buffer and reset the dropped count."""
        self.beginResetModel()
        self._ring.clear()
        self._rows = []
        self._first = 0
        self._max_len = 0
        self.endResetModel()
        if self._dropped:
            self._dropped = 0
            self.dropped_changed.emit(0)

    # ------------------------------------------------------------ options

    def set_show_timestamps(self, show: bool) -> None:
        if show == self._show_ts:
            return
        self._show_ts = show
        if self.rowCount():
            self.dataChanged.emit(
                self.index(0), self.index(self.rowCount() - 1), [Qt.ItemDataRole.DisplayRole]
            )

    def show_timestamps(self) -> bool:
        return self._show_ts

    def set_filter(
        self, pattern: str, *, regex: bool = False, case_sensitive: bool = False
    ) -> None:
        """Show only lines matching ``pattern`` (empty: all lines).

        Raises ``re.error`` for an invalid regex and then keeps the current
        filter, so a half-typed expression never blanks the view.
        """
        compiled: re.Pattern[str] | None = None
        if pattern:
            flags = 0 if case_sensitive else re.IGNORECASE
            compiled = re.compile(pattern if regex else re.escape(pattern), flags)
        if compiled == self._filter:
            return
        self.beginResetModel()
        self._filter = compiled
        if compiled is None:
            self._rows = []
        else:
            search = compiled.search
            first = self._first
            self._rows = [first + i for i, text in enumerate(self._ring.texts()) if search(text)]
        self.endResetModel()

    def filter_pattern(self) -> re.Pattern[str] | None:
        return self._filter

    def max_text_length(self) -> int:
        return min(self._max_len, DISPLAY_LIMIT + 40)

    # ------------------------------------------------------------- access

    def line_at(self, row: int) -> LogLine:
        """The line shown at ``row`` (respecting the filter)."""
        if self._filter is None:
            return self._ring[row]
        return self._ring[self._rows[row] - self._first]

    def seq_at(self, row: int) -> int:
        """Absolute line number of ``row`` (stable while lines are dropped)."""
        return self._rows[row] if self._filter is not None else self._first + row

    def row_for_seq(self, seq: int) -> int:
        """The first shown row whose line number is >= ``seq``."""
        if self._filter is not None:
            return bisect_left(self._rows, seq)
        return max(0, min(len(self._ring), seq - self._first))

    def prefix(self, line: LogLine) -> str:
        """The timestamp prefix shown before ``line`` ("" when hidden)."""
        return f"{line.ts} " if self._show_ts and line.ts else ""

    def visible_lines(self) -> Iterator[LogLine]:
        """Lines shown, oldest first (all, or the filtered ones)."""
        for row in range(self.rowCount()):
            yield self.line_at(row)

    def all_lines(self) -> Iterator[LogLine]:
        return iter(self._ring)

    def format_line(self, line: LogLine) -> str:
        """A line as text for copy/save (with its timestamp if shown)."""
        if self._show_ts and line.ts:
            return f"{line.ts} {line.text}"
        return line.text

    def save(self, path: str | Path, *, filtered: bool = False) -> int:
        """Write all lines (or only the filtered ones) to ``path``; returns the count.

        Raises ``OSError``.
        """
        lines = self.visible_lines() if filtered else self.all_lines()
        count = 0
        with open(path, "w", encoding="utf-8", newline="\n") as out:
            for line in lines:
                out.write(self.format_line(line))
                out.write("\n")
                count += 1
        return count

    # ------------------------------------------------------ model protocol

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex | None = None) -> int:
        if parent is not None and parent.isValid():
            return 0
        return len(self._rows) if self._filter is not None else len(self._ring)

    def data(
        self,
        index: QModelIndex | QPersistentModelIndex,
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if not index.isValid() or not 0 <= index.row() < self.rowCount():
            return None
        try:
            line = self.line_at(index.row())
        except (IndexError, AssertionError):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.prefix(line) + display_text(line.text)
        if role == self.LineRole:
            return line
        if role == Qt.ItemDataRole.ForegroundRole:
            return _STDERR_TINT if line.stream == "stderr" else None
        if role == Qt.ItemDataRole.ToolTipRole:
            return line.stream
        return None

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return (
            Qt.ItemFlag.ItemIsEnabled
            | Qt.ItemFlag.ItemIsSelectable
            | Qt.ItemFlag.ItemNeverHasChildren
        )


class LogView(QAbstractScrollArea):
    """A painted, virtualised view of a :class:`LogModel` that follows the end.

    Only the rows in the viewport are touched per paint, and an append costs
    a scrollbar update: ``QListView`` was tried first, but its item layout
    calls the Python ``rowCount()`` twice per row on every batch, which at
    100k rows is about a second per append.

    Selection is a contiguous range of lines kept by absolute line number,
    so it stays on the same lines while older lines fall off the front.
    """

    #: Follow (auto-scroll) was switched on or off, by the user or by code.
    follow_changed = Signal(bool)

    def __init__(self, model: LogModel | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._model = model if model is not None else LogModel(parent=self)
        self._follow = True
        self._programmatic = False
        self._highlight: re.Pattern[str] | None = None
        self._anchor: int | None = None  # absolute line numbers
        self._head: int | None = None
        self._text_width = 0
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.viewport().setCursor(Qt.CursorShape.IBeamCursor)
        self.set_font(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self._model.rowsInserted.connect(self._rows_inserted)
        self._model.rowsRemoved.connect(self._rows_removed)
        self._model.modelReset.connect(self._model_reset)
        self._model.dataChanged.connect(self._data_changed)
        self.verticalScrollBar().valueChanged.connect(self._scrolled)
        self.horizontalScrollBar().valueChanged.connect(self.viewport().update)
        self._sync_scrollbars()

    # ------------------------------------------------------------ public

    def log_model(self) -> LogModel:
        return self._model

    def append_lines(self, items: Iterable[LogLine | str | tuple[str | None, str, str]]) -> None:
        self._model.append_lines(items)

    def set_font(self, font: QFont) -> None:
        """Use ``font``, forced to fixed pitch: one row height serves all rows."""
        font = QFont(font)
        font.setFixedPitch(True)
        font.setStyleHint(QFont.StyleHint.Monospace)
        self.setFont(font)
        self._metrics = QFontMetrics(font)
        self._row_h = self._metrics.height() + 2
        self._char_w = self._metrics.horizontalAdvance("M")
        self._sync_scrollbars()
        self.viewport().update()

    def row_height(self) -> int:
        return self._row_h

    def visible_rows(self) -> int:
        """Rows that fit entirely in the viewport (at least one)."""
        return max(1, self.viewport().height() // self._row_h)

    def top_row(self) -> int:
        return self.verticalScrollBar().value()

    def set_follow(self, follow: bool) -> None:
        if follow:
            self._scroll_to_end()
        if follow != self._follow:
            self._follow = follow
            self.follow_changed.emit(follow)

    def follows(self) -> bool:
        return self._follow

    def set_highlight(
        self, pattern: str, *, regex: bool = False, case_sensitive: bool = False
    ) -> None:
        """Paint matches of ``pattern`` (empty: none). Raises ``re.error``."""
        if not pattern:
            self._highlight = None
        else:
            flags = 0 if case_sensitive else re.IGNORECASE
            self._highlight = re.compile(pattern if regex else re.escape(pattern), flags)
        self.viewport().update()

    def highlight_pattern(self) -> re.Pattern[str] | None:
        return self._highlight

    def select_rows(self, first: int, last: int) -> None:
        """Select the shown rows ``first``..``last`` (inclusive)."""
        model = self._model
        if model.rowCount() == 0:
            self.clear_selection()
            return
        first = max(0, min(first, model.rowCount() - 1))
        last = max(0, min(last, model.rowCount() - 1))
        self._anchor = model.seq_at(first)
        self._head = model.seq_at(last)
        self.viewport().update()

    def select_all(self) -> None:
        self.select_rows(0, self._model.rowCount() - 1)

    def clear_selection(self) -> None:
        self._anchor = self._head = None
        self.viewport().update()

    def selected_rows(self) -> range:
        """Rows currently shown and selected (empty range if none)."""
        if self._anchor is None or self._head is None:
            return range(0)
        lo, hi = sorted((self._anchor, self._head))
        model = self._model
        return range(model.row_for_seq(lo), model.row_for_seq(hi + 1))

    def selected_text(self) -> str:
        model = self._model
        return "\n".join(model.format_line(model.line_at(row)) for row in self.selected_rows())

    def copy_selection(self) -> None:
        text = self.selected_text()
        if text:
            QGuiApplication.clipboard().setText(text)

    def row_at(self, y: int) -> int:
        return self.top_row() + y // self._row_h

    # ---------------------------------------------------------- internals

    def _sync_scrollbars(self) -> None:
        rows = self._model.rowCount()
        vbar = self.verticalScrollBar()
        page = self.visible_rows()
        self._programmatic = True
        try:
            vbar.setRange(0, max(0, rows - page))
            vbar.setPageStep(page)
            vbar.setSingleStep(1)
            width = self._char_w * (self._model.max_text_length() + 32) + 8
            hbar = self.horizontalScrollBar()
            hbar.setRange(0, max(0, width - self.viewport().width()))
            hbar.setPageStep(max(1, self.viewport().width()))
            hbar.setSingleStep(self._char_w * 4)
        finally:
            self._programmatic = False

    def _scroll_to_end(self) -> None:
        self._sync_scrollbars()
        bar = self.verticalScrollBar()
        self._programmatic = True
        try:
            bar.setValue(bar.maximum())
        finally:
            self._programmatic = False
        self.viewport().update()

    def _rows_inserted(self, _parent: QModelIndex, first: int, _last: int) -> None:
        if self._follow:
            self._scroll_to_end()
            return
        self._sync_scrollbars()
        if first <= self.top_row() + self.visible_rows():
            self.viewport().update()

    def _rows_removed(self, _parent: QModelIndex, first: int, last: int) -> None:
        if not self._follow and first == 0:
            # Keep the lines the user is reading in place while older ones
            # fall off the front.
            bar = self.verticalScrollBar()
            self._programmatic = True
            try:
                bar.setValue(max(0, bar.value() - (last - first + 1)))
            finally:
                self._programmatic = False
        if self._follow:
            self._scroll_to_end()
        else:
            self._sync_scrollbars()
        self.viewport().update()

    def _model_reset(self) -> None:
        if self._model.line_count() == 0:
            self._anchor = self._head = None
        if self._follow:
            self._scroll_to_end()
        else:
            self._sync_scrollbars()
        self.viewport().update()

    def _data_changed(self, *_args: object) -> None:
        self.viewport().update()

    def _scrolled(self, value: int) -> None:
        self.viewport().update()
        if self._programmatic:
            return
        at_end = value >= self.verticalScrollBar().maximum()
        if at_end != self._follow:
            # Scrolling up pauses follow; scrolling back to the end resumes it.
            self._follow = at_end
            self.follow_changed.emit(at_end)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self._follow:
            self._scroll_to_end()
        else:
            self._sync_scrollbars()

    def paintEvent(self, event: QPaintEvent) -> None:
        viewport = self.viewport()
        painter = QPainter(viewport)
        palette = self.palette()
        painter.fillRect(event.rect(), palette.base())
        painter.setFont(self.font())
        model = self._model
        rows = model.rowCount()
        top = self.top_row()
        row_h = self._row_h
        x0 = 4 - self.horizontalScrollBar().value()
        width = viewport.width()
        selected = self.selected_rows()
        text_color = palette.text().color()
        flags = int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter) | int(
            Qt.TextFlag.TextSingleLine
        )
        first = top + max(0, event.rect().top() // row_h)
        last = min(rows - 1, top + event.rect().bottom() // row_h)
        for row in range(first, last + 1):
            y = (row - top) * row_h
            line = model.line_at(row)
            prefix = model.prefix(line)
            text = prefix + display_text(line.text)
            if row in selected:
                painter.fillRect(QRect(0, y, width, row_h), palette.highlight())
            if self._highlight is not None:
                for match in self._highlight.finditer(text, len(prefix)):
                    if match.end() == match.start():
                        continue
                    left = self._metrics.horizontalAdvance(text[: match.start()])
                    span = self._metrics.horizontalAdvance(match.group())
                    painter.fillRect(QRect(x0 + left, y, span, row_h), _HIGHLIGHT)
            if row in selected:
                painter.setPen(palette.highlightedText().color())
            elif line.stream == "stderr":
                painter.setPen(_STDERR_TINT)
            else:
                painter.setPen(text_color)
            # A plain string to drawText: never rich text, whatever the line says.
            painter.drawText(QRect(x0, y, width - x0 + 100_000, row_h), flags, text)
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            super().mousePressEvent(event)
            return
        row = self.row_at(int(event.position().y()))
        if row >= self._model.rowCount():
            self.clear_selection()
            return
        seq = self._model.seq_at(row)
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier and self._anchor is not None:
            self._head = seq
        else:
            self._anchor = self._head = seq
        self.viewport().update()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if not event.buttons() & Qt.MouseButton.LeftButton or self._anchor is None:
            return
        y = int(event.position().y())
        if y < 0:
            self.verticalScrollBar().triggerAction(QScrollBar.SliderAction.SliderSingleStepSub)
        elif y > self.viewport().height():
            self.verticalScrollBar().triggerAction(QScrollBar.SliderAction.SliderSingleStepAdd)
        rows = self._model.rowCount()
        if rows:
            row = max(0, min(rows - 1, self.row_at(y)))
            self._head = self._model.seq_at(row)
            self.viewport().update()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        ctrl = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
        if event.matches(QKeySequence.StandardKey.Copy):
            self.copy_selection()
        elif event.matches(QKeySequence.StandardKey.SelectAll):
            self.select_all()
        elif event.key() == Qt.Key.Key_End and ctrl:
            self.set_follow(True)
        elif event.key() == Qt.Key.Key_Home and ctrl:
            self.verticalScrollBar().triggerAction(QScrollBar.SliderAction.SliderToMinimum)
        elif event.key() == Qt.Key.Key_Escape:
            self.clear_selection()
        else:
            # Arrows and page keys scroll, through the scrollbar's own actions.
            super().keyPressEvent(event)

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        self._build_context_menu().exec(event.globalPos())

    def _build_context_menu(self) -> QMenu:
        menu = QMenu(self)
        copy = menu.addAction(self.tr("Copy"))
        copy.setEnabled(bool(self.selected_rows()))
        copy.triggered.connect(self.copy_selection)
        select_all = menu.addAction(self.tr("Select All"))
        select_all.triggered.connect(self.select_all)
        follow = menu.addAction(self.tr("Follow"))
        follow.setCheckable(True)
        follow.setChecked(self._follow)
        follow.toggled.connect(self.set_follow)
        return menu


class LogToolbar(QWidget):
    """The controls above a :class:`LogView`; every control acts on it."""

    def __init__(self, view: LogView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._view = view
        model = view.log_model()
        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        outer.setSpacing(2)
        layout = QHBoxLayout()
        layout.setContentsMargins(0, 0, 0, 0)
        outer.addLayout(layout)

        self.follow = QToolButton(self)
        self.follow.setText(self.tr("Follow"))
        self.follow.setCheckable(True)
        self.follow.setChecked(view.follows())
        self.follow.setToolTip(self.tr("Keep scrolling to the newest line"))
        self.follow.toggled.connect(view.set_follow)
        view.follow_changed.connect(self.follow.setChecked)

        self.timestamps = QToolButton(self)
        self.timestamps.setText(self.tr("Timestamps"))
        self.timestamps.setCheckable(True)
        self.timestamps.setChecked(model.show_timestamps())
        self.timestamps.toggled.connect(model.set_show_timestamps)

        self.filter_edit = QLineEdit(self)
        self.filter_edit.setPlaceholderText(self.tr("Filter (show matching lines)"))
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setMinimumWidth(180)
        self.regex = QCheckBox(self.tr("Regex"), self)
        self.case = QCheckBox(self.tr("Match case"), self)
        self.highlight_edit = QLineEdit(self)
        self.highlight_edit.setPlaceholderText(self.tr("Highlight"))
        self.highlight_edit.setClearButtonEnabled(True)
        self.highlight_edit.setMinimumWidth(110)

        self.message = QLabel(self)
        self.message.setStyleSheet("color: #c0392b;")
        self.message.setTextFormat(Qt.TextFormat.PlainText)
        # Its own row under the controls, shown only with a message: a long
        # regex error must neither widen the panel nor squeeze the controls.
        self.message.setWordWrap(True)
        self.message.hide()
        self.dropped = QLabel(self)
        self.dropped.setTextFormat(Qt.TextFormat.PlainText)

        self.copy = QToolButton(self)
        self.copy.setText(self.tr("Copy"))
        self.copy.setToolTip(self.tr("Copy the selected lines"))
        self.copy.clicked.connect(view.copy_selection)
        self.save = QToolButton(self)
        self.save.setText(self.tr("Save…"))
        self.save.setToolTip(self.tr("Save the lines shown (only matching lines when filtered)"))
        self.save.clicked.connect(self._save_clicked)
        self.clear = QToolButton(self)
        self.clear.setText(self.tr("Clear"))
        self.clear.setToolTip(self.tr("Empty the buffer (the container's log is untouched)"))
        self.clear.clicked.connect(model.clear)

        controls: list[QWidget] = [
            self.follow,
            self.timestamps,
            self.filter_edit,
            self.regex,
            self.case,
            self.highlight_edit,
        ]
        for widget in controls:
            layout.addWidget(widget)
        layout.addStretch(1)
        for widget in (self.dropped, self.copy, self.save, self.clear):
            layout.addWidget(widget)
        outer.addWidget(self.message)

        self.filter_edit.textChanged.connect(self._apply_filter)
        self.regex.toggled.connect(self._apply_filter)
        self.case.toggled.connect(self._apply_filter)
        self.highlight_edit.textChanged.connect(self._apply_highlight)
        self.regex.toggled.connect(self._apply_highlight)
        self.case.toggled.connect(self._apply_highlight)
        model.dropped_changed.connect(self._show_dropped)
        self._show_dropped(model.dropped)

    def _apply_filter(self) -> None:
        try:
            self._view.log_model().set_filter(
                self.filter_edit.text(),
                regex=self.regex.isChecked(),
                case_sensitive=self.case.isChecked(),
            )
        except re.error as exc:
            self._show_message(self.tr("Invalid regex: {0} (filter unchanged)").format(exc))
            return
        self._show_message("")

    def _apply_highlight(self) -> None:
        try:
            self._view.set_highlight(
                self.highlight_edit.text(),
                regex=self.regex.isChecked(),
                case_sensitive=self.case.isChecked(),
            )
        except re.error as exc:
            self._show_message(self.tr("Invalid regex: {0} (highlight unchanged)").format(exc))
            return
        self._show_message("")

    def _show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))

    def _show_dropped(self, count: int) -> None:
        self.dropped.setText(self.tr("{0:,} lines dropped").format(count) if count else "")
        self.dropped.setVisible(bool(count))

    def _save_clicked(self) -> None:
        path, _selected = QFileDialog.getSaveFileName(
            self, self.tr("Save log"), "container.log", self.tr("Log files (*.log *.txt)")
        )
        if path:
            self.save_to(path)

    def save_to(self, path: str | Path) -> int:
        """Save what the view shows (filtered lines when a filter is active)."""
        model = self._view.log_model()
        try:
            return model.save(path, filtered=model.filter_pattern() is not None)
        except OSError as exc:
            QMessageBox.warning(
                self,
                self.tr("Could not save the log"),
                self.tr(
                    "Writing {0} failed: {1}. Choose another folder or free some space."
                ).format(path, exc.strerror or exc),
            )
            return 0


class LogPanel(QWidget):
    """A :class:`LogToolbar` above a :class:`LogView`, ready to drop into a page."""

    def __init__(self, capacity: int = 100_000, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = LogModel(capacity, self)
        self.view = LogView(self.model, self)
        self.toolbar = LogToolbar(self.view, self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.view, 1)

    def append_lines(self, items: Iterable[LogLine | str | tuple[str | None, str, str]]) -> None:
        self.view.append_lines(items)
