"""The boot timeline of the helper VM and the panel that explains a failed boot.

Both render the daemon's JSON (``machine.status`` timeline entries and ``machine.start``
progress lines ``{"stage": {...}}``) as they arrive. Everything that comes from the guest
(stage details, console lines, reasons) is shown as plain text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QPlainTextEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.pages.details._base import plain_label

#: Stage keys in boot order, with what each one means to a user.
STAGES: tuple[tuple[str, str], ...] = (
    ("qemu", "QEMU started"),
    ("kernel", "Linux kernel"),
    ("init", "Guest init"),
    ("network", "Network"),
    ("datadisk", "Data disk"),
    ("sshd", "SSH server"),
    ("engine", "Container engine"),
    ("agent", "Berth agent"),
    ("ready", "Guest ready"),
    ("socket", "Engine socket on this computer"),
)
STAGE_TITLES = dict(STAGES)
STAGE_KEYS = tuple(key for key, _ in STAGES)

_STATE_TEXT = {
    "pending": "waiting",
    "running": "● in progress",
    "done": "✓ done",
    "skipped": "– skipped",
    "failed": "✗ failed",
}
_STATE_COLOR = {
    "running": "#2472c8",
    "done": "#0dbc79",
    "skipped": "#888888",
    "failed": "#e0443e",
}

#: Said when the daemon gave no hint (e.g. the page opened after the failure).
GENERIC_HINT = "Read the console lines below, then start the machine again."


@dataclass(frozen=True)
class StageRow:
    """One stage as the page shows it."""

    key: str
    state: str = "pending"
    started_at: float | None = None
    ended_at: float | None = None
    detail: str = ""
    guest_uptime: float | None = None

    @property
    def title(self) -> str:
        return STAGE_TITLES.get(self.key, self.key)

    def duration(self, now: float | None = None) -> float | None:
        """Seconds spent; for a running stage, so far (``now`` defaults to the clock)."""
        if self.started_at is None:
            return None
        if self.ended_at is not None:
            return max(0.0, self.ended_at - self.started_at)
        if self.state == "running":
            return max(0.0, (now if now is not None else time.time()) - self.started_at)
        return None


def stage_row(doc: dict[str, Any]) -> StageRow:
    """A row from the daemon's stage JSON; tolerant of missing or odd fields."""

    def num(value: Any) -> float | None:
        return float(value) if isinstance(value, int | float) else None

    return StageRow(
        key=str(doc.get("stage") or ""),
        state=str(doc.get("state") or "pending"),
        started_at=num(doc.get("started_at")),
        ended_at=num(doc.get("ended_at")),
        detail=str(doc.get("detail") or ""),
        guest_uptime=num(doc.get("guest_uptime")),
    )


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


class TimelineView(QWidget):
    """Ten stages with state and duration; the running one ticks while it runs."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: dict[str, StageRow] = {key: StageRow(key) for key in STAGE_KEYS}
        self.summary = plain_label("", self)
        self.tree = QTreeWidget(self)
        self.tree.setColumnCount(4)
        self.tree.setHeaderLabels([self.tr("Stage"), self.tr("State"), self.tr("Took"),
                                   self.tr("Detail")])
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setSelectionMode(QTreeWidget.SelectionMode.NoSelection)
        self.tree.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        header = self.tree.header()
        header.setStretchLastSection(True)
        for col in range(3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self._items: dict[str, QTreeWidgetItem] = {}
        for key, title in STAGES:
            item = QTreeWidgetItem([title, "", "", ""])
            self.tree.addTopLevelItem(item)
            self._items[key] = item
        # Ten rows, no scrolling: the whole boot is visible at once.
        self.tree.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        row_h = self.tree.sizeHintForRow(0) if self.tree.sizeHintForRow(0) > 0 else 20
        self.tree.setFixedHeight(row_h * len(STAGES) + header.sizeHint().height() + 6)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.tree)
        # Ticks the running stage's duration; runs only while a stage is in progress.
        self._ticker = QTimer(self)
        self._ticker.setInterval(500)
        self._ticker.timeout.connect(self._refresh)
        self._refresh()

    # ---- input ---------------------------------------------------------------------
    def reset(self) -> None:
        """Back to all-pending (a new boot begins)."""
        self.rows = {key: StageRow(key) for key in STAGE_KEYS}
        self._refresh()

    def set_stages(self, docs: list[dict[str, Any]]) -> None:
        """Replace the rows from a status document's ``timeline`` list."""
        if not docs:
            return
        for doc in docs:
            self._merge(stage_row(doc))
        self._refresh()

    def update_stage(self, doc: dict[str, Any]) -> None:
        """Apply one ``{"stage": {...}}`` progress record."""
        self._merge(stage_row(doc))
        self._refresh()

    def _merge(self, row: StageRow) -> None:
        if row.key in self.rows:
            self.rows[row.key] = row

    # ---- queries -------------------------------------------------------------------
    def failed(self) -> StageRow | None:
        return next((r for r in self.rows.values() if r.state == "failed"), None)

    def running(self) -> StageRow | None:
        return next((r for r in self.rows.values() if r.state == "running"), None)

    def state_of(self, key: str) -> str:
        return self.rows[key].state

    def item_texts(self, key: str) -> list[str]:
        item = self._items[key]
        return [item.text(c) for c in range(4)]

    # ---- drawing -------------------------------------------------------------------
    def _refresh(self) -> None:
        now = time.time()
        for key, row in self.rows.items():
            item = self._items[key]
            item.setText(1, self.tr(_STATE_TEXT.get(row.state, row.state)))
            item.setText(2, format_duration(row.duration(now)))
            item.setText(3, self._detail(row))
            item.setToolTip(3, "")  # details are plain text; no rich-text tooltip guesses
            color = _STATE_COLOR.get(row.state)
            brush = QBrush(QColor(color)) if color else QBrush()
            item.setForeground(1, brush)
        self.summary.setText(self._summary(now))
        if self.running() is not None:
            if not self._ticker.isActive():
                self._ticker.start()
        else:
            self._ticker.stop()

    def _detail(self, row: StageRow) -> str:
        if row.detail or row.guest_uptime is None:
            return row.detail
        # The guest's own clock when it reported the stage: where boot time goes inside.
        return self.tr("reported at {0} guest uptime").format(format_duration(row.guest_uptime))

    def _summary(self, now: float) -> str:
        rows = list(self.rows.values())
        failed = self.failed()
        if failed is not None:
            return self.tr("Boot failed at “{0}”.").format(failed.title)
        started = [r.started_at for r in rows if r.started_at is not None]
        running = self.running()
        if running is not None:
            position = STAGE_KEYS.index(running.key) + 1
            total = format_duration(now - min(started)) if started else ""
            return self.tr("Booting: stage {0} of {1}, {2} — {3} so far.").format(
                position, len(STAGE_KEYS), running.title, total
            )
        if all(r.state in ("done", "skipped") for r in rows):
            ended = [r.ended_at for r in rows if r.ended_at is not None]
            if started and ended:
                return self.tr("Ready: booted in {0}.").format(
                    format_duration(max(ended) - min(started))
                )
            return self.tr("Ready.")
        return self.tr("No boot in progress. The stages appear here while the VM starts.")


class FailurePanel(QFrame):
    """Why the last boot failed: the stage, the reason, what to try, the console tail."""

    retry_requested = Signal()
    console_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setObjectName("machineFailure")
        self.setStyleSheet(
            "#machineFailure { border: 1px solid #e0443e; border-radius: 4px; }"
        )
        self.title = plain_label("", self)
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.reason = plain_label("", self)
        self.reason.setWordWrap(True)
        self.reason.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint = plain_label("", self)
        self.hint.setWordWrap(True)
        # QEMU's own words, when QEMU itself refused to run (its log, not the console).
        self.qemu_output = plain_label("", self)
        self.qemu_output.setWordWrap(True)
        self.qemu_output.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.qemu_output.hide()
        self.tail_label = plain_label(self.tr("Last console lines:"), self)
        self.tail = QPlainTextEdit(self)
        self.tail.setReadOnly(True)
        self.tail.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.tail.setMaximumBlockCount(200)
        self.tail.setMinimumHeight(120)
        self.tail.setMaximumHeight(320)
        fixed = self.tail.font()
        fixed.setStyleHint(fixed.StyleHint.Monospace)
        fixed.setFamily("monospace")
        self.tail.setFont(fixed)
        self.retry_button = QPushButton(self.tr("Start again"), self)
        self.retry_button.clicked.connect(self.retry_requested)
        self.console_button = QPushButton(self.tr("Open the console"), self)
        self.console_button.clicked.connect(self.console_requested)
        self.copy_button = QPushButton(self.tr("Copy details"), self)
        self.copy_button.clicked.connect(self._copy)
        buttons = QHBoxLayout()
        buttons.addWidget(self.retry_button)
        buttons.addWidget(self.console_button)
        buttons.addWidget(self.copy_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.reason)
        layout.addWidget(self.hint)
        layout.addWidget(self.qemu_output)
        layout.addWidget(self.tail_label)
        layout.addWidget(self.tail, 1)
        layout.addLayout(buttons)
        self.stage_key = ""

    def show_failure(self, stage_key: str, reason: str, hint: str) -> None:
        self.stage_key = stage_key
        title = STAGE_TITLES.get(stage_key, stage_key or "start")
        self.title.setText(self.tr("The VM did not start: “{0}” failed.").format(title))
        self.reason.setText(self.tr("Why: {0}").format(reason))
        self.hint.setText(self.tr("What to try: {0}").format(hint or GENERIC_HINT))
        self.tail.setPlainText(self.tr("(reading the console log…)"))
        self.qemu_output.clear()
        self.qemu_output.hide()
        self.show()

    def set_qemu_output(self, text: str) -> None:
        text = text.strip()
        self.qemu_output.setText(self.tr("QEMU said: {0}").format(text) if text else "")
        self.qemu_output.setVisible(bool(text))

    def set_console_tail(self, text: str) -> None:
        self.tail.setPlainText(text.rstrip("\n") or self.tr("(the console printed nothing)"))
        self.tail.verticalScrollBar().setValue(self.tail.verticalScrollBar().maximum())

    def details_text(self) -> str:
        return "\n".join(
            [self.title.text(), self.reason.text(), self.hint.text(), self.qemu_output.text(), "",
             self.tail_label.text(), self.tail.toPlainText()]
        )

    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(self.details_text())
