"""Network dialogs: create (addresses checked with :mod:`ipaddress` as typed) and inspect.

The inspect dialog shows the network's addressing and the containers attached with
their addresses, and connects or disconnects a container picked from the session's
containers. Every engine call runs on a worker; the dialog re-reads the network after
each change.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.dialogs.image_ops import CheckedDialog, plain_label
from app.dialogs.volume_ops import parse_pairs
from vm_backend.engine.convert import network_from_api
from vm_backend.engine.models import Container, Network
from vm_backend.errors import InputError

if TYPE_CHECKING:
    from vm_backend.engine.client import EngineClient

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
DRIVERS = ("bridge", "macvlan", "ipvlan", "overlay")


@dataclass(frozen=True)
class NetworkRequest:
    name: str
    driver: str
    subnet: str
    gateway: str
    internal: bool
    labels: dict[str, str]


def parse_network(name: str, driver: str, subnet: str, gateway: str, internal: bool,
                  labels: str = "") -> NetworkRequest:
    """Check what the user typed; raises InputError saying what to fix."""
    name = name.strip()
    if not name:
        raise InputError("The network needs a name.", "For example: backend.")
    if not _NAME.match(name):
        raise InputError(f"{name!r} is not a valid network name.",
                         "Use letters, digits, _ . and -, starting with a letter or digit.")
    driver = driver.strip()
    if not driver:
        raise InputError("The driver is empty.", "bridge is the usual choice.")
    subnet, gateway = subnet.strip(), gateway.strip()
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    if subnet:
        try:
            net = ipaddress.ip_network(subnet, strict=True)
        except ValueError as err:
            raise InputError(f"Subnet {subnet!r} is not valid: {err}.",
                             "Write it in CIDR form with host bits zero, e.g. 10.42.0.0/24.") \
                from err
        subnet = str(net)
    if gateway:
        if net is None:
            raise InputError("A gateway needs a subnet.", "Fill in the subnet first.")
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError as err:
            raise InputError(f"Gateway {gateway!r} is not an IP address.",
                             "For example 10.42.0.1.") from err
        if gw.version != net.version or gw not in net:
            raise InputError(f"Gateway {gw} is not inside {net}.",
                             "Pick an address from the subnet.")
        if gw in (net.network_address, net.broadcast_address) and net.num_addresses > 2:
            raise InputError(f"{gw} is the subnet's network or broadcast address.",
                             "Use a host address, usually the first one.")
        gateway = str(gw)
    return NetworkRequest(name, driver, subnet, gateway, internal,
                          parse_pairs(labels, "Labels"))


class CreateNetworkDialog(CheckedDialog):
    """Name, driver, subnet, gateway, internal and labels, checked as typed."""

    created = Signal(str)  # network id

    def __init__(self, client: EngineClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.setWindowTitle("Create a network")
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.name = QLineEdit()
        form.addRow("Name:", self.name)
        self.driver = QComboBox()
        self.driver.setEditable(True)
        self.driver.addItems(list(DRIVERS))
        form.addRow("Driver:", self.driver)
        self.subnet = QLineEdit()
        self.subnet.setPlaceholderText("optional, e.g. 10.42.0.0/24")
        form.addRow("Subnet:", self.subnet)
        self.gateway = QLineEdit()
        self.gateway.setPlaceholderText("optional, e.g. 10.42.0.1")
        form.addRow("Gateway:", self.gateway)
        self.internal = QCheckBox("Internal (no access to outside networks)")
        form.addRow("", self.internal)
        self.labels = QPlainTextEdit()
        self.labels.setPlaceholderText("key=value, one per line")
        self.labels.setMaximumHeight(60)
        form.addRow("Labels:", self.labels)
        layout.addLayout(form)
        self.add_buttons(layout, "Create")
        for edit in (self.name, self.subnet, self.gateway):
            edit.textChanged.connect(self.validate)
        self.driver.currentTextChanged.connect(self.validate)
        self.labels.textChanged.connect(self.validate)
        self.validate()

    def request(self) -> NetworkRequest:
        return parse_network(self.name.text(), self.driver.currentText(), self.subnet.text(),
                             self.gateway.text(), self.internal.isChecked(),
                             self.labels.toPlainText())

    def check(self) -> None:
        self.request()

    def untouched(self) -> bool:
        # An untouched name is "not ready", not an error worth red text.
        return not self.name.text().strip()

    def submit(self) -> None:
        if not self.validate():
            return
        req = self.request()
        self.run_op(
            self.client.create_network, req.name, req.driver, req.subnet, req.gateway,
            req.internal, req.labels, then=self.created.emit,
        )


class NetworkInspectDialog(QDialog):
    """A network's addressing and attached containers; connect and disconnect."""

    loaded = Signal()
    changed = Signal(bool, str)  # ok, message (after connect/disconnect)

    def __init__(self, client: EngineClient, network: Network,
                 containers: Callable[[], list[Container]],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.network = network
        self._containers = containers
        self.busy = False
        self.setWindowTitle(f"Network {network.name}")
        self.resize(680, 440)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.fields: dict[str, QLabel] = {}
        for key in ("Name", "ID", "Driver", "Scope", "Subnet", "Gateway", "Internal"):
            label = plain_label(selectable=True)
            form.addRow(f"{key}:", label)
            self.fields[key] = label
        layout.addLayout(form)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Container", "IPv4", "IPv6", "MAC"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        layout.addWidget(self.table, 1)
        row = QHBoxLayout()
        self.picker = QComboBox()
        self.picker.setMinimumContentsLength(24)
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self.connect_picked)
        self.disconnect_button = QPushButton("Disconnect selected")
        self.disconnect_button.clicked.connect(self.disconnect_selected)
        row.addWidget(plain_label("Container:"))
        row.addWidget(self.picker, 1)
        row.addWidget(self.connect_button)
        row.addWidget(self.disconnect_button)
        layout.addLayout(row)
        self.status = plain_label(wrap=True, selectable=True)
        layout.addWidget(self.status)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        layout.addWidget(close)
        self.show_network(network)
        self.reload()

    def reload(self) -> None:
        self.busy = True
        self._update_buttons()

        def got(raw: dict[str, object]) -> None:
            self.show_network(network_from_api(raw))
            self.loaded.emit()

        Op(self.client.inspect_network, self.network.id).success(got).failure(
            lambda err: self.status.setText(user_message(err))
        ).finally_(self._idle).run(self)

    def _idle(self) -> None:
        self.busy = False
        self._update_buttons()

    def show_network(self, network: Network) -> None:
        self.network = network
        values = {
            "Name": network.name, "ID": network.id, "Driver": network.driver,
            "Scope": network.scope, "Subnet": ", ".join(network.subnets) or "none",
            "Gateway": ", ".join(network.gateways) or "none",
            "Internal": "yes" if network.internal else "no",
        }
        for key, text in values.items():
            self.fields[key].setText(text)
        self.table.setRowCount(len(network.attachments))
        for r, a in enumerate(network.attachments):
            for col, text in enumerate((a.container_name, a.ipv4, a.ipv6, a.mac)):
                self.table.setItem(r, col, QTableWidgetItem(text))  # plain item text
        attached = {a.container_id for a in network.attachments}
        current = self.picker.currentData()
        self.picker.clear()
        for c in sorted(self._containers(), key=lambda c: c.name):
            if c.id not in attached:
                self.picker.addItem(f"{c.name} ({c.state.value})", c.id)
        index = self.picker.findData(current)
        if index >= 0:
            self.picker.setCurrentIndex(index)
        self._update_buttons()

    def attached_names(self) -> list[str]:
        return [a.container_name for a in self.network.attachments]

    def pick(self, container_id: str) -> bool:
        index = self.picker.findData(container_id)
        if index >= 0:
            self.picker.setCurrentIndex(index)
        return index >= 0

    def select_attached(self, name: str) -> bool:
        for r, a in enumerate(self.network.attachments):
            if a.container_name == name:
                self.table.selectRow(r)
                return True
        return False

    def _update_buttons(self) -> None:
        self.connect_button.setEnabled(not self.busy and self.picker.count() > 0)
        self.disconnect_button.setEnabled(
            not self.busy and bool(self.table.selectionModel().selectedRows())
        )

    def _change(self, doing: str, fn: Callable[[], None]) -> None:
        self.busy = True
        self._update_buttons()
        self.status.setText(f"{doing}…")

        def ok(_: object) -> None:
            self.status.setText(f"{doing}: done.")
            self.changed.emit(True, doing)
            self.reload()

        def failed(err: BaseException) -> None:
            text = user_message(err)
            self.status.setText(text)
            self.changed.emit(False, text)
            self._idle()

        Op(fn).success(ok).failure(failed).run(self)

    def connect_picked(self) -> None:
        cid = self.picker.currentData()
        if not cid:
            return
        name = self.picker.currentText().split(" (")[0]
        self._change(f"Connecting {name}",
                     lambda: self.client.connect(self.network.id, str(cid)))

    def disconnect_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        a = self.network.attachments[rows[0].row()]
        self._change(f"Disconnecting {a.container_name}",
                     lambda: self.client.disconnect(self.network.id, a.container_id))
