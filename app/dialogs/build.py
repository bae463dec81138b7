"""Build an image from a folder with a Dockerfile, output streamed live, result tagged.

The build runs on a worker that reads the engine's JSON progress objects. Their text is
queued and appended to a plain-text log every ``POLL_MS`` ms (a chatty build costs a few
appends per second, not one per line). Cancel closes the stream, which makes the engine
stop the build; the engine removes its intermediate containers (``forcerm``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.dialogs.image_ops import ErrorLabel, plain_label
from vm_backend.engine.errors import EngineError
from vm_backend.engine.specs import parse_image_ref
from vm_backend.errors import InputError

if TYPE_CHECKING:
    from vm_backend.engine.client import EngineClient
    from vm_backend.engine.streams import Stream

POLL_MS = 150
MAX_LOG_BLOCKS = 20_000  # a runaway build must not eat all memory


def build_line(obj: dict[str, Any]) -> str:
    """The human text of one build progress object ("" when it carries none)."""
    if obj.get("error"):
        return f"ERROR: {obj['error']}"
    if "stream" in obj:
        return str(obj["stream"])
    if obj.get("status"):
        ident = obj.get("id")
        return f"{ident}: {obj['status']}\n" if ident else f"{obj['status']}\n"
    return ""


class BuildDialog(QDialog):
    """Pick a folder and a tag, build, read the output as it comes."""

    built = Signal(str, str)  # image id (may be ""), tag
    finished = Signal(bool, str)  # ok, the status shown

    def __init__(self, client: EngineClient | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.setWindowTitle("Build an image")
        self.resize(760, 520)
        self._stream: Stream[dict[str, Any]] | None = None
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self.running = False
        self.image_id = ""
        self.error = ""
        self.tag = ""

        layout = QVBoxLayout(self)
        form = QFormLayout()
        folder_row = QHBoxLayout()
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("Folder that holds the Dockerfile")
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._choose_folder)
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        form.addRow("Context folder:", folder_row)
        self.dockerfile = QLineEdit("Dockerfile")
        form.addRow("Dockerfile:", self.dockerfile)
        self.tag_edit = QLineEdit()
        self.tag_edit.setPlaceholderText("myapp:latest")
        form.addRow("Tag:", self.tag_edit)
        layout.addLayout(form)
        self.input_error = ErrorLabel()
        layout.addWidget(self.input_error)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(MAX_LOG_BLOCKS)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        layout.addWidget(self.log, 1)
        self.status = plain_label(wrap=True, selectable=True)
        layout.addWidget(self.status)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.build_button = QPushButton("Build")
        self.build_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel build")
        self.close_button = QPushButton("Close")
        for b in (self.build_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)

        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._flush)
        for edit in (self.folder, self.dockerfile, self.tag_edit):
            edit.textChanged.connect(self.validate)
        self.build_button.clicked.connect(self.start_build)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.reject)
        self._set_running(False)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Build context folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def validate(self) -> bool:
        problem = ""
        folder = Path(self.folder.text().strip()).expanduser()
        dockerfile = self.dockerfile.text().strip() or "Dockerfile"
        tag = self.tag_edit.text().strip()
        if not self.folder.text().strip():
            problem = " "  # nothing typed yet: not an error, just not ready
        elif not folder.is_dir():
            problem = f"{folder} is not a folder."
        elif not (folder / dockerfile).is_file():
            problem = f"There is no {dockerfile} in {folder}."
        elif tag:
            try:
                parse_image_ref(tag)
            except InputError as err:
                problem = str(err)
        self.input_error.setText(problem.strip())
        ok = not problem
        self.build_button.setEnabled(ok and not self.running and self.client is not None)
        return ok

    def _set_running(self, running: bool) -> None:
        self.running = running
        self.cancel_button.setEnabled(running)
        for edit in (self.folder, self.dockerfile, self.tag_edit):
            edit.setReadOnly(running)
        self.validate()

    def start_build(self) -> None:
        if self.running or self.client is None or not self.validate():
            return
        client = self.client
        context = Path(self.folder.text().strip()).expanduser()
        dockerfile = self.dockerfile.text().strip() or "Dockerfile"
        tag = self.tag_edit.text().strip()
        self.tag = str(parse_image_ref(tag)) if tag else ""
        self.image_id = self.error = ""
        self.log.clear()
        self.status.setText(f"Building {context}…")
        self._set_running(True)
        self._timer.start()

        def work() -> str:
            stream = client.build(context, self.tag, dockerfile)
            self._stream = stream
            if not self.running:
                stream.close()
            image_id = ""
            for obj in stream:
                aux = obj.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = str(aux["ID"])
                if obj.get("error"):
                    self.error = str(obj["error"]).strip()
                text = build_line(obj)
                if text:
                    with self._lock:
                        self._pending.append(text)
            return image_id

        Op(work).success(self._succeeded).failure(self._failed).run(self)

    def cancel(self) -> None:
        if not self.running:
            return
        self.running = False
        stream = self._stream
        if stream is not None:
            stream.close()
        self._set_running(False)
        self.status.setText("Build cancelled.")

    def reject(self) -> None:
        self.cancel()
        super().reject()

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            # appendPlainText adds a newline per call; the engine's lines carry their own.
            self.log.moveCursor(self.log.textCursor().MoveOperation.End)
            self.log.insertPlainText("".join(batch))
            self.log.ensureCursorVisible()

    def _done(self) -> bool:
        """Common end; returns False when the user had cancelled."""
        cancelled = not self.running
        self._flush()
        self._timer.stop()
        self._stream = None
        self._set_running(False)
        return not cancelled

    def _end(self, ok: bool, text: str) -> None:
        self.status.setText(text)
        self.finished.emit(ok, text)

    def _succeeded(self, image_id: str) -> None:
        if not self._done():
            self._end(False, "Build cancelled.")
            return
        if self.error:
            self._end(False, f"Build failed: {self.error}")
            return
        self.image_id = image_id
        what = self.tag or image_id.removeprefix("sha256:")[:12] or "the image"
        self._end(True, f"Built {what}.")
        self.built.emit(image_id, self.tag)

    def _failed(self, err: BaseException) -> None:
        if not self._done():
            self._end(False, "Build cancelled.")
            return
        self.error = user_message(err)
        prefix = "" if isinstance(err, EngineError) else "Build failed: "
        self._end(False, prefix + self.error)
