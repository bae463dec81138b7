"""The active engine, as Qt signals: connection state, batched diffs and events.

:class:`EngineSession` owns one :class:`~vm_backend.engine.client.EngineClient` and one
:class:`~vm_backend.engine.monitor.EngineMonitor`. The monitor calls back on its worker
thread; the session queues what it hears and flushes it to the GUI thread at most every
``BATCH_MS`` milliseconds, so a storm of 500 container changes costs a handful of signals.
The first change after a quiet spell is flushed at once (the first container list at start
does not wait a batch), the ones that follow it within ``BATCH_MS`` wait for the next
flush. Idle, no timer runs.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QTimer, Signal

from app.bridge import call_in_gui
from vm_backend.engine.client import EngineClient
from vm_backend.engine.models import Endpoint, Event
from vm_backend.engine.monitor import Diff, EngineMonitor

BATCH_MS = 100


class EngineSession(QObject):
    """Live state of one engine, delivered on the GUI thread."""

    connection_changed = Signal(bool, str)  # connected, reason
    diffs = Signal(list)  # list[Diff], in order
    events = Signal(list)  # list[Event], in order

    def __init__(
        self,
        endpoint: Endpoint,
        parent: QObject | None = None,
        *,
        reconcile_interval: float = 30.0,
    ) -> None:
        super().__init__(parent)
        self.endpoint = endpoint
        self.client = EngineClient(endpoint.url)
        self.connected = False
        self.reason = ""
        self._lock = threading.Lock()
        self._pending_diffs: list[Diff[Any]] = []
        self._pending_events: list[Event] = []
        self._pending_conn: tuple[bool, str] | None = None
        self._scheduled = False
        self._stopped = False
        self._last_flush = 0.0  # time.monotonic() of the last flush
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(BATCH_MS)
        self._timer.timeout.connect(self._flush)
        self.monitor = EngineMonitor(self.client, self, reconcile_interval=reconcile_interval)

    def start(self) -> None:
        self.monitor.start()

    def stop(self) -> None:
        self._stopped = True  # late callbacks from monitor threads are ignored from now on
        self.monitor.stop(timeout=1.0)
        self.client.close()

    def retry(self) -> None:
        self.monitor.request_reconcile()

    def snapshot(self, kind: str) -> list[Any]:
        return self.monitor.snapshot(kind)

    # ---- MonitorListener (worker threads) -------------------------------------------------
    def on_connection(self, connected: bool, reason: str) -> None:
        with self._lock:
            self._pending_conn = (connected, reason)
        self._schedule()

    def on_diff(self, diff: Diff[Any]) -> None:
        with self._lock:
            self._pending_diffs.append(diff)
        self._schedule()

    def on_event(self, event: Event) -> None:
        with self._lock:
            self._pending_events.append(event)
        self._schedule()

    # ---- GUI thread -----------------------------------------------------------------------
    def _schedule(self) -> None:
        if self._stopped:
            return
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        call_in_gui(self._arm)

    def _arm(self) -> None:
        # The session may have been stopped and deleted while this call was queued.
        if self._stopped or not shiboken6.isValid(self) or not shiboken6.isValid(self._timer):
            return
        if not self._timer.isActive():
            since = (time.monotonic() - self._last_flush) * 1000
            self._timer.start(max(0, int(BATCH_MS - since)))

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        with self._lock:
            conn, self._pending_conn = self._pending_conn, None
            diffs, self._pending_diffs = self._pending_diffs, []
            events, self._pending_events = self._pending_events, []
            self._scheduled = False
        if conn is not None and (conn[0] != self.connected or conn[1] != self.reason):
            self.connected, self.reason = conn
            self.connection_changed.emit(conn[0], conn[1])
        if diffs:
            self.diffs.emit(diffs)
        if events:
            self.events.emit(events)
