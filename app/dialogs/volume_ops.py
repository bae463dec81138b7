"""Volume dialogs: create (validated as typed) and browse (list, download, upload).

Browsing goes through :mod:`vm_backend.engine.volume_helper`: each listing or transfer
creates a short-lived helper container on a worker thread and removes it again, so
nothing lingers while the dialog stays open. Names from the volume are shown as plain
table text, never as markup.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.dialogs.image_ops import RIGHT, CheckedDialog, TaskRow, plain_label, show_error
from app.models.keyed import format_time, safe_tooltip
from vm_backend.engine.volume_helper import (
    VolumeEntry,
    clean_path,
    download_from_volume,
    list_volume_dir,
    upload_to_volume,
)
from vm_backend.errors import InputError
from vm_backend.units import human_size

if TYPE_CHECKING:
    from vm_backend.engine.client import EngineClient

_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_KEY = re.compile(r"^[^=\s]+$")


def parse_volume_name(text: str) -> str:
    """A volume name as the engines accept it; "" lets the engine pick one."""
    name = text.strip()
    if name and not _VOLUME_NAME.match(name):
        raise InputError(
            f"{name!r} is not a valid volume name.",
            "Use letters, digits, _ . and -, starting with a letter or digit.",
        )
    if len(name) > 255:
        raise InputError("The volume name is longer than 255 characters.", "Shorten it.")
    return name


def parse_pairs(text: str, what: str) -> dict[str, str]:
    """``key=value`` lines (blank lines ignored) into a dict, or an InputError naming the line."""
    pairs: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not _KEY.match(key):
            raise InputError(f"{what} line {number} is not key=value: {line!r}.",
                             "Write one key=value per line.")
        pairs[key] = value
    return pairs


class CreateVolumeDialog(CheckedDialog):
    """Name, driver, labels and driver options, each checked as it is typed."""

    created = Signal(object)  # Volume

    def __init__(self, client: EngineClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.setWindowTitle("Create a volume")
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.name = QLineEdit()
        self.name.setPlaceholderText("leave empty for a generated name")
        form.addRow("Name:", self.name)
        self.driver = QComboBox()
        self.driver.setEditable(True)
        self.driver.addItem("local")
        form.addRow("Driver:", self.driver)
        self.labels = QPlainTextEdit()
        self.labels.setPlaceholderText("key=value, one per line")
        self.labels.setMaximumHeight(70)
        form.addRow("Labels:", self.labels)
        self.options = QPlainTextEdit()
        self.options.setPlaceholderText("driver options, e.g. type=tmpfs\ndevice=tmpfs\no=size=64m")
        self.options.setMaximumHeight(70)
        form.addRow("Options:", self.options)
        layout.addLayout(form)
        self.add_buttons(layout, "Create")
        self.name.textChanged.connect(self.validate)
        self.driver.currentTextChanged.connect(self.validate)
        self.labels.textChanged.connect(self.validate)
        self.options.textChanged.connect(self.validate)
        self.validate()

    def values(self) -> tuple[str, str, dict[str, str], dict[str, str]]:
        driver = self.driver.currentText().strip()
        if not driver:
            raise InputError("The driver is empty.", "Use local unless you installed a plugin.")
        return (
            parse_volume_name(self.name.text()),
            driver,
            parse_pairs(self.labels.toPlainText(), "Labels"),
            parse_pairs(self.options.toPlainText(), "Options"),
        )

    def check(self) -> None:
        self.values()

    def submit(self) -> None:
        if not self.validate():
            return
        name, driver, labels, options = self.values()
        self.run_op(
            self.client.create_volume, name, driver, labels, options, then=self.created.emit
        )


class VolumeBrowser(QDialog):
    """The files of one volume: walk folders, download, upload."""

    listed = Signal(str)  # the path just shown
    transfer_finished = Signal(bool, str)  # ok, message

    COLUMNS = ("Name", "Type", "Size", "Modified")

    def __init__(self, client: EngineClient, volume: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.volume = volume
        self.path = ""
        self.entries: list[VolumeEntry] = []
        self.loading = False
        self._generation = 0
        self.setWindowTitle(f"Volume {volume}")
        self.resize(720, 480)
        layout = QVBoxLayout(self)
        bar = QHBoxLayout()
        self.up_button = QPushButton("Up")
        self.up_button.clicked.connect(self.go_up)
        self.location = QLineEdit()
        self.location.setPlaceholderText("/")
        self.location.returnPressed.connect(lambda: self.navigate(self.location.text()))
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(lambda: self.navigate(self.path))
        bar.addWidget(self.up_button)
        bar.addWidget(self.location, 1)
        bar.addWidget(self.refresh_button)
        layout.addLayout(bar)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemDoubleClicked.connect(self._activated)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        layout.addWidget(self.table, 1)
        self.tasks = QVBoxLayout()
        layout.addLayout(self.tasks)
        self.status = plain_label(wrap=True, selectable=True)
        layout.addWidget(self.status)
        buttons = QHBoxLayout()
        self.download_button = QPushButton("Download…")
        self.download_button.clicked.connect(self._download_dialog)
        self.upload_file_button = QPushButton("Upload file…")
        self.upload_file_button.clicked.connect(lambda: self._upload_dialog(folder=False))
        self.upload_folder_button = QPushButton("Upload folder…")
        self.upload_folder_button.clicked.connect(lambda: self._upload_dialog(folder=True))
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        for b in (self.download_button, self.upload_file_button, self.upload_folder_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout.addLayout(buttons)
        self._update_buttons()
        self.navigate("")

    # ---- listing -------------------------------------------------------------------------
    def navigate(self, path: str) -> None:
        try:
            target = clean_path(path)
        except InputError as err:
            self.status.setText(str(err))
            return
        self.loading = True
        self.status.setText(f"Reading /{target}…")
        self._update_buttons()
        # Listings may overlap (a refresh after an upload, then a click): only the newest
        # one may fill the table.
        self._generation += 1
        generation = self._generation

        def shown(entries: list[VolumeEntry]) -> None:
            if generation != self._generation:
                return
            self.path = target
            self.show_entries(entries)
            n = len(entries)
            self.status.setText(f"{n} item{'' if n == 1 else 's'} in /{target}")

        def failed(err: BaseException) -> None:
            if generation == self._generation:
                self.status.setText(user_message(err))

        def done() -> None:
            if generation != self._generation:
                return
            self.loading = False
            self._update_buttons()
            self.listed.emit(self.path)

        Op(list_volume_dir, self.client, self.volume, target).success(shown).failure(
            failed
        ).finally_(done).run(self)

    def show_entries(self, entries: list[VolumeEntry]) -> None:
        self.entries = entries
        self.location.setText("/" + self.path)
        self.table.setRowCount(len(entries))
        for row, e in enumerate(entries):
            kind = {"dir": "folder", "file": "file", "link": "link"}.get(e.kind, e.kind)
            if e.kind == "link" and e.link_target:
                kind = f"link to {e.link_target}"
            size = "" if e.is_dir else human_size(e.size)
            for col, text in enumerate((e.name + ("/" if e.is_dir else ""), kind, size,
                                        format_time(e.mtime))):
                item = QTableWidgetItem(text)  # item text is plain, never markup
                if col == 0:
                    item.setToolTip(safe_tooltip(e.path))
                if col == 2:
                    item.setTextAlignment(RIGHT)
                self.table.setItem(row, col, item)

    def selected_entry(self) -> VolumeEntry | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        row = rows[0].row()
        return self.entries[row] if 0 <= row < len(self.entries) else None

    def select_name(self, name: str) -> bool:
        for row, e in enumerate(self.entries):
            if e.name == name:
                self.table.selectRow(row)
                return True
        return False

    def go_up(self) -> None:
        if self.path:
            self.navigate(posixpath.dirname(self.path))

    def _activated(self, item: QTableWidgetItem) -> None:
        row = item.row()
        if 0 <= row < len(self.entries) and self.entries[row].is_dir:
            self.navigate(self.entries[row].path)

    def _update_buttons(self) -> None:
        busy = self.loading
        entry = self.selected_entry()
        self.download_button.setEnabled(not busy and entry is not None)
        self.up_button.setEnabled(not busy and bool(self.path))
        self.refresh_button.setEnabled(not busy)
        self.upload_file_button.setEnabled(not busy)
        self.upload_folder_button.setEnabled(not busy)

    # ---- transfers -----------------------------------------------------------------------
    def _download_dialog(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            return
        name = entry.name + (".tar" if entry.is_dir else "")
        dest, _ = QFileDialog.getSaveFileName(self, f"Download {entry.name}", name)
        if dest:
            self.download(entry, Path(dest))

    def _upload_dialog(self, folder: bool) -> None:
        if folder:
            src = QFileDialog.getExistingDirectory(self, "Upload a folder")
        else:
            src, _ = QFileDialog.getOpenFileName(self, "Upload a file")
        if src:
            self.upload(Path(src))

    def _task(self, label: str, work: Callable[..., Any], ok_text: Callable[[Any], str],
              after: Callable[[], None] | None = None) -> TaskRow:
        def succeeded(result: Any) -> None:
            text = ok_text(result)
            self.status.setText(text)
            self.transfer_finished.emit(True, text)
            if after is not None:
                after()

        def failed(err: BaseException) -> None:
            text = "Cancelled." if task.cancelled else user_message(err)
            self.status.setText(text)
            if not task.cancelled:
                show_error(self, label, text)
            self.transfer_finished.emit(False, text)

        task = TaskRow(label, work, on_success=succeeded, on_failure=failed, parent=self)
        self.tasks.addWidget(task)
        task.start()
        return task

    def download(self, entry: VolumeEntry, dest: Path) -> TaskRow:
        """Save a file (its bytes) or a folder (a tar) from the volume to ``dest``."""
        return self._task(
            f"Downloading {entry.name}",
            lambda cancelled, progress: download_from_volume(
                self.client, self.volume, entry.path, dest, cancelled, progress),
            lambda n: f"Saved {entry.name} to {dest} ({human_size(n)}).",
        )

    def upload(self, source: Path) -> TaskRow:
        """Copy a host file or folder into the folder being shown."""
        target = self.path
        return self._task(
            f"Uploading {source.name}",
            lambda cancelled, progress: upload_to_volume(
                self.client, self.volume, source, target, cancelled, progress),
            lambda n: f"Uploaded {source.name} to /{target} ({human_size(n)}).",
            after=lambda: self.navigate(self.path),
        )

