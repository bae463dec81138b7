"""The "Run a container" dialog: every field checked as you type, nothing lost on refusal.

Each field is parsed with the same :mod:`vm_backend.engine.specs` parser the CLI uses, and
its message appears right under it. Run stays disabled while anything is invalid. When
the engine refuses (unknown image, name taken, port in use...), its own words are shown
in the dialog, which stays open with everything as typed. The equivalent ``docker run``
command can be shown and copied.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from vm_backend.engine.models import EngineInfo, Image, Network
from vm_backend.engine.run import RunRequest
from vm_backend.engine.specs import (
    PortSpec,
    VolumeSpec,
    parse_command,
    parse_container_name,
    parse_cpus,
    parse_env,
    parse_image_ref,
    parse_memory,
    parse_port_spec,
    parse_restart_policy,
    parse_volume_spec,
)
from vm_backend.errors import InputError

if TYPE_CHECKING:
    from app.context import AppContext

RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure", "on-failure:3")
DEFAULT_NETWORK = "(engine default)"


def _error_label() -> QLabel:
    label = QLabel()
    label.setObjectName("fieldError")
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setWordWrap(True)
    label.hide()
    return label


def _set_error(label: QLabel, message: str) -> None:
    label.setText(message)
    label.setVisible(bool(message))


class ListField(QWidget):
    """A list of one-line entries (ports, env, volumes) with add/remove and per-row errors."""

    changed = Signal()

    def __init__(self, placeholder: str, add_text: str, check: Callable[[str], object]) -> None:
        super().__init__()
        self.placeholder = placeholder
        self.check = check
        self.rows: list[tuple[QWidget, QLineEdit, QLabel]] = []
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(3)
        self.add_button = QPushButton(add_text)
        self.add_button.clicked.connect(lambda: self.add_row("", focus=True))
        bar = QHBoxLayout()
        bar.addWidget(self.add_button)
        bar.addStretch(1)
        self._layout.addLayout(bar)

    def add_row(self, text: str = "", focus: bool = False) -> QLineEdit:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(1)
        h = QHBoxLayout()
        h.setSpacing(4)
        edit = QLineEdit(text)
        edit.setPlaceholderText(self.placeholder)
        remove = QToolButton()
        remove.setText("Remove")
        remove.setToolTip("Remove this entry")
        h.addWidget(edit, 1)
        h.addWidget(remove)
        v.addLayout(h)
        error = _error_label()
        v.addWidget(error)
        self._layout.insertWidget(len(self.rows), box)
        box.show()  # at once, not on the layout's queued show: its message may show now
        row = (box, edit, error)
        self.rows.append(row)
        edit.textChanged.connect(lambda _t: self.changed.emit())
        remove.clicked.connect(lambda: self.remove_row(edit))
        if focus:
            edit.setFocus()
        self.changed.emit()
        return edit

    def remove_row(self, edit: QLineEdit) -> None:
        for row in self.rows:
            if row[1] is edit:
                self.rows.remove(row)
                self._layout.removeWidget(row[0])
                row[0].deleteLater()
                break
        self.changed.emit()

    def texts(self) -> list[str]:
        return [edit.text() for _box, edit, _err in self.rows if edit.text().strip()]

    def validate(self) -> list[str]:
        """Check each non-empty row; show and return the messages."""
        messages = []
        for _box, edit, error in self.rows:
            message = ""
            if edit.text().strip():
                try:
                    self.check(edit.text())
                except InputError as err:
                    message = str(err)
            _set_error(error, message)
            if message:
                messages.append(message)
        return messages


class RunDialog(QDialog):
    """Run a container: image, name, command, ports, env, volumes, limits, network."""

    started = Signal(str, str)  # container id, name

    def __init__(self, ctx: AppContext, image: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.session = ctx.session
        self.host_cpus: int | None = None
        self.errors: dict[str, str] = {}
        self._row_error_keys: set[str] = set()
        self.running = False
        self.setWindowTitle("Run a container")
        self.setMinimumWidth(620)
        self._build(image)
        self._load_engine_facts()
        if self.session is not None:
            # Images and networks may still be loading when the dialog opens.
            self.session.diffs.connect(self._diffs_arrived)
        self.validate()

    # ---- layout --------------------------------------------------------------------------
    def _build(self, image: str) -> None:
        outer = QVBoxLayout(self)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        body = QWidget()
        form = QFormLayout(body)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setVerticalSpacing(8)
        self.error_labels: dict[str, QLabel] = {}

        def row(key: str, label: str, widget: QWidget, hint: str = "") -> None:
            box = QWidget()
            v = QVBoxLayout(box)
            v.setContentsMargins(0, 0, 0, 0)
            v.setSpacing(2)
            v.addWidget(widget)
            if hint:
                h = QLabel(hint)
                h.setTextFormat(Qt.TextFormat.PlainText)
                h.setObjectName("muted")
                h.setWordWrap(True)
                v.addWidget(h)
            err = _error_label()
            v.addWidget(err)
            self.error_labels[key] = err
            form.addRow(label, box)

        self.image = QComboBox()
        self.image.setEditable(True)
        self.image.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        for tag in self._local_images():
            self.image.addItem(tag)
        self.image.setCurrentIndex(-1)
        self.image.setEditText(image)
        line = self.image.lineEdit()
        if line is not None:
            line.setPlaceholderText("e.g. nginx:1.27 (local images are listed)")
        self.image.editTextChanged.connect(lambda _t: self.validate())
        row("image", "Image:", self.image)

        self.name = QLineEdit()
        self.name.setPlaceholderText("optional; the engine picks one")
        self.name.textChanged.connect(lambda _t: self.validate())
        row("name", "Name:", self.name)

        self.command = QLineEdit()
        self.command.setPlaceholderText("optional; the image's default command")
        self.command.textChanged.connect(lambda _t: self.validate())
        row("command", "Command:", self.command)

        self.ports = ListField("8080:80  or  127.0.0.1:8443:443/tcp", "Add port", parse_port_spec)
        self.ports.changed.connect(self.validate)
        row("ports", "Ports:", self.ports, "HOST:CONTAINER, published on this machine.")

        self.env = ListField("KEY=value", "Add variable", parse_env)
        self.env.changed.connect(self.validate)
        row("env", "Environment:", self.env)

        self.volumes = ListField("/host/path:/in/container[:ro]  or  volume:/data",
                                 "Add volume", parse_volume_spec)
        self.volumes.changed.connect(self.validate)
        row("volumes", "Volumes:", self.volumes)

        self.restart = QComboBox()
        self.restart.setEditable(True)
        self.restart.addItems(RESTART_POLICIES)
        self.restart.editTextChanged.connect(lambda _t: self.validate())
        row("restart", "Restart policy:", self.restart)

        limits = QWidget()
        lh = QHBoxLayout(limits)
        lh.setContentsMargins(0, 0, 0, 0)
        self.memory = QLineEdit()
        self.memory.setPlaceholderText("no limit (e.g. 512m)")
        self.memory.textChanged.connect(lambda _t: self.validate())
        self.cpus = QLineEdit()
        self.cpus.setPlaceholderText("no limit (e.g. 1.5)")
        self.cpus.textChanged.connect(lambda _t: self.validate())
        mem_label = QLabel("Memory:")
        cpu_label = QLabel("CPUs:")
        lh.addWidget(mem_label)
        lh.addWidget(self.memory, 1)
        lh.addSpacing(12)
        lh.addWidget(cpu_label)
        lh.addWidget(self.cpus, 1)
        row("limits", "Limits:", limits)

        self.network = QComboBox()
        self.network.addItem(DEFAULT_NETWORK, "")
        for net in self._networks():
            self.network.addItem(net, net)
        row("network", "Network:", self.network)

        self.auto_remove = QCheckBox("Remove the container when it exits (--rm)")
        self.auto_remove.toggled.connect(lambda _b: self.validate())
        form.addRow("", self.auto_remove)
        self.network.currentIndexChanged.connect(lambda _i: self.validate())

        scroll.setWidget(body)
        outer.addWidget(scroll, 1)

        self.show_command = QPushButton("Show docker run command")
        self.show_command.setCheckable(True)
        self.copy_command = QPushButton("Copy")
        self.copy_command.clicked.connect(self._copy_command)
        cmd_bar = QHBoxLayout()
        cmd_bar.addWidget(self.show_command)
        cmd_bar.addWidget(self.copy_command)
        cmd_bar.addStretch(1)
        outer.addLayout(cmd_bar)
        self.command_view = QPlainTextEdit()
        self.command_view.setReadOnly(True)
        self.command_view.setMaximumHeight(70)
        self.command_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.command_view.hide()
        self.copy_command.hide()
        self.show_command.toggled.connect(self._toggle_command)
        outer.addWidget(self.command_view)

        self.engine_error = _error_label()
        self.engine_error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.engine_error)

        self.buttons = QDialogButtonBox()
        self.run_button = self.buttons.addButton("Run", QDialogButtonBox.ButtonRole.AcceptRole)
        self.run_button.setDefault(True)
        self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        outer.addWidget(self.buttons)
        self.resize(680, 560)

    # ---- engine facts ---------------------------------------------------------------------------
    def _local_images(self) -> list[str]:
        if self.session is None:
            return []
        tags: list[str] = []
        for img in self.session.snapshot("image"):
            if isinstance(img, Image):
                tags.extend(t for t in img.tags if t != "<none>:<none>")
        return sorted(set(tags))

    def _networks(self) -> list[str]:
        if self.session is None:
            return []
        names = [n.name for n in self.session.snapshot("network") if isinstance(n, Network)]
        return sorted(set(names))

    def _diffs_arrived(self, diffs: list[Any]) -> None:
        kinds = {getattr(d, "kind", "") for d in diffs}
        if "image" in kinds:
            have = {self.image.itemText(i) for i in range(self.image.count())}
            text = self.image.currentText()
            for tag in self._local_images():
                if tag not in have:
                    self.image.addItem(tag)
            self.image.setEditText(text)  # adding items must not change what was typed
        if "network" in kinds:
            have = {self.network.itemText(i) for i in range(self.network.count())}
            for net in self._networks():
                if net not in have:
                    self.network.addItem(net, net)

    def _load_engine_facts(self) -> None:
        if self.session is None:
            return

        def got(info: EngineInfo) -> None:
            self.host_cpus = info.ncpu or None
            self.validate()

        # The CPU limit is checked against the engine's CPU count once we know it.
        Op(self.session.client.info).success(got).failure(lambda _e: None).run(self)

    # ---- validation ----------------------------------------------------------------------
    def _check(self, key: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
        except InputError as err:
            self.errors[key] = str(err)
            return None
        return value

    def build_request(self) -> RunRequest | None:
        """The request as typed, or None with ``self.errors`` saying what is wrong."""
        self.errors = {}
        image_text = self.image.currentText().strip()
        image = self._check("image", lambda: parse_image_ref(image_text))
        name = self._check("name", lambda: parse_container_name(self.name.text()))
        command = self._check("command", lambda: parse_command(self.command.text()))
        port_errors = self.ports.validate()
        env_errors = self.env.validate()
        vol_errors = self.volumes.validate()
        self._row_error_keys = set()
        for key, messages in (("ports", port_errors), ("env", env_errors), ("volumes", vol_errors)):
            if messages:
                self.errors[key] = messages[0]
                self._row_error_keys.add(key)
        restart = self._check("restart", lambda: parse_restart_policy(self.restart.currentText()))
        limit_messages = []
        memory = None
        if self.memory.text().strip():
            memory = self._check("limits", lambda: parse_memory(self.memory.text()))
            if "limits" in self.errors:
                limit_messages.append("Memory: " + self.errors["limits"])
        cpus = None
        if self.cpus.text().strip():
            cpus = self._check("cpu", lambda: parse_cpus(self.cpus.text(), self.host_cpus))
            if "cpu" in self.errors:
                limit_messages.append("CPUs: " + self.errors.pop("cpu"))
        if limit_messages:
            self.errors["limits"] = "\n".join(limit_messages)
        if self.errors:
            return None
        ports: list[PortSpec] = []
        if not port_errors:
            for text in self.ports.texts():
                ports.extend(parse_port_spec(text))
        env = tuple(parse_env(t) for t in self.env.texts())
        volumes = tuple(_expand_home(parse_volume_spec(t)) for t in self.volumes.texts())
        # The env list must not name a variable twice: the engine keeps only one silently.
        keys = [k for k, _v in env]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            self.errors["env"] = f"{', '.join(dupes)} is set more than once. Keep one."
            return None
        assert image is not None and restart is not None
        return RunRequest(
            image=image_text if "@" in image_text else str(image),
            name=name or "",
            command=tuple(command or ()),
            ports=tuple(ports),
            env=env,
            volumes=volumes,
            restart=restart,
            memory=memory,
            nano_cpus=cpus,
            network=str(self.network.currentData() or ""),
            auto_remove=self.auto_remove.isChecked(),
        )

    def validate(self) -> bool:
        """Re-check every field, show the messages, enable Run only when all are valid."""
        request = self.build_request()
        for key, label in self.error_labels.items():
            # A list field shows its messages under each row; its own line only shows
            # problems that belong to no single row (a variable set twice).
            row_error = key in self._row_error_keys
            _set_error(label, "" if row_error else self.errors.get(key, ""))
        valid = request is not None and self.session is not None
        self.run_button.setEnabled(valid and not self.running)
        if request is not None:
            self.command_view.setPlainText(request.docker_run_command())
        elif self.errors:
            self.command_view.setPlainText("Fix the fields marked in red to see the command.")
        return valid

    # ---- actions -------------------------------------------------------------------------
    def _toggle_command(self, shown: bool) -> None:
        self.command_view.setVisible(shown)
        self.copy_command.setVisible(shown)
        self.show_command.setText("Hide docker run command" if shown else "Show docker run command")

    def _copy_command(self) -> None:
        QGuiApplication.clipboard().setText(self.command_view.toPlainText())

    def submit(self) -> None:
        if self.running or not self.validate() or self.session is None:
            return
        request = self.build_request()
        if request is None:
            return
        self.running = True
        self.run_button.setEnabled(False)
        self.run_button.setText("Starting…")
        _set_error(self.engine_error, "")

        def ok(cid: str) -> None:
            self.started.emit(cid, request.name)
            self.accept()

        def failed(err: BaseException) -> None:
            # Keep the dialog and everything typed; show what the engine said, plainly.
            _set_error(self.engine_error, f"The engine refused: {user_message(err)}")

        def done() -> None:
            self.running = False
            self.run_button.setText("Run")
            self.validate()

        Op(self.session.client.run, request).success(ok).failure(failed).finally_(done).run(self)


def _expand_home(spec: VolumeSpec) -> VolumeSpec:
    # The engine needs an absolute host path; "~" means the user's home here, as in a shell.
    if spec.is_bind and spec.source.startswith("~"):
        return dataclasses.replace(spec, source=os.path.expanduser(spec.source))
    return spec
