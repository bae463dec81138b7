"""The Machine page's Ports tab: the live table of forwarded ports and the LAN opt-in.

Rows come from berthd's status (``ports`` in ``machine.status``/``machine.list``; one
row per published port: container, guest port, host address and port, protocol, state,
open connections), which the page already polls every 2 s while it is visible and the VM
is up; this tab only renders what the page hands it, so it costs no request of its own.

A TCP row that listens opens ``http://localhost:PORT`` in the browser (button or
double-click). Rows whose state is not "listening" (a conflict: the host port is taken;
an error; UDP from a guest without the agent, which is not forwarded) say so in plain
words and cannot be opened. The connection count is "—" where berthd cannot know it
(UDP; a QEMU forward whose QEMU did not answer).

The LAN opt-in is the spec's ``expose_ports_on_lan``: off, every forwarded port binds
127.0.0.1 only; on, ports that containers publish on all interfaces bind 0.0.0.0, so
other computers on the network reach them. Turning it on asks first; either way it
applies at the VM's next start, which the tab says, offering a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QBrush, QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.pages.details._base import plain_label
from app.widgets.boxes import ask_destructive

COLUMNS = ("Container", "Guest port", "Host address", "Host port", "Protocol", "State",
           "Connections")
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})
_PROBLEM = QColor("#b3261e")


@dataclass(frozen=True)
class PortRow:
    """One forwarded port as berthd reports it (missing keys read as empty)."""

    container_id: str
    container_name: str
    protocol: str
    guest_port: int
    host_address: str
    host_port: int
    state: str
    connections: int | None  # None: unknown (UDP, or QEMU did not say)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PortRow:
        def number(key: str) -> int:
            try:
                return int(doc.get(key) or 0)
            except (TypeError, ValueError):
                return 0

        return cls(
            container_id=str(doc.get("container_id") or ""),
            container_name=str(doc.get("container_name") or ""),
            protocol=str(doc.get("protocol") or "tcp").lower(),
            guest_port=number("guest_port"),
            host_address=str(doc.get("host_address") or ""),
            host_port=number("host_port"),
            state=str(doc.get("state") or ""),
            connections=None if doc.get("connections") is None else number("connections"),
        )

    @property
    def key(self) -> tuple[str, str, int, str, int]:
        return (self.container_id, self.protocol, self.guest_port, self.host_address,
                self.host_port)

    @property
    def listening(self) -> bool:
        return self.state == "listening"

    @property
    def openable(self) -> bool:
        return self.listening and self.protocol == "tcp" and self.host_port > 0

    @property
    def container(self) -> str:
        return self.container_name.lstrip("/") or self.container_id[:12]

    def url(self) -> str:
        """What "Open" opens: localhost for loopback and wildcard binds, else the address."""
        host = self.host_address
        if host in _WILDCARDS or host.startswith("127.") or host in ("::1", "[::1]"):
            host = "localhost"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.host_port}/"


def state_words(row: PortRow) -> str:
    """The row's state in plain words (berthd's own words after the kind)."""
    state = row.state
    if state == "listening":
        return "Listening"
    if state.startswith("conflict"):
        why = state.partition(":")[2].strip() or "the host port is in use"
        return f"Conflict: {why} — stop whatever uses port {row.host_port} on this computer"
    if state.startswith("udp"):
        return "UDP: not forwarded (the VM has no agent)"
    if state.startswith("error"):
        return "Error: " + (state.partition(":")[2].strip() or "unknown")
    return state or "—"


def parse_ports(doc: dict[str, Any] | None) -> list[PortRow]:
    rows = (doc or {}).get("ports")
    if not isinstance(rows, list):
        return []
    out = [PortRow.from_json(r) for r in rows if isinstance(r, dict)]
    out.sort(key=lambda r: (r.host_port, r.protocol, r.host_address, r.container))
    return out


class PortsTab(QWidget):
    """The forwarded ports, live, and the LAN exposure switch."""

    #: The user confirmed a new ``expose_ports_on_lan`` value (the page saves it).
    lan_change_requested = Signal(bool)
    #: "Restart now" after a LAN change.
    restart_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[PortRow] = []
        self._state = ""
        self._lan = False
        self._lan_saving = False  # a change is on its way to berthd
        self._pid: object = None  # the QEMU run of the last status
        self._pending_pid: object = None  # the run that was up when a change was saved
        self._pending = False  # a saved change waits for the next start
        self.summary = plain_label("", self)
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels([self.tr(c) for c in COLUMNS])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        for i in range(len(COLUMNS)):
            header.setSectionResizeMode(i, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(False)
        self.open_button = QPushButton(self.tr("Open in browser"), self)
        self.open_button.setEnabled(False)
        self.open_button.setToolTip(self.tr("Open http://localhost:PORT for the selected row"))

        self.lan_box = QCheckBox(self.tr("Expose published ports to the local network"), self)
        self.lan_note = plain_label("", self)
        self.lan_note.setWordWrap(True)
        self.restart_button = QPushButton(self.tr("Restart now"), self)
        self.restart_button.hide()

        bar = QHBoxLayout()
        bar.addWidget(self.summary, 1)
        bar.addWidget(self.open_button)
        lan_row = QHBoxLayout()
        lan_row.addWidget(self.lan_box)
        lan_row.addStretch(1)
        lan_row.addWidget(self.restart_button)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.table, 1)
        layout.addLayout(lan_row)
        layout.addWidget(self.lan_note)

        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_row(row))
        self.open_button.clicked.connect(self.open_selected)
        self.lan_box.clicked.connect(self._lan_clicked)
        self.restart_button.clicked.connect(self.restart_requested)
        self._render_lan_note(pending=False)
        self.set_status(None)

    # ---- rendering -----------------------------------------------------------------------
    def set_status(self, doc: dict[str, Any] | None) -> None:
        """Render the ports (and the LAN setting) of a status document."""
        state = str((doc or {}).get("state") or "")
        spec = (doc or {}).get("spec") or {}
        self._state = state
        if isinstance(spec, dict) and "expose_ports_on_lan" in spec:
            lan = bool(spec.get("expose_ports_on_lan"))
            if lan != self._lan or self.lan_box.isChecked() != lan:
                self._lan = lan
                self.lan_box.setChecked(lan)
                self._render_lan_note(pending=False)
        self.lan_box.setEnabled(doc is not None and not self._lan_saving)
        self._pid = (doc or {}).get("pid") if state == "running" else None
        if self._pending and self._pid is not None and self._pid != self._pending_pid:
            self._render_lan_note(pending=False)  # a new QEMU run: the change applies now
        rows = parse_ports(doc) if state == "running" else []
        if rows != self.rows:
            self._set_rows(rows)
        self._render_summary()

    def _set_rows(self, rows: list[PortRow]) -> None:
        selected = self.selected_row()
        keep = selected.key if selected is not None else None
        self.rows = rows
        table = self.table
        table.blockSignals(True)
        table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            cells = (
                row.container,
                str(row.guest_port) if row.guest_port else "—",
                row.host_address or "—",
                str(row.host_port) if row.host_port else "—",
                row.protocol.upper(),
                self.tr(state_words(row)),
                str(row.connections) if row.connections is not None else "—",
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)  # table cells are plain text
                if col == 0:
                    item.setToolTip(row.container_id)
                if col in (1, 3, 6):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                if col == 5:
                    item.setToolTip(row.state)
                    if not row.listening:
                        item.setForeground(QBrush(_PROBLEM))
                table.setItem(i, col, item)
        table.clearSelection()
        if keep is not None:
            for i, row in enumerate(rows):
                if row.key == keep:
                    table.selectRow(i)
                    break
        table.blockSignals(False)
        self._selection_changed()

    def _render_summary(self) -> None:
        if self._state != "running":
            text = self.tr("Forwarded ports appear here while the VM runs.")
        elif not self.rows:
            text = self.tr(
                "No published ports. A container started with -p 8080:80 in the VM's engine "
                "appears here, reachable at localhost:8080."
            )
        else:
            problems = sum(1 for r in self.rows if not r.listening)
            text = self.tr("{0} forwarded port(s)").format(len(self.rows))
            if problems:
                text += self.tr("; {0} not reachable from this computer (see State)").format(
                    problems
                )
            text += self.tr(". Double-click a TCP row to open it in the browser.")
        self.summary.setText(text)

    def _render_lan_note(self, pending: bool) -> None:
        self._pending = pending
        if self._lan:
            text = self.tr(
                "Exposed: ports that containers publish on all interfaces are bound on "
                "0.0.0.0, so other computers on your network can reach them."
            )
        else:
            text = self.tr(
                "Private: every forwarded port is bound on 127.0.0.1, reachable from this "
                "computer only."
            )
        if pending:
            text += " " + self.tr(
                "This change applies at the VM's next start; until then the ports stay as "
                "they are."
            )
        self.lan_note.setText(text)
        self.restart_button.setVisible(pending and self._state == "running")

    # ---- selection and opening -----------------------------------------------------------
    def selected_row(self) -> PortRow | None:
        selected = self.table.selectionModel().selectedRows()
        if not selected:
            return None
        index = selected[0].row()
        return self.rows[index] if 0 <= index < len(self.rows) else None

    def _selection_changed(self) -> None:
        row = self.selected_row()
        self.open_button.setEnabled(row is not None and row.openable)

    def open_selected(self) -> None:
        row = self.selected_row()
        if row is not None:
            self.open_row(self.rows.index(row))

    def open_row(self, index: int) -> bool:
        """Open the row's URL in the browser (False when that row cannot be opened)."""
        if not 0 <= index < len(self.rows) or not self.rows[index].openable:
            return False
        return bool(QDesktopServices.openUrl(QUrl(self.rows[index].url())))

    # ---- LAN opt-in ----------------------------------------------------------------------
    def confirm_expose(self) -> bool:
        return ask_destructive(self, self.tr("Expose ports to the network"), self.tr(
            "Expose published ports to the local network?\n\n"
            "Ports that containers publish on all interfaces (docker run -p 8080:80) will "
            "be reachable by every computer that can reach this one, not just by you. "
            "Anything those containers serve (databases, admin pages, development servers) "
            "is then open to them, usually without a password.\n\n"
            "Ports published on one address (-p 127.0.0.1:8080:80) stay private. The change "
            "applies at the VM's next start."
        ), self.tr("Expose"))

    def _lan_clicked(self, checked: bool) -> None:
        # The box shows the saved value until berthd accepts the change.
        self.lan_box.setChecked(self._lan)
        if checked == self._lan:
            return
        if checked and not self.confirm_expose():
            return
        self._lan_saving = True
        self.lan_box.setEnabled(False)
        self.lan_change_requested.emit(checked)

    def lan_saved(self, value: bool) -> None:
        """berthd took the change (the page calls this)."""
        self._lan_saving = False
        self._lan = value
        self._pending_pid = self._pid
        self.lan_box.setChecked(value)
        self.lan_box.setEnabled(True)
        self._render_lan_note(pending=True)

    def lan_failed(self, message: str) -> None:
        self._lan_saving = False
        self.lan_box.setChecked(self._lan)
        self.lan_box.setEnabled(True)
        self.lan_note.setText(self.tr("The setting was not saved: {0}").format(message))
