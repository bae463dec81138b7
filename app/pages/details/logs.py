"""The Logs tab: a followed log stream, read in a worker thread, shown in a LogPanel.

The reader thread parses the engine's stream and queues the lines; a 100 ms GUI timer
drains the queue into the :class:`~app.widgets.logview.LogPanel` in one batch, so a
container logging tens of thousands of lines a second costs the GUI ten appends a second.
The panel's ring buffer keeps the newest ``capacity`` lines and shows how many fell off.

The queue is bounded by back-pressure rather than by dropping: at ``HIGH_WATER`` lines
the reader waits for the GUI's next take and the engine buffers the rest (it keeps the
log on disk anyway). That also keeps the GUI responsive: a reader parsing flat out holds
the GIL, and every Python callback of the view's painting would wait for it (the "convoy
effect"); a reader that waits, and yields every few hundred lines, leaves room. After a
full batch is taken the reader also pauses ``HEAD_START`` so the GUI can add and paint it
with the GIL to itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from PySide6.QtCore import QDateTime, QTimer
from PySide6.QtWidgets import (
    QComboBox,
    QDateTimeEdit,
    QHBoxLayout,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import user_message
from app.pages.details._base import DetailsTab, plain_label
from app.widgets.logview import LogLine, LogPanel
from vm_backend.engine.client import EngineClient
from vm_backend.engine.models import LogEntry
from vm_backend.engine.streams import Stream, log_time_key

#: How often queued lines reach the view.
BATCH_MS = 100
#: Lines queued for the GUI at which the reader waits for the next take: with the
#: 100 ms batches, at most 80,000 lines/s reach the view, which is plenty to follow.
HIGH_WATER = 8_000
#: The reader yields the GIL every this many lines so the GUI thread gets it promptly.
YIELD_EVERY = 200
#: After the GUI takes a full queue, the reader waits this long before parsing on.
HEAD_START = 0.03
#: Lines kept in the view.
VIEW_CAPACITY = 100_000

#: "Since" choices: label, seconds back (0: the whole log, -1: a chosen time).
SINCE_CHOICES: tuple[tuple[str, int], ...] = (
    ("Any time", 0),
    ("Last 5 minutes", 5 * 60),
    ("Last 15 minutes", 15 * 60),
    ("Last hour", 3600),
    ("Last 6 hours", 6 * 3600),
    ("Last 24 hours", 24 * 3600),
    ("Since…", -1),
)


@dataclass(frozen=True)
class LogQuery:
    """What to ask the engine for; a change restarts the stream."""

    tail: int | None  # None: all lines
    since: float | None  # epoch seconds, None: from the start


class LogReader:
    """A worker thread that follows one container's log into a bounded queue."""

    def __init__(self, client: EngineClient, container_id: str, query: LogQuery) -> None:
        self._client = client
        self._container_id = container_id
        self._query = query
        self._lock = threading.Lock()
        self._queue: list[LogLine] = []
        self._room = threading.Event()  # set while the queue is below HIGH_WATER
        self._room.set()
        self._stream: Stream[LogEntry] | None = None
        self._stopped = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self._last_key: tuple[int, int] | None = None  # the newest line's time queued
        self._repeats = 0  # lines queued with exactly that time
        self._thread = threading.Thread(target=self._run, name="berth-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def stop(self) -> None:
        """Cancel from any thread; the reader ends promptly (the socket is shut down)."""
        self._stopped.set()
        self._room.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()

    def take(self) -> list[LogLine]:
        """The queued lines, oldest first (GUI thread); lets a waiting reader go on."""
        with self._lock:
            lines, self._queue = self._queue, []
            self._room.set()
        return lines

    def _pump(self, entries: Iterable[LogEntry], after: tuple[int, int] | None = None,
              skip: int = 0) -> bool:
        """Queue ``entries`` (those after ``after``, less ``skip`` repeats at it); False
        once stopped."""
        lock, room = self._lock, self._room
        for count, entry in enumerate(entries, 1):
            key = log_time_key(entry.timestamp)
            if after is not None and key is not None:
                if key < after:
                    continue
                if key == after and skip > 0:
                    skip -= 1
                    continue
            if key is not None:
                if key == self._last_key:
                    self._repeats += 1
                else:
                    self._last_key, self._repeats = key, 1
            if entry.stream == "stderr":
                line = LogLine(entry.timestamp, "stderr", entry.text)
            else:
                line = LogLine(entry.timestamp, "stdout", entry.text)
            # Uncontended, the lock costs well under a microsecond; the GUI holds it
            # only to swap the list out.
            with lock:
                self._queue.append(line)
                if len(self._queue) >= HIGH_WATER:
                    room.clear()
            if not room.is_set():
                room.wait()
                # The GUI is appending (and soon painting) what it took: let it run.
                self._stopped.wait(HEAD_START)
            elif count % YIELD_EVERY == 0:
                # A real (if tiny) sleep: on a busy machine the GUI thread may need
                # longer than sleep(0) gives to be scheduled and take the GIL.
                time.sleep(0.001)
            if self._stopped.is_set():
                return False
        return True

    def _catch_up(self) -> None:
        after, skip = self._last_key, self._repeats
        if after is None:  # nothing arrived: ask the same question again
            tail, since = self._query.tail, self._query.since
        else:  # the engine's "since" is inclusive; a microsecond back covers rounding
            tail, since = None, after[0] + after[1] / 1e9 - 1e-6
        stream = self._client.logs(
            self._container_id, follow=False, timestamps=True, tail=tail, since=since
        )
        with self._lock:
            self._stream = stream
        if self._stopped.is_set():
            stream.close()
            return
        try:
            self._pump(stream, after, skip)
        finally:
            stream.close()

    def _run(self) -> None:
        try:
            stream = self._client.logs(
                self._container_id,
                follow=True,
                timestamps=True,
                tail=self._query.tail,
                since=self._query.since,
            )
            with self._lock:
                self._stream = stream
            if self._stopped.is_set():
                stream.close()
                return
            if not self._pump(stream):
                return
            # The stream ended: the container stopped. A follow stream can end before a
            # last line that has no newline (moby/moby#43860), so read what came after the
            # last line seen once more, without following, and add what is missing.
            self._catch_up()
        except Exception as err:  # noqa: BLE001 - reported on the GUI thread
            if not self._stopped.is_set():
                self.error = err
        finally:
            self.finished.set()


class LogsTab(DetailsTab):
    """Follow a container's log with since/tail controls above a LogPanel."""

    title = "Logs"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._reader: LogReader | None = None
        # True until a stream starts, and again after stop(): a stream that ended on its
        # own (the container exited) is not restarted just because the tab is re-shown.
        self._needs_start = True

        self.since = QComboBox(self)
        for label, seconds in SINCE_CHOICES:
            self.since.addItem(self.tr(label), seconds)
        self.since.setToolTip(self.tr("Only lines logged after this time"))
        self.since_time = QDateTimeEdit(self)
        self.since_time.setCalendarPopup(True)
        self.since_time.setDisplayFormat("yyyy-MM-dd HH:mm:ss")
        self.since_time.setDateTime(QDateTime.currentDateTime().addSecs(-3600))
        self.since_time.setVisible(False)
        self.tail = QSpinBox(self)
        self.tail.setRange(0, 1_000_000)
        self.tail.setSingleStep(100)
        self.tail.setSpecialValueText(self.tr("all lines"))
        self.tail.setPrefix(self.tr("last "))
        self.tail.setValue(1000)
        self.tail.setToolTip(self.tr("How many existing lines to load before following"))
        self.restart_button = QToolButton(self)
        self.restart_button.setText(self.tr("Reload"))
        self.restart_button.setToolTip(self.tr("Reconnect to the log with these settings"))
        self.status = plain_label("", self)

        bar = QHBoxLayout()
        bar.setContentsMargins(4, 4, 4, 0)
        bar.addWidget(plain_label(self.tr("Since:"), self))
        bar.addWidget(self.since)
        bar.addWidget(self.since_time)
        bar.addWidget(plain_label(self.tr("Tail:"), self))
        bar.addWidget(self.tail)
        bar.addWidget(self.restart_button)
        bar.addWidget(self.status, 1)

        self.panel = LogPanel(VIEW_CAPACITY, self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.panel, 1)

        self._drain_timer = QTimer(self)
        self._drain_timer.setInterval(BATCH_MS)
        self._drain_timer.timeout.connect(self._drain)
        # Spin boxes emit on every keystroke; wait for the user to stop typing.
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(500)
        self._settle.timeout.connect(self.restart)

        self.since.currentIndexChanged.connect(self._since_changed)
        self.since_time.dateTimeChanged.connect(lambda _dt: self._settle.start())
        self.tail.valueChanged.connect(lambda _v: self._settle.start())
        self.restart_button.clicked.connect(self.restart)

    # ---- lifecycle -------------------------------------------------------------------
    def reset(self) -> None:
        self.panel.model.clear()
        self.status.setText("")
        self._needs_start = True

    def activate(self) -> None:
        if self._needs_start and self._reader is None:
            self.restart()

    def stop(self) -> None:
        self._settle.stop()
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
            self._needs_start = True
            self.status.setText(self.tr("Paused"))
        self._drain_timer.stop()

    def release(self) -> None:
        if self._reader is not None:
            self._reader.stop()

    def restart(self) -> None:
        """Drop the lines shown and reconnect with the current since/tail settings."""
        self._settle.stop()
        if self.client is None or not self.container_id:
            return
        self.stop()
        self.panel.model.clear()
        self._start()

    @property
    def running(self) -> bool:
        return self._reader is not None

    def container_started(self) -> None:
        """The container (re)started: follow it again if its log had ended."""
        if self._reader is None and not self._needs_start and self.client is not None:
            self.restart()

    @property
    def reader(self) -> LogReader | None:
        """The stream being followed, if any."""
        return self._reader

    def query(self) -> LogQuery:
        """The since/tail the controls ask for."""
        tail = self.tail.value() or None
        seconds = int(self.since.currentData())
        since: float | None = None
        if seconds > 0:
            since = time.time() - seconds
        elif seconds < 0:
            since = self.since_time.dateTime().toSecsSinceEpoch()
        return LogQuery(tail, since)

    # ---- internals -------------------------------------------------------------------
    def _since_changed(self, _index: int) -> None:
        self.since_time.setVisible(int(self.since.currentData()) < 0)
        self.restart()

    def _start(self) -> None:
        assert self.client is not None
        self._needs_start = False
        self._reader = LogReader(self.client, self.container_id, self.query())
        self._reader.start()
        self.status.setText(self.tr("Following…"))
        self._drain_timer.start()

    def _drain(self) -> None:
        reader = self._reader
        if reader is None:
            return
        # Read "finished" before taking: lines pushed before it was set are then all in
        # this take, so the end is never reported with lines still queued.
        finished = reader.finished.is_set()
        lines = reader.take()
        if lines:
            self.panel.append_lines(lines)
        if finished and not lines:
            # The last lines are in; report how the stream ended.
            self._drain_timer.stop()
            self._reader = None
            if reader.error is not None:
                self.status.setText(user_message(reader.error))
            else:
                self.status.setText(
                    self.tr("Log ended (the container stopped). Reload to follow again.")
                )
            return


__all__ = ["LogQuery", "LogReader", "LogsTab"]
