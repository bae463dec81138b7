"""Small image dialogs and the pieces every object page shares.

* :func:`plain_label`, :func:`show_error`, :func:`confirm`: engine text is always plain
  text, errors and confirmations never block the GUI thread (``open()``, not ``exec()``).
* :class:`TaskRow`: one long operation (export, load, prune...) run on a worker with a
  progress readout polled by a timer (so a fast transfer costs a few repaints, not one
  signal per chunk) and a Cancel button that sets a flag the worker polls.
* :class:`TagDialog` (the reference is checked with ``parse_image_ref`` as you type) and
  :class:`HistoryDialog` (layers and their sizes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.models.keyed import format_time, safe_tooltip
from vm_backend.engine.models import HistoryEntry
from vm_backend.engine.specs import parse_image_ref
from vm_backend.errors import InputError
from vm_backend.units import human_size

if TYPE_CHECKING:
    from vm_backend.engine.client import EngineClient

Cancelled = Callable[[], bool]
Progress = Callable[[int], None]
POLL_MS = 150
RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


def plain_label(text: str = "", *, selectable: bool = False, wrap: bool = False) -> QLabel:
    """A QLabel that never interprets its text as markup (engine text goes here)."""
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    label.setWordWrap(wrap)
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class ErrorLabel(QLabel):
    """A red plain-text message under a field that takes no room while empty."""

    def __init__(self) -> None:
        super().__init__()
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setWordWrap(True)
        self.setStyleSheet("color: #c62828;")
        self.setObjectName("fieldError")
        self.hide()

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setVisible(bool(text))


class CheckedDialog(QDialog):
    """A form dialog whose OK button is enabled only while :meth:`check` passes.

    Subclasses build their fields, then call :meth:`add_buttons` (the error line and the
    OK/Cancel row) and connect their fields' change signals to :meth:`validate`;
    :meth:`submit` runs the engine call through :meth:`run_op`, which shows the engine's
    refusal in the error line and keeps the dialog open.
    """

    error: ErrorLabel
    buttons: QDialogButtonBox
    ok: QPushButton

    def add_buttons(self, layout: QVBoxLayout, ok_text: str) -> None:
        self.error = ErrorLabel()
        layout.addWidget(self.error)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok.setText(ok_text)
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    def check(self) -> None:
        """Raise :class:`InputError` when the fields are not acceptable.

        The base form has no fields of its own, so it is always acceptable; each dialog
        checks its own (TagDialog, CreateVolumeDialog, CreateNetworkDialog).
        """

    def untouched(self) -> bool:
        """Whether the form is still empty: "not ready" then, not red text."""
        return False

    def submit(self) -> None:
        """OK pressed with the fields acceptable: the base form just closes, accepted;
        each dialog runs its engine call through :meth:`run_op` instead."""
        self.accept()

    def validate(self) -> bool:
        try:
            self.check()
        except InputError as err:
            self.error.setText("" if self.untouched() else str(err))
            self.ok.setEnabled(False)
            return False
        self.error.setText("")
        self.ok.setEnabled(True)
        return True

    def run_op(self, fn: Callable[..., Any], *args: Any, then: Callable[[Any], None]) -> None:
        """Run ``fn(*args)`` on a worker; on success ``then(result)`` and close."""
        self.ok.setEnabled(False)

        def done(result: object) -> None:
            then(result)
            self.accept()

        def failed(err: BaseException) -> None:
            self.error.setText(user_message(err))
            self.ok.setEnabled(True)

        Op(fn, *args).success(done).failure(failed).run(self)


def show_error(parent: QWidget, title: str, text: str) -> QMessageBox:
    """A non-blocking warning whose text is plain (it often quotes the engine)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(text)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


def confirm(
    parent: QWidget, title: str, text: str, ok_text: str, on_yes: Callable[[], object],
    *, ask: bool = True,
) -> QMessageBox | None:
    """Ask before a destructive action; ``on_yes`` runs only if the user agrees.

    ``ask=False`` (the user turned confirmations off) runs ``on_yes`` at once.
    """
    if not ask:
        on_yes()
        return None
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle(title)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(text)
    yes = box.addButton(ok_text, QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setObjectName("confirmBox")

    def finished(_result: int) -> None:
        if box.clickedButton() is yes:
            on_yes()

    box.finished.connect(finished)
    box.open()
    return box


class TaskRow(QWidget):
    """A long operation shown as "label [progress] Cancel"; removes itself when done.

    ``work(cancelled, progress)`` runs on a worker thread. ``progress(n)`` only stores
    ``n``; a timer on the GUI thread shows it. With ``total`` > 0 the bar shows a
    fraction, otherwise it is a busy bar with the bytes so far. Work that cannot stop
    half-way (one engine request) passes ``cancellable=False`` and gets no Cancel button.
    """

    finished = Signal(bool, str)  # ok, message

    def __init__(
        self,
        label: str,
        work: Callable[[Cancelled, Progress], Any],
        *,
        total: int = 0,
        cancellable: bool = True,
        on_success: Callable[[Any], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._work = work
        self._total = total
        self._on_success = on_success
        self._on_failure = on_failure
        self._cancel = threading.Event()
        self._done = 0
        self.running = False
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 2, 8, 2)
        self.label = plain_label(label)
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(260)
        self.bar.setTextVisible(True)
        self.bytes_label = plain_label()
        self.bytes_label.setObjectName("muted")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setVisible(cancellable)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.bar)
        layout.addWidget(self.bytes_label)
        layout.addWidget(self.cancel_button)
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._show_progress)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def start(self) -> None:
        self.running = True
        if self._total > 0:
            self.bar.setRange(0, 1000)
        else:
            self.bar.setRange(0, 0)
        self._timer.start()

        def progress(n: int) -> None:
            self._done = n  # a plain int store: the timer reads it on the GUI thread

        Op(self._work, self._cancel.is_set, progress).success(self._succeeded).failure(
            self._failed
        ).finally_(self._finish).run(self)

    def cancel(self) -> None:
        self._cancel.set()
        self.cancel_button.setEnabled(False)
        self.label.setText(self.label.text() + " (cancelling)")

    def _show_progress(self) -> None:
        done = self._done
        if self._total > 0:
            self.bar.setValue(min(1000, int(1000 * done / self._total)))
        self.bytes_label.setText(human_size(done) if done else "")

    def _succeeded(self, result: Any) -> None:
        self.finished.emit(True, "")
        if self._on_success is not None:
            self._on_success(result)

    def _failed(self, err: BaseException) -> None:
        self.finished.emit(False, user_message(err))
        if self._on_failure is not None:
            self._on_failure(err)

    def _finish(self) -> None:
        self.running = False
        self._timer.stop()
        self.hide()
        self.deleteLater()


class TagDialog(CheckedDialog):
    """Add a tag to an image; the reference is checked as it is typed."""

    tagged = Signal(str)

    def __init__(
        self, client: EngineClient, image_id: str, current: str, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.client = client
        self.image_id = image_id
        self.setWindowTitle("Tag image")
        layout = QVBoxLayout(self)
        layout.addWidget(plain_label(f"New reference for {current or image_id[:19]}:"))
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("repository[:tag], e.g. myapp:1.0")
        layout.addWidget(self.edit)
        self.add_buttons(layout, "Tag")
        self.edit.textChanged.connect(self.validate)
        self.validate()

    def check(self) -> None:
        parse_image_ref(self.edit.text())

    def untouched(self) -> bool:
        return not self.edit.text().strip()  # an empty field is not an error yet

    def submit(self) -> None:
        if not self.validate():
            return
        reference = str(parse_image_ref(self.edit.text()))
        self.run_op(
            self.client.tag, self.image_id, reference, then=lambda _: self.tagged.emit(reference)
        )


class HistoryDialog(QDialog):
    """The layers of an image: what created each and how big it is."""

    COLUMNS = ("Created", "Created by", "Size", "Layer")

    def __init__(self, client: EngineClient, image_id: str, title: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"History of {title}")
        self.resize(900, 420)
        layout = QVBoxLayout(self)
        self.status = plain_label("Reading the history…")
        layout.addWidget(self.status)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        layout.addWidget(self.table)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        layout.addWidget(close)
        Op(client.history, image_id).success(self.show_history).failure(
            lambda err: self.status.setText(user_message(err))
        ).run(self)

    def show_history(self, entries: list[HistoryEntry]) -> None:
        self.table.setRowCount(len(entries))
        total = 0
        for row, e in enumerate(entries):
            total += e.size
            layer = e.id.removeprefix("sha256:")[:12] if e.id not in ("", "<missing>") else ""
            cells = (format_time(e.created), e.created_by.strip(), human_size(e.size), layer)
            for col, text in enumerate(cells):
                # QTableWidgetItem text is never rich text: safe for engine strings.
                item = QTableWidgetItem(text)
                item.setToolTip(safe_tooltip(text))
                if col == 2:
                    item.setTextAlignment(RIGHT)
                self.table.setItem(row, col, item)
        self.table.resizeColumnToContents(0)
        self.table.resizeColumnToContents(2)
        self.status.setText(f"{len(entries)} layers, {human_size(total)} in all")
