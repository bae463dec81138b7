"""The tray icon: engine and VM state, quick actions, and notifications for failures.

Notifications (when Settings.notify_failures is on): a container that exits with a
non-zero code, and the engine going away.

The helper VM: its state ("VM: Running", …) and Start / Stop, shown only when a helper VM
exists. The state is read from berthd on a worker when the menu opens, every
:data:`VM_POLL_MS` and after each action; reading never starts berthd (while it is down
the machine's files say "stopped"). Start is enabled when the VM is stopped or crashed,
Stop while it starts (cancelling the boot), runs or is paused; neither while an action
from the tray is in flight or the VM is stopping. The actions run on workers (a start
blocks its worker for the whole boot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QMenu, QSystemTrayIcon, QWidget

from app import icons
from app.bridge import Op, user_message
from app.session import EngineSession
from app.vm_states import START_STATES, STOP_STATES, state_words

# Imported here, not in the worker that first needs them: an import still running on a
# worker thread when the process exits crashed the interpreter.
from vm_backend.daemon.client import DaemonClient, DaemonError, daemon_answers
from vm_backend.engine.models import Event
from vm_backend.machine.paths import MachinePaths

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


VM_NAME = "default"
VM_POLL_MS = 10_000
STOP_TIMEOUT_S = 30


def _machine_status() -> dict[str, Any] | None:
    """The default VM's status (worker thread), or None when no VM exists.

    Never starts berthd: when it does not answer, a machine with a spec file is stopped.
    """
    if not MachinePaths.for_machine(VM_NAME).spec_file.exists():
        return None
    try:
        status: dict[str, Any] = DaemonClient(autostart=False).call(
            "machine.status", {"name": VM_NAME}, timeout=30
        )
    except DaemonError:
        if not daemon_answers(timeout=2.0):
            return {"state": "stopped", "detail": "berthd is not running"}
        raise
    return status


def _machine_call(method: str) -> Any:
    params: dict[str, Any] = {"name": VM_NAME}
    if method == "machine.stop":
        params["timeout"] = STOP_TIMEOUT_S
    # A start blocks for the whole boot; berthd bounds every stage.
    return DaemonClient().call(method, params, timeout=None)


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
        self.vm_start_action = QAction("Start the VM", self.menu)
        self.vm_stop_action = QAction("Stop the VM", self.menu)
        self.quit_action = QAction("Quit Berth", self.menu)
        for a in (self.state_action, self.vm_state_action):
            self.menu.addAction(a)
        self.menu.addSeparator()
        self.menu.addAction(self.open_action)
        self.menu.addAction(self.vm_start_action)
        self.menu.addAction(self.vm_stop_action)
        self.menu.addSeparator()
        self.menu.addAction(self.quit_action)
        self.icon.setContextMenu(self.menu)
        self.icon.setToolTip("Berth")
        self.open_action.triggered.connect(self.open_requested)
        self.quit_action.triggered.connect(self.quit_requested)
        self.vm_start_action.triggered.connect(self.start_vm)
        self.vm_stop_action.triggered.connect(self.stop_vm)
        self.icon.activated.connect(self._activated)
        self.menu.aboutToShow.connect(self.refresh_vm)
        self.notifications: list[tuple[str, str]] = []  # what was shown (for tests and logs)
        self._session: EngineSession | None = None
        self.vm_state = ""  # berthd's word for the VM's state; "" until known
        self._vm_busy = ""  # the tray's own action in flight ("starting"/"stopping")
        self._vm_reading = False
        self._vm_cancelled = False
        self._vm_timer = QTimer(self)
        self._vm_timer.setInterval(VM_POLL_MS)
        self._vm_timer.timeout.connect(self.refresh_vm)
        self._vm_timer.start()
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
        """Read the VM's state on a worker (one read at a time)."""
        if self._vm_reading:
            return
        self._vm_reading = True

        def done() -> None:
            self._vm_reading = False

        Op(_machine_status).success(self._vm_status).failure(
            lambda err: self._vm_status({"state": "unknown", "detail": user_message(err)})
        ).finally_(done).run(self)

    def _vm_status(self, status: dict[str, Any] | None) -> None:
        exists = status is not None
        for action in (self.vm_state_action, self.vm_start_action, self.vm_stop_action):
            action.setVisible(exists)
        if status is None:
            self.vm_state = ""
            return
        self.vm_state = str(status.get("state") or "unknown")
        self._render_vm()

    def _render_vm(self) -> None:
        state = self.vm_state
        words = state_words(state)
        if self._vm_busy == "starting":
            words = "Starting…"
        elif self._vm_busy == "stopping":
            words = "Stopping…"
        self.vm_state_action.setText(f"VM: {words}")
        idle = not self._vm_busy
        self.vm_start_action.setEnabled(idle and state in START_STATES)
        # Stop also cancels a boot, the tray's own included.
        self.vm_stop_action.setEnabled(
            self._vm_busy == "starting" or (idle and state in STOP_STATES)
        )

    def start_vm(self) -> None:
        if not self.vm_start_action.isEnabled():
            return
        self._vm_action("machine.start", "starting")

    def stop_vm(self) -> None:
        if not self.vm_stop_action.isEnabled():
            return
        self._vm_cancelled = self._vm_busy == "starting"
        self._vm_action("machine.stop", "stopping")

    def _vm_action(self, method: str, busy: str) -> None:
        self._vm_busy = busy
        if busy == "starting":
            self._vm_cancelled = False
            self.vm_state = "starting"
        self._render_vm()

        def finished() -> None:
            if self._vm_busy == busy:
                self._vm_busy = ""
            self._render_vm()
            self.refresh_vm()

        def failed(err: BaseException) -> None:
            if busy == "starting" and self._vm_cancelled:
                return  # stopped from the tray while booting: not a failure
            self.notify("Helper VM", user_message(err))

        Op(_machine_call, method).failure(failed).finally_(finished).run(self)


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
