"""The helper VM's settings: CPUs, memory, disk (grow only), accelerator, shared folders.

Values are checked here as the user edits (against this computer's limits, read with
psutil) so Save is only offered for something berthd will accept; berthd validates again
(``vm_backend.machine.spec.validate``) and its refusal is shown as it words it. Changes
apply at the next start, which the panel says plainly, offering "Restart now" when the
VM runs.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import psutil
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.pages.details._base import plain_label
from vm_backend.machine.spec import MAX_DISK_GIB, MIN_DISK_GIB, MIN_MEMORY_MIB

_TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,31}$")


@dataclass(frozen=True)
class HostLimits:
    cpus: int
    memory_mib: int

    @classmethod
    def detect(cls) -> HostLimits:
        return cls(
            cpus=psutil.cpu_count(logical=True) or 1,
            memory_mib=psutil.virtual_memory().total // (1024 * 1024),
        )


@dataclass(frozen=True)
class ShareRow:
    host_path: str
    tag: str
    read_only: bool = False
    # auto | 9p | sftp (vm_backend.machine.spec.Share); kept as the spec had it.
    transport: str = "auto"

    def to_json(self) -> dict[str, Any]:
        return {
            "host_path": self.host_path,
            "tag": self.tag,
            "read_only": self.read_only,
            "transport": self.transport,
        }


@dataclass(frozen=True)
class SettingsValues:
    cpus: int
    memory_mib: int
    disk_gib: int
    accelerator: str
    shares: tuple[ShareRow, ...] = ()

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SettingsValues:
        shares = tuple(
            ShareRow(str(s.get("host_path", "")), str(s.get("tag", "")),
                     bool(s.get("read_only", False)), str(s.get("transport") or "auto"))
            for s in spec.get("shares") or []
            if isinstance(s, dict)
        )
        return cls(
            cpus=int(spec.get("cpus") or 2),
            memory_mib=int(spec.get("memory_mib") or 2048),
            disk_gib=int(spec.get("disk_gib") or 32),
            accelerator=str(spec.get("accelerator") or "auto"),
            shares=shares,
        )

    def changes_from(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The ``machine.set`` params that differ from ``spec`` (without the name)."""
        before = SettingsValues.from_spec(spec)
        out: dict[str, Any] = {}
        for field in ("cpus", "memory_mib", "disk_gib", "accelerator"):
            if getattr(self, field) != getattr(before, field):
                out[field] = getattr(self, field)
        if self.shares != before.shares:
            out["shares"] = [s.to_json() for s in self.shares]
        return out


def native_accelerator() -> str:
    if sys.platform == "darwin":
        return "hvf"
    if sys.platform == "win32":
        return "whpx"
    return "kvm"


ACCEL_LABELS = {
    "auto": "Automatic (fastest that works)",
    "kvm": "KVM (Linux hardware acceleration)",
    "hvf": "HVF (macOS hardware acceleration)",
    "whpx": "WHPX (Windows Hypervisor Platform)",
    "tcg": "TCG (emulation; slow, always works)",
}


def accelerator_choices() -> list[str]:
    return ["auto", native_accelerator(), "tcg"]


def validate_settings(
    values: SettingsValues, limits: HostLimits, current_disk_gib: int, running: bool
) -> list[str]:
    """Plain-words problems with ``values``; empty when berthd should accept them."""
    problems: list[str] = []
    if not 1 <= values.cpus <= limits.cpus:
        problems.append(f"CPUs must be between 1 and {limits.cpus} (this computer's cores).")
    if not MIN_MEMORY_MIB <= values.memory_mib <= limits.memory_mib:
        problems.append(
            f"Memory must be between {MIN_MEMORY_MIB} MiB and {limits.memory_mib} MiB "
            "(this computer's memory)."
        )
    if values.disk_gib < current_disk_gib:
        problems.append(
            f"The data disk can only grow: it is {current_disk_gib} GiB now. To start "
            "smaller, reset the machine without keeping its data."
        )
    elif not MIN_DISK_GIB <= values.disk_gib <= MAX_DISK_GIB:
        problems.append(f"The disk must be between {MIN_DISK_GIB} and {MAX_DISK_GIB} GiB.")
    elif values.disk_gib > current_disk_gib and running:
        problems.append("The data disk cannot grow while the VM runs: stop it first.")
    if values.accelerator not in accelerator_choices():
        problems.append(f"The {values.accelerator} accelerator does not exist on this computer.")
    tags: set[str] = set()
    for share in values.shares:
        if not _TAG_RE.match(share.tag):
            problems.append(
                f"Share tag {share.tag!r}: use up to 31 letters, digits, dashes or underscores."
            )
        elif share.tag in tags:
            problems.append(f"Share tag {share.tag!r} is used twice.")
        tags.add(share.tag)
        if not os.path.isabs(share.host_path):
            problems.append(f"Shared folder {share.host_path!r} is not a full path.")
        elif not os.path.isdir(share.host_path):
            problems.append(f"Shared folder {share.host_path!r} does not exist.")
    return problems


def tag_for(path: str, taken: set[str]) -> str:
    """A share tag from a folder's name: allowed characters only, unique."""
    base = re.sub(r"[^A-Za-z0-9_-]", "-", os.path.basename(path.rstrip("/\\")) or "share")
    base = base.strip("-")[:24] or "share"
    tag, n = base, 2
    while tag in taken:
        tag = f"{base}-{n}"
        n += 1
    return tag


def share_state_words(doc: dict[str, Any]) -> str:
    """One live share's state in plain words ("mounted (read-only)", "error: …")."""
    state = str(doc.get("state") or "").strip()
    error = str(doc.get("error") or "").strip()
    if state.lower().startswith("error") or (error and state.lower() != "mounted"):
        why = error or state.partition(":")[2].strip() or "unknown"
        return f"error: {why}"
    words = state or "unknown"
    if state == "mounted" and doc.get("guest_path"):
        words += f" at {doc['guest_path']}"
    extras = [str(doc["transport"])] if doc.get("transport") else []
    if doc.get("read_only") or doc.get("ro"):
        extras.append("read-only")
    return words + (f" ({', '.join(extras)})" if extras else "")


class SharesEditor(QGroupBox):
    """The spec's shared folders: path, tag, read-only; add and remove."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle(self.tr("Shared folders"))
        self.table = QTableWidget(0, 4, self)
        self.table.setHorizontalHeaderLabels(
            [self.tr("Folder on this computer"), self.tr("Tag in the VM"), self.tr("Read-only"),
             self.tr("State now")]
        )
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(110)
        self.read_only = QCheckBox(self.tr("Add as read-only"), self)
        self.add_button = QPushButton(self.tr("Add folder…"), self)
        self.remove_button = QPushButton(self.tr("Remove"), self)
        self.remove_button.setEnabled(False)
        self.note = plain_label(
            self.tr(
                "Adding or removing a folder, or making it read-only, is applied at the VM's "
                "next start: the running VM keeps the folders it started with. Containers "
                "see a shared folder under the same path as on this computer. Read-only "
                "means nothing in the VM (a container, or you in a shell) can change or "
                "delete the files in it."
            ),
            self,
        )
        self.note.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.read_only)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addWidget(self.note)
        self.add_button.clicked.connect(self._choose)
        self.remove_button.clicked.connect(self.remove_selected)
        self.table.itemSelectionChanged.connect(
            lambda: self.remove_button.setEnabled(bool(self.table.selectionModel().selectedRows()))
        )
        self._rows: list[ShareRow] = []
        self._live: dict[str, str] | None = None  # tag -> state words; None: VM not up

    def shares(self) -> tuple[ShareRow, ...]:
        return tuple(self._rows)

    def set_shares(self, shares: tuple[ShareRow, ...]) -> None:
        self._rows = list(shares)
        self._render()

    def set_live(self, running: bool, shares: Any) -> None:
        """The running VM's shares as berthd reports them (``status["shares"]``)."""
        live: dict[str, str] | None = None
        if running:
            live = {}
            for doc in shares if isinstance(shares, list) else []:
                if isinstance(doc, dict) and doc.get("tag"):
                    live[str(doc["tag"])] = share_state_words(doc)
        if live != self._live:
            self._live = live
            self._render()

    def live_state(self, tag: str) -> str:
        """What the "State now" column says for ``tag``."""
        if self._live is None:
            return self.tr("VM not running")
        if tag in self._live:
            return self._live[tag]
        return self.tr("not mounted: applies at the next start")

    def add_share(self, path: str, read_only: bool) -> ShareRow:
        row = ShareRow(path, tag_for(path, {r.tag for r in self._rows}), read_only)
        self._rows.append(row)
        self._render()
        self.changed.emit()
        return row

    def remove_selected(self) -> None:
        doomed = {index.row() for index in self.table.selectionModel().selectedRows()}
        if not doomed:
            return
        self._rows = [r for i, r in enumerate(self._rows) if i not in doomed]
        self._render()
        self.changed.emit()

    def _choose(self) -> None:
        path = QFileDialog.getExistingDirectory(self, self.tr("Share a folder with the VM"))
        if path:
            self.add_share(path, self.read_only.isChecked())

    def _render(self) -> None:
        self.table.setRowCount(len(self._rows))
        for i, row in enumerate(self._rows):
            # Table cells are plain text by nature; paths may hold anything.
            self.table.setItem(i, 0, QTableWidgetItem(row.host_path))
            self.table.setItem(i, 1, QTableWidgetItem(row.tag))
            ro = QTableWidgetItem(self.tr("yes") if row.read_only else self.tr("no"))
            ro.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            self.table.setItem(i, 2, ro)
            now = QTableWidgetItem(self.live_state(row.tag))
            now.setToolTip(now.text())
            self.table.setItem(i, 3, now)
        self.remove_button.setEnabled(bool(self.table.selectionModel().selectedRows()))


class SettingsPanel(QWidget):
    """Edits a spec; emits the changes to save. The page does the saving (through Op)."""

    save_requested = Signal(dict)
    restart_requested = Signal()

    def __init__(self, limits: HostLimits | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.limits = limits or HostLimits.detect()
        self.spec: dict[str, Any] = {}
        self.running = False
        self.cpus = QSpinBox(self)
        self.cpus.setRange(1, max(1, self.limits.cpus))
        self.memory = QSpinBox(self)
        self.memory.setRange(MIN_MEMORY_MIB, max(MIN_MEMORY_MIB, self.limits.memory_mib))
        self.memory.setSingleStep(256)
        self.memory.setSuffix(" MiB")
        self.disk = QSpinBox(self)
        self.disk.setRange(MIN_DISK_GIB, MAX_DISK_GIB)
        self.disk.setSuffix(" GiB")
        self.accel = QComboBox(self)
        for key in accelerator_choices():
            self.accel.addItem(self.tr(ACCEL_LABELS[key]), key)
        self.limits_label = plain_label(
            self.tr("This computer: {0} CPUs, {1} MiB of memory.").format(
                self.limits.cpus, self.limits.memory_mib
            ),
            self,
        )
        self.disk_note = plain_label(self.tr("The data disk can grow, never shrink."), self)
        form = QFormLayout()
        form.addRow(self.tr("CPUs"), self.cpus)
        form.addRow(self.tr("Memory"), self.memory)
        form.addRow(self.tr("Data disk"), self.disk)
        form.addRow("", self.disk_note)
        form.addRow(self.tr("Accelerator"), self.accel)
        form.addRow("", self.limits_label)
        self.shares = SharesEditor(self)
        self.problems = plain_label("", self)
        self.problems.setWordWrap(True)
        self.problems.setStyleSheet("color: #e0443e;")
        self.message = plain_label("", self)
        self.message.setWordWrap(True)
        self.save_button = QPushButton(self.tr("Save"), self)
        self.revert_button = QPushButton(self.tr("Revert"), self)
        self.restart_button = QPushButton(self.tr("Restart now"), self)
        self.restart_button.hide()
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.revert_button)
        buttons.addWidget(self.restart_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.shares)
        layout.addWidget(self.problems)
        layout.addWidget(self.message)
        layout.addLayout(buttons)
        layout.addStretch(1)
        for spin in (self.cpus, self.memory, self.disk):
            spin.valueChanged.connect(self._edited)
        self.accel.currentIndexChanged.connect(self._edited)
        self.shares.changed.connect(self._edited)
        self.save_button.clicked.connect(self._save)
        self.revert_button.clicked.connect(self._revert)
        self.restart_button.clicked.connect(self.restart_requested)
        self._saving = False
        self._run_id: object = None  # the VM run shown (QEMU's pid), None when not running
        self._awaiting_start = False  # saved changes wait for a run other than _saved_run
        self._saved_run: object = None
        self._check()

    def set_spec(self, spec: dict[str, Any], running: bool, run_id: object = None) -> None:
        """Show ``spec`` (the one on disk); discards unsaved edits."""
        self.spec = dict(spec)
        self._note_run(running, run_id)
        values = SettingsValues.from_spec(spec)
        for widget in (self.cpus, self.memory, self.disk, self.accel):
            widget.blockSignals(True)
        self.cpus.setValue(values.cpus)
        self.memory.setValue(values.memory_mib)
        self.disk.setValue(values.disk_gib)
        index = self.accel.findData(values.accelerator)
        self.accel.setCurrentIndex(max(0, index))
        for widget in (self.cpus, self.memory, self.disk, self.accel):
            widget.blockSignals(False)
        self.shares.set_shares(values.shares)
        self._check()

    def set_running(self, running: bool, run_id: object = None) -> None:
        """The VM's state changed (status polls call this often: it keeps the message).

        ``run_id`` names the VM's current run (QEMU's pid): once a run other than the one
        that was up when the changes were saved is running, they are in effect and the
        "apply at the next start" note gives way.
        """
        self._note_run(running, run_id)
        self._check()

    def _note_run(self, running: bool, run_id: object) -> None:
        self.running = running
        if not running:
            self.restart_button.hide()
        if self._awaiting_start and running and run_id is not None and run_id != self._saved_run:
            self._awaiting_start = False
            self.restart_button.hide()
            self.message.setText(self.tr("The saved changes are in effect since this start."))
        self._run_id = run_id if running else None

    def values(self) -> SettingsValues:
        return SettingsValues(
            cpus=self.cpus.value(),
            memory_mib=self.memory.value(),
            disk_gib=self.disk.value(),
            accelerator=str(self.accel.currentData()),
            shares=self.shares.shares(),
        )

    def current_problems(self) -> list[str]:
        current_disk = int(self.spec.get("disk_gib") or MIN_DISK_GIB)
        return validate_settings(self.values(), self.limits, current_disk, self.running)

    def changes(self) -> dict[str, Any]:
        return self.values().changes_from(self.spec) if self.spec else {}

    def saved(self, spec: dict[str, Any]) -> None:
        """berthd accepted the changes."""
        self._saving = False
        self.set_spec(spec, self.running, self._run_id)
        self._awaiting_start = True
        self._saved_run = self._run_id
        if self.running:
            self.message.setText(
                self.tr("Saved. The changes apply at the next start of the VM; it is running "
                        "now with the old settings.")
            )
            self.restart_button.show()
        else:
            self.message.setText(self.tr("Saved. The changes apply at the next start."))

    def save_failed(self, text: str) -> None:
        self._saving = False
        self._check()
        self.message.setText(self.tr("Not saved: {0}").format(text))

    def _check(self) -> bool:
        """Show the problems and enable the buttons; whether there are unsaved changes."""
        problems = self.current_problems() if self.spec else []
        self.problems.setText("\n".join(problems))
        self.problems.setVisible(bool(problems))
        dirty = bool(self.changes())
        self.save_button.setEnabled(dirty and not problems and not self._saving)
        self.revert_button.setEnabled(dirty and not self._saving)
        self.setEnabled(bool(self.spec))
        return dirty

    def _edited(self) -> None:
        # Only the user's edits say "unsaved": a status poll must not overwrite an answer.
        if self._check():
            self.message.setText(self.tr("Unsaved changes; they apply at the next start."))

    def _revert(self) -> None:
        self.set_spec(self.spec, self.running)
        self.message.setText("")

    def _save(self) -> None:
        changes = self.changes()
        if changes and not self.current_problems() and not self._saving:
            self._saving = True
            self._check()
            self.message.setText(self.tr("Saving…"))
            self.save_requested.emit(changes)
