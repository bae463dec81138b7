"""Events: the engine's event stream, live, bounded and filterable.

Events arrive batched from :class:`app.session.EngineSession` (one signal per 100 ms at
most). The model keeps the last ``MAX_EVENTS`` and removes the oldest rows as new ones
come in (row removes/inserts, never a reset), so selection and scroll survive a storm.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import (
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.models.simple_table import SimpleTableModel
from app.pages.registry import register_page
from app.session import EngineSession
from vm_backend.engine.models import Event

if TYPE_CHECKING:
    from app.context import AppContext

MAX_EVENTS = 10_000
COLUMNS = ("Time", "Type", "Action", "Name", "ID", "Details")
TYPES = ("", "container", "image", "volume", "network", "daemon", "plugin")


def _details(event: Event) -> str:
    skip = {"name"}
    parts = [f"{k}={v}" for k, v in sorted(event.attributes.items()) if k not in skip]
    if event.detail:
        parts.insert(0, event.detail)
    return ", ".join(parts)


class EventsModel(SimpleTableModel):
    columns = COLUMNS

    def __init__(self, capacity: int = MAX_EVENTS, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.capacity = capacity
        self.events: deque[Event] = deque()
        self.dropped = 0

    def append(self, events: list[Event]) -> None:
        if not events:
            return
        events = events[-self.capacity :]
        overflow = len(self.events) + len(events) - self.capacity
        if overflow > 0:
            self.beginRemoveRows(QModelIndex(), 0, overflow - 1)
            for _ in range(overflow):
                self.events.popleft()
            self.dropped += overflow
            self.endRemoveRows()
        first = len(self.events)
        self.beginInsertRows(QModelIndex(), first, first + len(events) - 1)
        self.events.extend(events)
        self.endInsertRows()

    def clear(self) -> None:
        if not self.events:
            return
        self.beginRemoveRows(QModelIndex(), 0, len(self.events) - 1)
        self.events.clear()
        self.endRemoveRows()

    def row_count(self) -> int:
        return len(self.events)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = 0) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self.events):
            return None
        ev = self.events[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.UserRole:
            return ev
        if role == Qt.ItemDataRole.InitialSortOrderRole:
            return ev.time_nano
        if role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return None
        if col == 0:
            if not ev.time_nano:
                return ""
            return datetime.fromtimestamp(ev.time_nano / 1e9).strftime("%H:%M:%S.%f")[:-3]
        if col == 1:
            return ev.type
        if col == 2:
            return ev.action
        if col == 3:
            return ev.name
        if col == 4:
            return ev.id[:12] if role == Qt.ItemDataRole.DisplayRole else ev.id
        if col == 5:
            return _details(ev)
        return None


class EventsFilter(QSortFilterProxyModel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = ""
        self.type = ""

    def set_filter(self, text: str, type_: str) -> None:
        # Qt 6.10 replaced invalidateFilter() with a begin/end pair; keep older Qt working.
        if hasattr(self, "beginFilterChange"):
            self.beginFilterChange()
            self.text, self.type = text.lower().strip(), type_
            self.endFilterChange()
        else:
            self.text, self.type = text.lower().strip(), type_
            self.invalidateFilter()

    def filterAcceptsRow(self, row: int, parent: QModelIndex | QPersistentModelIndex) -> bool:
        model = self.sourceModel()
        if not isinstance(model, EventsModel) or not 0 <= row < len(model.events):
            return False
        ev = model.events[row]
        if self.type and ev.type != self.type:
            return False
        if not self.text:
            return True
        hay = " ".join((ev.type, ev.action, ev.name, ev.id, _details(ev))).lower()
        return self.text in hay


class EventsPage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self._session: EngineSession | None = None
        layout = QVBoxLayout(self)
        bar = QHBoxLayout()
        self.search = QLineEdit()
        self.search.setPlaceholderText("Filter: action, name, id, attribute…")
        self.search.setClearButtonEnabled(True)
        self.type = QComboBox()
        for t in TYPES:
            self.type.addItem(t or "All types", t)
        self.pause = QCheckBox("Pause")
        self.clear_button = QPushButton("Clear")
        self.count = QLabel("")
        self.count.setTextFormat(Qt.TextFormat.PlainText)
        bar.addWidget(self.search, 1)
        bar.addWidget(self.type)
        bar.addWidget(self.pause)
        bar.addWidget(self.clear_button)
        bar.addWidget(self.count)
        layout.addLayout(bar)
        self.model = EventsModel(parent=self)
        self.proxy = EventsFilter(self)
        self.proxy.setSourceModel(self.model)
        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.verticalHeader().hide()
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setWordWrap(False)
        header = self.view.horizontalHeader()
        for col in range(len(COLUMNS) - 1):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        layout.addWidget(self.view, 1)
        self.note = QLabel("Events appear here as the engine reports them.")
        self.note.setObjectName("muted")
        layout.addWidget(self.note)
        self._held: list[Event] = []

        self.search.textChanged.connect(self._refilter)
        self.type.currentIndexChanged.connect(self._refilter)
        self.pause.toggled.connect(self._pause_toggled)
        self.clear_button.clicked.connect(self._clear)
        ctx.session_changed.connect(self._attach)
        self._attach(ctx.session)
        self._update_count()

    def _attach(self, session: EngineSession | None) -> None:
        if self._session is not None:
            try:
                self._session.events.disconnect(self.add_events)
            except (RuntimeError, TypeError):
                pass
        self._session = session
        if session is not None:
            session.events.connect(self.add_events)
            ep = session.endpoint
            where = ep.url if ep.name == ep.url else f"{ep.name} ({ep.url})"
            self.note.setText(f"Live from {where}.")
        else:
            self.note.setText("No engine: events appear once one answers.")

    def add_events(self, events: list[Event]) -> None:
        if self.pause.isChecked():
            self._held.extend(events)
            del self._held[: max(0, len(self._held) - MAX_EVENTS)]
        else:
            at_bottom = self.view.verticalScrollBar().value() >= (
                self.view.verticalScrollBar().maximum() - 2
            )
            self.model.append(events)
            if at_bottom:
                self.view.scrollToBottom()
        self._update_count()

    def _pause_toggled(self, paused: bool) -> None:
        if not paused and self._held:
            held, self._held = self._held, []
            self.model.append(held)
            self.view.scrollToBottom()
        self._update_count()

    def _clear(self) -> None:
        self.model.clear()
        self._held.clear()
        self._update_count()

    def _refilter(self) -> None:
        self.proxy.set_filter(self.search.text(), str(self.type.currentData() or ""))
        self._update_count()

    def _update_count(self) -> None:
        shown, total = self.proxy.rowCount(), self.model.rowCount()
        held = f", {len(self._held)} held while paused" if self._held else ""
        self.count.setText(f"{shown} of {total} events{held}")


register_page("events", "Events", EventsPage, "view-list-details")
