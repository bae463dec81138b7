"""The keyed-table machinery the object pages (images, volumes, networks) share.

:class:`KeyedTableModel` keeps rows keyed by a string and changes them only through
row inserts, row removes and ``dataChanged``: a live update never resets the model, so
the selection and the scroll position survive engine events. :class:`ObjectFilterProxy`
sorts on raw values (bytes, timestamps) rather than display text and filters on every
column plus an optional predicate. :class:`Column` describes one column;
:func:`safe_tooltip` and :func:`format_time` are the cell helpers the dialogs reuse.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Index = QModelIndex | QPersistentModelIndex

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
ITEM_ROLE = Qt.ItemDataRole.UserRole + 2
KEY_ROLE = Qt.ItemDataRole.UserRole + 3


def safe_tooltip(text: str) -> str:
    """A tooltip that shows ``text`` literally.

    Qt renders a tooltip as rich text when it merely *looks* like HTML, so engine text
    (names, commands) is escaped and wrapped to force a literal rendering.
    """
    if not text:
        return ""
    return f"<qt>{html.escape(text)}</qt>"


def format_time(epoch: float) -> str:
    if epoch <= 0:
        return ""
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class Column(Generic[T]):
    """One column: its title, its text, and the raw value it sorts by."""

    title: str
    text: Callable[[T], str]
    sort: Callable[[T], Any] | None = None
    tooltip: Callable[[T], str] | None = None
    align_right: bool = False


class KeyedTableModel(QAbstractTableModel, Generic[T]):
    """Rows of ``T`` keyed by ``key(item)``, changed only by inserts/removes/dataChanged."""

    def __init__(
        self,
        columns: Sequence[Column[T]],
        key: Callable[[T], str],
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.columns = tuple(columns)
        self._key = key
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}
        self._items: dict[str, T] = {}

    # ---- Qt API ------------------------------------------------------------------------
    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's default
        return 0 if parent.isValid() else len(self._keys)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if (
            orientation == Qt.Orientation.Horizontal
            and role == Qt.ItemDataRole.DisplayRole
            and 0 <= section < len(self.columns)
        ):
            return self.columns[section].title
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        # Views call this thousands of times with whatever index they hold; a bad index
        # or an odd engine value must show an empty cell, never raise into Qt.
        try:
            return self._data(index, role)
        except Exception:
            log.exception("model data() failed")
            return None

    def _data(self, index: Index, role: int) -> Any:
        if not index.isValid() or index.parent().isValid():
            return None
        row, col = index.row(), index.column()
        if not (0 <= row < len(self._keys) and 0 <= col < len(self.columns)):
            return None
        key = self._keys[row]
        item = self._items[key]
        column = self.columns[col]
        if role == Qt.ItemDataRole.DisplayRole:
            return self.cell_text(key, item, col)
        if role == SORT_ROLE:
            value = self.cell_sort(key, item, col)
            return value if value is not None else self.cell_text(key, item, col)
        if role == Qt.ItemDataRole.ToolTipRole:
            return safe_tooltip(column.tooltip(item)) if column.tooltip else None
        if role == Qt.ItemDataRole.TextAlignmentRole and column.align_right:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == ITEM_ROLE:
            return item
        if role == KEY_ROLE:
            return key
        return None

    def cell_text(self, key: str, item: T, col: int) -> str:
        return self.columns[col].text(item)

    def cell_sort(self, key: str, item: T, col: int) -> Any:
        sort = self.columns[col].sort
        return sort(item) if sort else None

    # ---- access ------------------------------------------------------------------------
    def row_keys(self) -> list[str]:
        return list(self._keys)

    def items(self) -> list[T]:
        return [self._items[k] for k in self._keys]

    def item(self, key: str) -> T | None:
        return self._items.get(key)

    def row_of(self, key: str) -> int:
        return self._rows.get(key, -1)

    def item_at(self, row: int) -> T | None:
        return self._items[self._keys[row]] if 0 <= row < len(self._keys) else None

    # ---- changes -----------------------------------------------------------------------
    def upsert(self, items: Iterable[T]) -> None:
        """Update rows in place (dataChanged) and append new ones (one insert)."""
        new: list[tuple[str, T]] = []
        last = len(self.columns) - 1
        for item in items:
            key = self._key(item)
            row = self._rows.get(key)
            if row is None:
                if key not in dict(new):
                    new.append((key, item))
                continue
            self._items[key] = item
            self.dataChanged.emit(self.index(row, 0), self.index(row, last))
        if new:
            first = len(self._keys)
            self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
            for offset, (key, item) in enumerate(new):
                self._keys.append(key)
                self._rows[key] = first + offset
                self._items[key] = item
            self.endInsertRows()

    def remove_keys(self, keys: Iterable[str]) -> None:
        """Remove rows, one contiguous range at a time, from the bottom up."""
        rows = sorted({self._rows[k] for k in keys if k in self._rows}, reverse=True)
        i = 0
        while i < len(rows):
            end = start = rows[i]
            while i + 1 < len(rows) and rows[i + 1] == start - 1:
                i += 1
                start = rows[i]
            self.beginRemoveRows(QModelIndex(), start, end)
            for key in self._keys[start : end + 1]:
                del self._rows[key]
                del self._items[key]
            del self._keys[start : end + 1]
            self.endRemoveRows()
            i += 1
        if rows:
            self._rows = {k: r for r, k in enumerate(self._keys)}

    def replace_all(self, items: Iterable[T]) -> None:
        """Make the rows equal ``items`` by removes, updates and inserts (no reset)."""
        fresh = list(items)
        keep = {self._key(i) for i in fresh}
        self.remove_keys([k for k in self._keys if k not in keep])
        self.upsert(fresh)

    def column_changed(self, col: int) -> None:
        """Tell views one column of every row changed (sizes or usage arrived)."""
        if self._keys:
            self.dataChanged.emit(self.index(0, col), self.index(len(self._keys) - 1, col))


class ObjectFilterProxy(QSortFilterProxyModel):
    """Sorts by raw values; filters by search text on all columns and a predicate."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setFilterKeyColumn(-1)
        self.setSortCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self._predicate: Callable[[Any], bool] | None = None

    def set_predicate(self, predicate: Callable[[Any], bool] | None) -> None:
        self.beginFilterChange()
        self._predicate = predicate
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        if self._predicate is not None:
            source = self.sourceModel()
            item = source.data(source.index(source_row, 0, source_parent), ITEM_ROLE)
            if item is None or not self._predicate(item):
                return False
        return super().filterAcceptsRow(source_row, source_parent)

    def lessThan(self, left: Index, right: Index) -> bool:
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        try:
            return bool(a < b)
        except TypeError:
            # Mixed types (a missing value against a number): order by text instead.
            return str(a) < str(b)
