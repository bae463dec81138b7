"""Pull an image with a progress bar per layer and one overall, cancellable.

:class:`PullTracker` (no Qt) folds the engine's progress lines into per-layer states and
an overall fraction. :class:`PullDialog` reads the stream on a worker thread, queues the
lines and applies them on the GUI thread every ``POLL_MS`` ms through :meth:`apply`, the
one handler the tests drive with recorded streams. Cancel closes the stream, which makes
the engine abandon the pull; nothing is written on the host.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.dialogs.image_ops import ErrorLabel, plain_label
from vm_backend.engine.models import PullProgress
from vm_backend.engine.specs import parse_image_ref
from vm_backend.errors import InputError
from vm_backend.units import human_size

if TYPE_CHECKING:
    from vm_backend.engine.client import EngineClient
    from vm_backend.engine.streams import Stream

POLL_MS = 150
# Statuses that name a layer in their id (the "Pulling from x" line names a tag instead).
_LAYER_STATUSES = {
    "pulling fs layer", "waiting", "downloading", "verifying checksum", "download complete",
    "extracting", "pull complete", "already exists", "retrying", "copying blob",
}
_DONE = {"pull complete", "already exists"}


@dataclass
class LayerState:
    layer: str
    status: str = ""
    current: int = 0
    total: int = 0
    fraction: float = 0.0  # 0..1 over download (first half) and extraction (second half)


class PullTracker:
    """Per-layer progress and messages from a pull's progress lines."""

    def __init__(self) -> None:
        self.layers: dict[str, LayerState] = {}
        self.messages: list[str] = []
        self.error = ""

    def feed(self, p: PullProgress) -> LayerState | None:
        """Take one line; returns the layer it changed, if any."""
        if p.error:
            self.error = p.error
            return None
        status = p.status.strip()
        low = status.lower()
        base = low.split(" (")[0].split(" [")[0]
        if not p.layer or base not in _LAYER_STATUSES:
            if status:
                self.messages.append(f"{p.layer}: {status}" if p.layer else status)
            return None
        state = self.layers.setdefault(p.layer, LayerState(p.layer))
        state.status = status
        if p.total > 0:
            state.current, state.total = p.current, p.total
        part = min(1.0, p.current / p.total) if p.total > 0 else 0.0
        if base in _DONE:
            state.fraction = 1.0
        elif base == "downloading":
            state.fraction = max(state.fraction, 0.5 * part)
        elif base in ("download complete", "verifying checksum"):
            state.fraction = max(state.fraction, 0.5)
        elif base == "extracting":
            state.fraction = max(state.fraction, 0.5 + 0.5 * part)
        return state

    def overall(self) -> float:
        if not self.layers:
            return 0.0
        return sum(s.fraction for s in self.layers.values()) / len(self.layers)

    @property
    def finished(self) -> bool:
        return bool(self.layers) and all(s.fraction >= 1.0 for s in self.layers.values())


class PullDialog(QDialog):
    """Type a reference, pull it, watch each layer, cancel at any time."""

    pulled = Signal(str)  # the reference, once the engine says it is done

    def __init__(self, client: EngineClient | None, reference: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.setWindowTitle("Pull an image")
        self.resize(640, 420)
        self.tracker = PullTracker()
        self._stream: Stream[PullProgress] | None = None
        self._pending: list[PullProgress] = []
        self._lock = threading.Lock()
        self._items: dict[str, tuple[QTreeWidgetItem, QProgressBar]] = {}
        self.running = False
        self.reference = ""

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.edit = QLineEdit(reference)
        self.edit.setPlaceholderText("Image to pull, e.g. nginx:1.27 or ghcr.io/org/app:tag")
        self.pull_button = QPushButton("Pull")
        self.pull_button.setDefault(True)
        row.addWidget(self.edit, 1)
        row.addWidget(self.pull_button)
        layout.addLayout(row)
        self.input_error = ErrorLabel()
        layout.addWidget(self.input_error)
        self.overall = QProgressBar()
        self.overall.setRange(0, 1000)
        self.overall.setFormat("%p%")
        layout.addWidget(self.overall)
        self.layers = QTreeWidget()
        self.layers.setHeaderLabels(["Layer", "Status", "Progress"])
        self.layers.setRootIsDecorated(False)
        self.layers.header().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        layout.addWidget(self.layers, 1)
        self.status = plain_label(wrap=True, selectable=True)
        layout.addWidget(self.status)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.cancel_button = QPushButton("Cancel")
        self.close_button = QPushButton("Close")
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.close_button)
        layout.addLayout(buttons)

        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._flush)
        self.edit.textChanged.connect(self._validate)
        self.edit.returnPressed.connect(self.start_pull)
        self.pull_button.clicked.connect(self.start_pull)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.reject)
        self._validate()
        self._set_running(False)

    # ---- input ---------------------------------------------------------------------------
    def _validate(self) -> bool:
        text = self.edit.text()
        try:
            parse_image_ref(text)
        except InputError as err:
            self.input_error.setText(str(err) if text.strip() else "")
            self.pull_button.setEnabled(False)
            return False
        self.input_error.setText("")
        self.pull_button.setEnabled(not self.running and self.client is not None)
        return True

    def _set_running(self, running: bool) -> None:
        self.running = running
        self.cancel_button.setEnabled(running)
        self.edit.setReadOnly(running)
        self._validate()

    # ---- pulling -------------------------------------------------------------------------
    def start_pull(self) -> None:
        if self.running or self.client is None or not self._validate():
            return
        self.reference = str(parse_image_ref(self.edit.text()))
        self.reset_progress()
        self.status.setText(f"Pulling {self.reference}…")
        self._set_running(True)
        self._timer.start()
        client = self.client

        def work() -> None:
            stream = client.pull(self.reference)
            self._stream = stream
            if not self.running:  # cancelled while the request was being sent
                stream.close()
            for line in stream:
                with self._lock:
                    self._pending.append(line)

        Op(work).success(lambda _: self._ended(None)).failure(self._ended).run(self)

    def cancel(self) -> None:
        if not self.running:
            return
        self.running = False
        stream = self._stream
        if stream is not None:
            stream.close()  # the worker's loop ends at once; the engine drops the pull
        self.status.setText("Pull cancelled.")
        self._set_running(False)

    def reject(self) -> None:
        # Closing the window must not leave a pull running unseen.
        self.cancel()
        super().reject()

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            self.apply(batch)

    def _ended(self, err: BaseException | None) -> None:
        cancelled = not self.running
        self._flush()
        self._timer.stop()
        self._stream = None
        self._set_running(False)
        if cancelled:
            self.status.setText("Pull cancelled.")
        elif err is not None:
            self.status.setText(f"Pull failed: {user_message(err)}")
        elif self.tracker.error:
            self.status.setText(f"Pull failed: {self.tracker.error}")
        else:
            self.overall.setValue(1000)
            last = self.tracker.messages[-1] if self.tracker.messages else "Done."
            self.status.setText(last)
            self.pulled.emit(self.reference)

    # ---- the handler ---------------------------------------------------------------------
    def reset_progress(self) -> None:
        self.tracker = PullTracker()
        self._items.clear()
        self.layers.clear()
        self.overall.setValue(0)

    def apply(self, batch: list[PullProgress]) -> None:
        """Show a batch of progress lines (from the live stream or a recording)."""
        changed: dict[str, object] = {}
        for line in batch:
            state = self.tracker.feed(line)
            if state is not None:
                changed[state.layer] = state
        for layer in changed:
            self._show_layer(layer)
        self.overall.setValue(int(1000 * self.tracker.overall()))
        if self.tracker.error:
            self.status.setText(f"Pull failed: {self.tracker.error}")
        elif self.tracker.messages:
            self.status.setText(self.tracker.messages[-1])

    def _show_layer(self, layer: str) -> None:
        state = self.tracker.layers[layer]
        entry = self._items.get(layer)
        if entry is None:
            item = QTreeWidgetItem([layer[:12], "", ""])
            self.layers.addTopLevelItem(item)
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setMaximumHeight(16)
            bar.setTextVisible(False)  # the status column says the bytes
            self.layers.setItemWidget(item, 2, bar)
            entry = self._items[layer] = (item, bar)
        item, bar = entry
        text = state.status
        if state.total and state.fraction < 1.0:
            text += f" {human_size(state.current)} / {human_size(state.total)}"
        # QTreeWidgetItem text is plain: safe for whatever the engine sends.
        item.setText(1, text)
        bar.setValue(int(1000 * state.fraction))

    def layer_fraction(self, layer: str) -> float:
        """What the layer's bar shows, 0..1 (tests read it)."""
        entry = self._items.get(layer)
        return entry[1].value() / 1000 if entry else 0.0

    def layer_text(self, layer: str) -> str:
        entry = self._items.get(layer)
        return entry[0].text(1) if entry else ""

