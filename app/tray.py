"""The tray icon: engine and VM state, quick actions, and notifications for failures.

Notifications (when Settings.notify_failures is on): a container that exits with a
non-zero code, and the engine going away. The VM's Start/Stop go through berthd on a
worker thread; the item is shown only when a helper VM exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QMenu, QSystemTrayIcon, QWidget

from app import icons
from app.bridge import Op, user_message
from app.session import EngineSession

# Imported here, not in the worker that first needs them: an import still running on a
# worker thread when the process exits crashed the interpreter.
from vm_backend.daemon.client import DaemonClient
from vm_backend.engine.models import Event
from vm_backend.paths import berth_home

if TYPE_CHECKING:
    from app.context import AppContext

def app_icon() -> QIcon:
    """The window icon (kept here for callers; the icons live in app/icons.py)."""
    return icons.app_icon()


def failure_message(event: Event) -> str | None:
    """The notification text for an event that deserves one, else None."""
    if event.type == "container" and event.action == "die":
        code = event.attributes.get("exitCode", "0")
        if code not in ("0", ""):
            name = event.name or event.id[:12]
            return f"Container {name} exited with code {code}."
    if event.type == "container" and event.action == "oom":
        return f"Container {event.name or event.id[:12]} ran out of memory."
    return None


def _machine_status() -> dict[str, Any] | None:
    """The default VM's status from berthd, or None when no VM exists."""
    if not (berth_home() / "machines" / "default" / "machine.json").exists():
        return None
    status: dict[str, Any] = DaemonClient().call("machine.status", {"name": "default"})
    return status


def _machine_call(method: str) -> Any:
    return DaemonClient().call(method, {"name": "default"})


class BerthTray(QObject):
    """Owns the QSystemTrayIcon; ``open_requested``/``quit_requested`` go to the app."""

    open_requested = Signal()
    quit_requested = Signal()

    def __init__(self, ctx: AppContext, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.icon = QSystemTrayIcon(icons.tray_icon(), self)
        self.menu = QMenu()
        self.state_action = QAction("Engine: looking…", self.menu)
        self.state_action.setEnabled(False)
        self.vm_state_action = QAction("", self.menu)
        self.vm_state_action.setEnabled(False)
        self.open_action = QAction("Open Berth", self.menu)
        self.vm_toggle_action = QAction("Start the VM", self.menu)
        self.quit_action = QAction("Quit Berth", self.menu)
        for a in (self.state_action, self.vm_state_action):
            self.menu.addAction(a)
        self.menu.addSeparator()
        self.menu.addAction(self.open_action)
        self.menu.addAction(self.vm_toggle_action)
        self.menu.addSeparator()
        self.menu.addAction(self.quit_action)
        self.icon.setContextMenu(self.menu)
        self.icon.setToolTip("Berth")
        self.open_action.triggered.connect(self.open_requested)
        self.quit_action.triggered.connect(self.quit_requested)
        self.vm_toggle_action.triggered.connect(self._toggle_vm)
        self.icon.activated.connect(self._activated)
        self.menu.aboutToShow.connect(self.refresh_vm)
        self.notifications: list[tuple[str, str]] = []  # what was shown (for tests and logs)
        self._session: EngineSession | None = None
        self._vm_running = False
        ctx.session_changed.connect(self._attach)
        ctx.session_failed.connect(self._failed)
        self._attach(ctx.session)
        self.refresh_vm()

    @staticmethod
    def available() -> bool:
        return QSystemTrayIcon.isSystemTrayAvailable()

    def show(self) -> None:
        self.icon.show()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            self.open_requested.emit()

    def _attach(self, session: EngineSession | None) -> None:
        if self._session is not None:
            for signal, slot in (
                (self._session.events, self._events),
                (self._session.connection_changed, self._connection),
            ):
                try:
                    signal.disconnect(slot)
                except (RuntimeError, TypeError):
                    pass
        self._session = session
        if session is None:
            self._set_state("Engine: none connected")
            return
        session.events.connect(self._events)
        session.connection_changed.connect(self._connection)
        self._connection(session.connected, session.reason)

    def _set_state(self, text: str) -> None:
        self.state_action.setText(text)
        self.icon.setToolTip(f"Berth — {text}")

    def _connection(self, connected: bool, reason: str) -> None:
        session = self._session
        name = session.endpoint.name if session is not None else "engine"
        if connected:
            self._set_state(f"Engine: {name} — running")
        else:
            self._set_state(f"Engine: {name} — unreachable")
            self.notify("Engine unreachable", f"{name}: {reason or 'no answer'}")

    def _failed(self, endpoint: Any, reason: str) -> None:
        self._set_state("Engine: unreachable")
        self.notify("No container engine", reason)

    def _events(self, events: list[Event]) -> None:
        for event in events:
            text = failure_message(event)
            if text:
                self.notify("Container failed", text)

    def notify(self, title: str, text: str) -> None:
        if not self.ctx.settings.notify_failures:
            return
        self.notifications.append((title, text))
        del self.notifications[:-100]
        if self.icon.isVisible() and self.icon.supportsMessages():
            self.icon.showMessage(title, text, QSystemTrayIcon.MessageIcon.Warning, 8000)

    # ---- the VM -----------------------------------------------------------------------
    def refresh_vm(self) -> None:
        Op(_machine_status).success(self._vm_status).failure(
            lambda err: self._vm_status({"state": "unknown", "detail": user_message(err)})
        ).run(self)

    def _vm_status(self, status: dict[str, Any] | None) -> None:
        exists = status is not None
        self.vm_state_action.setVisible(exists)
        self.vm_toggle_action.setVisible(exists)
        if status is None:
            return
        state = str(status.get("state"))
        self._vm_running = state in ("running", "starting", "paused")
        self.vm_state_action.setText(f"VM: {state}")
        self.vm_toggle_action.setText("Stop the VM" if self._vm_running else "Start the VM")

    def _toggle_vm(self) -> None:
        method = "machine.stop" if self._vm_running else "machine.start"
        self.vm_state_action.setText("VM: stopping…" if self._vm_running else "VM: starting…")
        Op(_machine_call, method).success(lambda _r: self.refresh_vm()).failure(
            lambda err: self.notify("Helper VM", user_message(err))
        ).run(self)


def attach_tray(ctx: AppContext, window: QWidget, quit_app: Any) -> BerthTray | None:
    """Create the tray for ``window`` when the platform has one; None otherwise."""
    if not BerthTray.available():
        return None
    tray = BerthTray(ctx, window)

    def open_window() -> None:
        window.showNormal()
        window.raise_()
        window.activateWindow()

    tray.open_requested.connect(open_window)
    tray.quit_requested.connect(quit_app)
    tray.show()
    return tray
