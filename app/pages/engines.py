"""Engines: every endpoint found, its version/OS/arch/state; switch, add, remove, default.

Endpoints come from discovery (DOCKER_HOST, the docker context, the platform's engines —
rootful/rootless Docker and Podman on Linux; Docker Desktop and the podman machine on macOS
and Windows; Colima, OrbStack and Rancher Desktop on macOS —, Berth's VM) plus the ones the
user added by hand (``unix://``, ``npipe://`` on Windows, ``ssh://user@host`` — docker-py's paramiko
transport checks the host key against known_hosts and refuses unknown hosts —,
``tcp://``). Probing happens on worker threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.models.simple_table import SimpleTableModel
from app.pages.registry import register_page
from vm_backend.engine.discovery import address_examples, normalise_url, probe
from vm_backend.engine.models import Endpoint, EndpointSource
from vm_backend.errors import InputError

if TYPE_CHECKING:
    from app.context import AppContext

COLUMNS = ("", "Name", "Kind", "Version", "API", "OS/arch", "State", "Address")
_SCHEMES = ("unix://", "ssh://", "tcp://", "npipe://")


def validate_engine_url(text: str) -> str:
    url = normalise_url(text)
    if not url:
        raise InputError("The address is empty.", f"e.g. {address_examples()}")
    if not url.startswith(_SCHEMES):
        raise InputError(f"{text!r} is not an engine address.", f"Use {address_examples()}.")
    if url.startswith("ssh://") and "@" not in url:
        raise InputError("An SSH address needs a user.", "Write ssh://user@host.")
    if any(c.isspace() for c in url):
        raise InputError("The address contains spaces.", "Remove them.")
    return url


class EndpointsModel(SimpleTableModel):
    columns = COLUMNS

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.endpoints: list[Endpoint] = []
        self.active_url = ""

    def set_endpoints(self, endpoints: list[Endpoint], active_url: str) -> None:
        # A handful of rows that all may change: a reset is right here (no live diffs).
        self.beginResetModel()
        self.endpoints = list(endpoints)
        self.active_url = active_url
        self.endResetModel()

    def row_count(self) -> int:
        return len(self.endpoints)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = 0) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self.endpoints):
            return None
        ep = self.endpoints[index.row()]
        if role == Qt.ItemDataRole.UserRole:
            return ep
        col = index.column()
        if role == Qt.ItemDataRole.ToolTipRole and col == 6 and not ep.usable:
            return f"{ep.reason}\n{ep.hint}".strip()
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if col == 0:
            return "●" if ep.url == self.active_url else ""
        if col == 1:
            return ep.name
        if col == 2:
            return ep.kind.value if ep.usable else ""
        if col == 3:
            return ep.version
        if col == 4:
            return ep.api_version
        if col == 5:
            return f"{ep.os}/{ep.arch}" if ep.os else ""
        if col == 6:
            return "ready" if ep.usable else f"{ep.status.value}: {ep.reason}"
        if col == 7:
            return ep.url
        return None


class EnginesPage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        layout = QVBoxLayout(self)
        bar = QHBoxLayout()
        self.use_button = QPushButton("Use this engine")
        self.default_button = QPushButton("Make default")
        self.add_button = QPushButton("Add engine…")
        self.remove_button = QPushButton("Remove")
        self.refresh_button = QPushButton("Refresh")
        for b in (
            self.use_button,
            self.default_button,
            self.add_button,
            self.remove_button,
            self.refresh_button,
        ):
            bar.addWidget(b)
        bar.addStretch(1)
        layout.addLayout(bar)
        self.model = EndpointsModel(self)
        self.view = QTableView()
        self.view.setModel(self.model)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.verticalHeader().hide()
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        layout.addWidget(self.view, 1)
        self.hint = QLabel("")
        self.hint.setTextFormat(Qt.TextFormat.PlainText)
        self.hint.setWordWrap(True)
        layout.addWidget(self.hint)
        self.status = QLabel("")
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        self.use_button.clicked.connect(self._use)
        self.default_button.clicked.connect(self._make_default)
        self.add_button.clicked.connect(self._ask_add)
        self.remove_button.clicked.connect(self._remove)
        self.refresh_button.clicked.connect(self.refresh)
        self.view.selectionModel().selectionChanged.connect(self._selection_changed)
        ctx.endpoints_changed.connect(self._endpoints)
        ctx.session_changed.connect(lambda _s: self._endpoints(self.ctx.endpoints))
        self._endpoints(ctx.endpoints)

    def selected(self) -> Endpoint | None:
        rows = self.view.selectionModel().selectedRows()
        if not rows:
            return None
        ep = self.model.data(rows[0], Qt.ItemDataRole.UserRole)
        return ep if isinstance(ep, Endpoint) else None

    def _endpoints(self, endpoints: list[Endpoint]) -> None:
        active = self.ctx.endpoint.url if self.ctx.endpoint is not None else ""
        previous = self.selected()
        self.model.set_endpoints(endpoints, active)
        if previous is not None:
            for row, ep in enumerate(self.model.endpoints):
                if ep.url == previous.url:
                    self.view.selectRow(row)
        self._selection_changed()

    def _selection_changed(self, *args: object) -> None:
        ep = self.selected()
        self.use_button.setEnabled(ep is not None and ep.usable)
        self.default_button.setEnabled(ep is not None)
        self.remove_button.setEnabled(ep is not None and ep.source is EndpointSource.MANUAL)
        if ep is None:
            self.hint.setText("Select an engine to use it, make it the default or remove it.")
        elif ep.usable:
            default = " (the default)" if ep.url == self.ctx.settings.default_engine else ""
            self.hint.setText(
                f"{ep.name}: {ep.kind.value} {ep.version}, API {ep.api_version}, "
                f"{ep.os}/{ep.arch}{default}."
            )
        else:
            self.hint.setText(f"{ep.name}: {ep.reason}. {ep.hint}".strip())

    def refresh(self) -> None:
        self.status.setText("Looking for engines…")
        self.ctx.discover()

    def _use(self) -> None:
        ep = self.selected()
        if ep is not None and ep.usable:
            self.ctx.switch_engine(ep)
            self.status.setText(f"Switched to {ep.name}.")

    def _make_default(self) -> None:
        ep = self.selected()
        if ep is None:
            return
        self.ctx.settings.default_engine = ep.url
        Op(self.ctx.settings.save).success(
            lambda _: self.status.setText(f"{ep.name} is now the default engine.")
        ).failure(lambda err: self.status.setText(user_message(err))).run(self)
        self._selection_changed()

    def _ask_add(self) -> None:
        text, ok = QInputDialog.getText(
            self, "Add an engine", f"Address ({address_examples()}):"
        )
        if ok:
            self.add_engine(text)

    def add_engine(self, text: str) -> None:
        """Validate, probe in the background, remember, and list the engine."""
        try:
            url = validate_engine_url(text)
        except InputError as err:
            self.status.setText(str(err))
            return
        self.status.setText(f"Contacting {url}…")

        def probed(ep: Endpoint) -> None:
            if url not in self.ctx.settings.extra_endpoints:
                self.ctx.settings.extra_endpoints.append(url)
                Op(self.ctx.settings.save).run(self)
            others = [e for e in self.ctx.endpoints if e.url != ep.url]
            self.ctx.endpoints = [*others, ep]
            self.ctx.endpoints_changed.emit(self.ctx.endpoints)
            self.status.setText(
                f"Added {url}: " + ("ready." if ep.usable else f"{ep.reason}. {ep.hint}")
            )

        Op(probe, url, url, EndpointSource.MANUAL).success(probed).failure(
            lambda err: self.status.setText(user_message(err))
        ).run(self)

    def _remove(self) -> None:
        ep = self.selected()
        if ep is None or ep.source is not EndpointSource.MANUAL:
            return
        self.ctx.settings.extra_endpoints = [
            u for u in self.ctx.settings.extra_endpoints if normalise_url(u) != ep.url
        ]
        Op(self.ctx.settings.save).run(self)
        self.ctx.endpoints = [e for e in self.ctx.endpoints if e.url != ep.url]
        self.ctx.endpoints_changed.emit(self.ctx.endpoints)
        self.status.setText(f"Removed {ep.url}.")


register_page("engines", "Engines", EnginesPage, "network-server")
