"""The Inspect tab: the engine's inspect JSON as a searchable tree and as raw text.

The tree is a QStandardItemModel (key, value) behind a recursive QSortFilterProxyModel:
a search keeps every row whose key or value matches, with its ancestors (to see where it
is) and its descendants (to see what it holds), and expands the result.
"""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import QSortFilterProxyModel, Qt
from PySide6.QtGui import QFontDatabase, QGuiApplication, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QTabWidget,
    QToolButton,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.pages.details._base import DetailsTab, plain_label

#: The text "Copy value" puts on the clipboard: JSON for objects and arrays.
JSON_ROLE = Qt.ItemDataRole.UserRole + 1


def scalar_text(value: Any) -> str:
    """A JSON scalar as it reads in the tree (strings unquoted, null as 'null')."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def build_items(parent: QStandardItem | QStandardItemModel, data: Any) -> None:
    """Append ``data``'s members under ``parent``: dicts by key, lists by [index]."""
    members: list[tuple[str, Any]]
    if isinstance(data, dict):
        members = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, list):
        members = [(f"[{i}]", v) for i, v in enumerate(data)]
    else:
        return
    for key, value in members:
        copy_text = (
            json.dumps(value, indent=2, ensure_ascii=False)
            if isinstance(value, dict | list)
            else scalar_text(value)
        )
        key_item = QStandardItem(key)
        key_item.setEditable(False)
        key_item.setData(copy_text, JSON_ROLE)
        if isinstance(value, dict | list):
            summary = f"{{{len(value)}}}" if isinstance(value, dict) else f"[{len(value)}]"
            value_item = QStandardItem(summary)
            value_item.setForeground(Qt.GlobalColor.gray)
            build_items(key_item, value)
        else:
            value_item = QStandardItem(scalar_text(value))
        value_item.setEditable(False)
        value_item.setData(copy_text, JSON_ROLE)
        parent.appendRow([key_item, value_item])


class InspectTab(DetailsTab):
    """The inspect document, browsable and searchable, plus the raw JSON."""

    title = "Inspect"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._loaded = False
        self._loading = False
        self.data: dict[str, Any] = {}

        self.search = QLineEdit(self)
        self.search.setPlaceholderText(self.tr("Search keys and values"))
        self.search.setClearButtonEnabled(True)
        self.copy_button = QToolButton(self)
        self.copy_button.setText(self.tr("Copy value"))
        self.copy_button.setToolTip(self.tr("Copy the selected value (as JSON for objects)"))
        self.refresh_button = QToolButton(self)
        self.refresh_button.setText(self.tr("Refresh"))
        self.status = plain_label("", self)

        self.model = QStandardItemModel(0, 2, self)
        self.model.setHorizontalHeaderLabels([self.tr("Key"), self.tr("Value")])
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setRecursiveFilteringEnabled(True)
        self.proxy.setAutoAcceptChildRows(True)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.tree = QTreeView(self)
        self.tree.setModel(self.proxy)
        self.tree.setUniformRowHeights(True)
        self.tree.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.tree.setColumnWidth(0, 260)

        self.raw = QPlainTextEdit(self)
        self.raw.setReadOnly(True)
        self.raw.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.raw.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.copy_raw = QToolButton(self)
        self.copy_raw.setText(self.tr("Copy all"))
        raw_page = QWidget(self)
        raw_layout = QVBoxLayout(raw_page)
        raw_layout.setContentsMargins(0, 0, 0, 0)
        raw_bar = QHBoxLayout()
        raw_bar.addStretch(1)
        raw_bar.addWidget(self.copy_raw)
        raw_layout.addLayout(raw_bar)
        raw_layout.addWidget(self.raw, 1)

        tree_page = QWidget(self)
        tree_layout = QVBoxLayout(tree_page)
        tree_layout.setContentsMargins(0, 0, 0, 0)
        bar = QHBoxLayout()
        bar.addWidget(self.search, 1)
        bar.addWidget(self.copy_button)
        bar.addWidget(self.refresh_button)
        tree_layout.addLayout(bar)
        tree_layout.addWidget(self.tree, 1)

        self.views = QTabWidget(self)
        self.views.setDocumentMode(True)
        self.views.addTab(tree_page, self.tr("Tree"))
        self.views.addTab(raw_page, self.tr("Raw JSON"))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.views, 1)
        layout.addWidget(self.status)

        self.search.textChanged.connect(self.set_search)
        self.copy_button.clicked.connect(self.copy_selected)
        self.refresh_button.clicked.connect(self.refresh)
        self.copy_raw.clicked.connect(
            lambda: QGuiApplication.clipboard().setText(self.raw.toPlainText())
        )

    # ---- lifecycle -------------------------------------------------------------------
    def reset(self) -> None:
        self._loaded = False
        self._loading = False
        self.data = {}
        self.model.removeRows(0, self.model.rowCount())
        self.raw.clear()
        self.status.setText("")

    def activate(self) -> None:
        if not self._loaded and not self._loading:
            self.refresh()

    def refresh(self) -> None:
        if self.client is None or not self.container_id:
            return
        self._loading = True
        self.status.setText(self.tr("Loading…"))
        generation = self.generation
        Op(self.client.inspect_container, self.container_id).success(
            lambda data: self.show_data(data, generation)
        ).failure(lambda err: self._failed(generation, err)).run(self)

    def show_data(self, data: dict[str, Any], generation: int | None = None) -> None:
        """Show an inspect document (also usable without an engine)."""
        if generation is not None and not self.current(generation):
            return
        self._loading = False
        self._loaded = True
        self.data = data
        self.model.removeRows(0, self.model.rowCount())
        build_items(self.model, data)
        self.raw.setPlainText(json.dumps(data, indent=2, ensure_ascii=False))
        self.status.setText("")
        self.set_search(self.search.text())

    def set_search(self, text: str) -> None:
        """Keep rows whose key or value contains ``text`` and expand to show them."""
        self.proxy.setFilterFixedString(text)
        if text:
            self.tree.expandAll()
        else:
            self.tree.collapseAll()

    def match_count(self) -> int:
        """How many rows match the search (keys or values), wherever they are."""
        text = self.search.text().lower()
        count = 0

        def walk(parent: Any) -> None:
            nonlocal count
            for row in range(self.proxy.rowCount(parent)):
                key = self.proxy.index(row, 0, parent)
                value = self.proxy.index(row, 1, parent)
                if text and (text in str(key.data()).lower() or text in str(value.data()).lower()):
                    count += 1
                walk(key)

        walk(self.tree.rootIndex())
        return count

    def copy_selected(self) -> None:
        index = self.tree.currentIndex()
        if not index.isValid():
            self.status.setText(self.tr("Select a row to copy its value."))
            return
        QGuiApplication.clipboard().setText(str(index.data(JSON_ROLE) or ""))
        self.status.setText(self.tr("Copied."))

    def _failed(self, generation: int, err: BaseException) -> None:
        if not self.current(generation):
            return
        self._loading = False
        self.status.setText(user_message(err))
