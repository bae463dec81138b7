"""The Machine page: the helper VM's state, boot timeline, console, shells and settings.

Everything goes through berthd (``vm_backend.daemon.client.DaemonClient``), always on a
worker via :class:`~app.bridge.Op`; the GUI thread never waits. ``machine.start`` is a
long blocking call that streams progress from its worker; the page re-emits each progress
record through a Qt signal, so the timeline advances live on the GUI thread.

``machine.status`` is polled every 2 s, and only while the page is visible and the VM is
up (starting, running, paused or stopping): a stopped VM or a hidden page costs nothing.
The console connects to each QEMU run once (keyed by its pid) and reconnects when the VM
restarts; SSH shells share one pinned transport, opened on first use.
"""

from __future__ import annotations

import contextlib
import platform
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QStackedWidget,
    QTabBar,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.pages.details._base import human_bytes, plain_label
from app.pages.details.chart import LineChart
from app.pages.machine_guest import GuestPanel
from app.pages.machine_ports import PortsTab
from app.pages.machine_settings import HostLimits, SettingsPanel
from app.pages.machine_terminal import ChannelLike, ConsoleTab, ShellTab
from app.pages.machine_timeline import STAGE_KEYS, FailurePanel, TimelineView
from app.pages.registry import register_page
from app.vm_states import state_words
from app.widgets.boxes import ask_destructive, plain_box
from vm_backend.daemon.client import DaemonClient, DaemonError, daemon_answers
from vm_backend.daemon.reset import reset_machine
from vm_backend.errors import BerthError
from vm_backend.machine.keys import ensure_machine_keys
from vm_backend.machine.paths import MachinePaths
from vm_backend.machine.spec import default_shares, load_spec, spec_to_json
from vm_backend.machine.ssh import GuestSSH
from vm_backend.paths import berth_home

if TYPE_CHECKING:
    from app.context import AppContext

POLL_MS = 2000
#: While the page is visible and the VM is not up: notice a start from the tray or the CLI.
IDLE_POLL_MS = 10_000
#: States in which the VM has a QEMU process (and so a console and resources to chart).
UP_STATES = frozenset({"starting", "running", "paused", "stopping"})
CONSOLE_STATES = frozenset({"starting", "running", "paused"})
SHELL_STATES = frozenset({"running", "paused"})
STOP_TIMEOUT_S = 30
SSH_RETRY_S = 20.0
CONSOLE_TAIL_LINES = 30
QEMU_TAIL_LINES = 8
DEFAULT_DISK_GIB = 32

ClientFactory = Callable[..., Any]  # (autostart: bool = True) -> a berthd client

_STAGE_IN_MESSAGE = re.compile(r"stage '([a-z]+)'")


def default_client(autostart: bool = True) -> Any:
    """A berthd client (blocking: call it on a worker).

    Actions start berthd when it is not running; status reads do not (``autostart=False``):
    merely looking at the page must not spawn a daemon.
    """
    return DaemonClient(autostart=autostart)


def offline_status(name: str) -> dict[str, Any] | None:
    """The machine as its files describe it while berthd is not running (None: no machine).

    Without berthd nothing runs the VM's data plane; if QEMU outlived a crashed berthd,
    the next action starts berthd, which reattaches to it.
    """
    spec_file = MachinePaths.for_machine(name).spec_file
    if not spec_file.exists():
        return None
    return {
        "name": name,
        "state": "stopped",
        "detail": "berthd is not running; it starts with the VM",
        "spec": spec_to_json(load_spec(spec_file)),
        "timeline": [],
        "resources": {},
    }


def host_arch() -> str:
    return "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "amd64"


def default_spec(name: str, limits: HostLimits) -> dict[str, Any]:
    """What "Create the helper VM" asks for: modest, and never more than the host has."""
    half = (limits.memory_mib // 2) // 256 * 256
    return {
        "name": name,
        "arch": host_arch(),
        "cpus": max(1, min(2, limits.cpus)),
        "memory_mib": max(512, min(2048, half)),
        "disk_gib": DEFAULT_DISK_GIB,
        "accelerator": "auto",
    }


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def failed_stage_from(message: str, fallback: str) -> str:
    """The stage a boot error names ("stage 'kernel' …"), else ``fallback``."""
    match = _STAGE_IN_MESSAGE.search(message)
    if match and match.group(1) in STAGE_KEYS:
        return match.group(1)
    return fallback


class FirstRunPanel(QWidget):
    """No machine yet: what creating one will use, and the button that does it."""

    create_requested = Signal()

    def __init__(self, spec: dict[str, Any], where: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        title = plain_label(self.tr("Create the helper VM"), self)
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.4)
        font.setBold(True)
        title.setFont(font)
        intro = plain_label(
            self.tr(
                "Berth runs Linux containers in a small Linux VM under QEMU: the helper VM. "
                "It has its own container engine, which Berth and your docker CLI use "
                "through a socket on this computer. It is not created yet."
            ),
            self,
        )
        intro.setWordWrap(True)
        shared = default_shares()
        sharing = (
            self.tr("  • your folder {0}, shared with the VM at the same path (for -v)\n").format(
                shared[0].host_path
            )
            if shared
            else ""
        )
        self.plan = plain_label(
            self.tr(
                "It will use:\n"
                "  • a {0} GiB data disk for images and volumes (it grows as it fills)\n"
                "  • {1} MiB of memory and {2} CPUs while it runs\n"
                "  • the folder {3}\n"
                "{4}"
                "You can change all of this later in its settings."
            ).format(spec["disk_gib"], spec["memory_mib"], spec["cpus"], where, sharing),
            self,
        )
        self.plan.setWordWrap(True)
        self.plan.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.create_button = QPushButton(self.tr("Create the helper VM"), self)
        self.create_button.setDefault(True)
        self.create_button.clicked.connect(self.create_requested)
        self.status = plain_label("", self)
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 24, 24, 24)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addWidget(self.plan)
        row = QHBoxLayout()
        row.addWidget(self.create_button)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch(1)


class CopyLine(QWidget):
    """A read-only command with a Copy button."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit(self)
        self.edit.setReadOnly(True)
        font = self.edit.font()
        font.setFamily("monospace")
        self.edit.setFont(font)
        self.button = QPushButton(self.tr("Copy"), self)
        self.button.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.edit.text()))
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.button)

    def set_text(self, text: str) -> None:
        self.edit.setText(text)


class UsageBox(QGroupBox):
    """How to use the VM's engine from a terminal (shown while the socket is up)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle(self.tr("Use it from a terminal"))
        self.context_line = CopyLine(self)
        self.context_line.set_text("docker --context berth ps")
        self.env_line = CopyLine(self)
        self.note = plain_label(
            self.tr("Either use the docker context “berth”, or point DOCKER_HOST at the socket:"),
            self,
        )
        self.note.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.note)
        layout.addWidget(self.context_line)
        layout.addWidget(self.env_line)

    def set_docker_host(self, docker_host: str) -> None:
        self.env_line.set_text(f"export DOCKER_HOST={docker_host}")


class OverviewTab(QScrollArea):
    """State, accelerator (with the slow-mode notice), size, uptime, charts, timeline."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        body = QWidget(self)
        self.slow_notice = plain_label("", body)
        self.slow_notice.setWordWrap(True)
        self.slow_notice.setObjectName("slowNotice")
        self.slow_notice.setStyleSheet(
            "#slowNotice { background: #fff4ce; color: #5c4400; border: 1px solid #e5c35c;"
            " border-radius: 4px; padding: 6px; }"
        )
        self.slow_notice.hide()
        self.failure = FailurePanel(body)
        self.failure.hide()
        self.usage = UsageBox(body)
        self.usage.hide()

        grid = QGridLayout()
        grid.setHorizontalSpacing(16)
        self.values: dict[str, QLabel] = {}
        fields = (
            ("state", "State"),
            ("accelerator", "Accelerator"),
            ("cpus", "CPUs"),
            ("memory", "Memory"),
            ("disk", "Data disk"),
            ("uptime", "Uptime"),
            ("ssh", "SSH port"),
            ("socket", "Engine socket"),
        )
        for i, (key, title) in enumerate(fields):
            row, col = i % 4, (i // 4) * 2
            name = plain_label(self.tr(title) + ":", body)
            value = plain_label("—", body)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(name, row, col)
            grid.addWidget(value, row, col + 1)
            self.values[key] = value
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 2)

        self.cpu_chart = LineChart(
            self.tr("QEMU CPU"), [self.tr("CPU")], lambda v: f"{v:.0f} %",
            capacity=150, interval=POLL_MS / 1000, minimum_max=10.0, parent=body,
        )
        self.mem_chart = LineChart(
            self.tr("QEMU memory"), [self.tr("RSS")], human_bytes,
            capacity=150, interval=POLL_MS / 1000, binary=True, parent=body,
        )
        for chart in (self.cpu_chart, self.mem_chart):
            chart.setMinimumHeight(150)
            chart.setMaximumHeight(240)
        # QEMU's own figures, and the guest's (from the agent) right under them.
        self.guest = GuestPanel(POLL_MS / 1000, body)
        self.guest.hide()
        self.charts = QWidget(body)
        charts = self.charts_grid = QGridLayout(self.charts)
        charts.setContentsMargins(0, 0, 0, 0)
        charts.addWidget(self.cpu_chart, 0, 0)
        charts.addWidget(self.mem_chart, 0, 1)
        charts.addWidget(self.guest.cpu_chart, 1, 0)
        charts.addWidget(self.guest.mem_chart, 1, 1)
        charts.setColumnStretch(0, 1)
        charts.setColumnStretch(1, 1)
        self.charts.hide()

        self.timeline = TimelineView(body)
        timeline_box = QGroupBox(self.tr("Boot timeline"), body)
        box_layout = QVBoxLayout(timeline_box)
        box_layout.addWidget(self.timeline)

        layout = QVBoxLayout(body)
        layout.addWidget(self.slow_notice)
        layout.addLayout(grid)
        layout.addWidget(self.failure)
        layout.addWidget(timeline_box)
        layout.addWidget(self.usage)
        layout.addWidget(self.guest)
        layout.addWidget(self.charts)
        layout.addStretch(1)
        self.setWidget(body)

    def set_value(self, key: str, text: str) -> None:
        self.values[key].setText(text)


class MachinePage(QWidget):
    """The helper VM, start to finish. ``client_factory`` makes a berthd client (tests
    pass a fake); it is only ever called on worker threads."""

    #: One progress record of a running ``machine.start`` (emitted from its worker).
    progress = Signal(object)
    #: A status document was rendered (tests and screenshots wait on it).
    status_rendered = Signal(object)

    def __init__(
        self,
        ctx: AppContext | None = None,
        *,
        client_factory: ClientFactory = default_client,
        name: str = "default",
        limits: HostLimits | None = None,
        poll_ms: int = POLL_MS,
        idle_poll_ms: int = IDLE_POLL_MS,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.name = name
        self._client_factory = client_factory
        self.limits = limits or HostLimits.detect()
        self.status: dict[str, Any] | None = None
        self.exists: bool | None = None  # unknown until the first answer
        self._booting = False
        self._cancelling = False  # Stop was pressed during a boot the page started
        self._busy = ""  # the action in flight, for the buttons and the status line
        self._refreshing = False
        self._refresh_again = False
        self._sample_again = False
        self._first_boot = False
        self._shell_count = 0
        self._ssh: GuestSSH | None = None
        self._ssh_lock = threading.Lock()

        # ---- header: title, state, actions -----------------------------------------
        self.title = plain_label(self.tr("Helper VM “{0}”").format(name), self)
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        self.title.setFont(font)
        self.state_label = plain_label("", self)
        self.start_button = QPushButton(self.tr("Start"), self)
        self.stop_button = QPushButton(self.tr("Stop"), self)
        self.restart_button = QPushButton(self.tr("Restart"), self)
        self.pause_button = QPushButton(self.tr("Pause"), self)
        self.shell_button = QPushButton(self.tr("New shell"), self)
        self.delete_button = QPushButton(self.tr("Delete…"), self)
        self.reset_button = QPushButton(self.tr("Reset to factory…"), self)
        self.message = plain_label("", self)
        self.message.setWordWrap(True)
        header = QHBoxLayout()
        header.addWidget(self.title)
        header.addWidget(self.state_label)
        header.addStretch(1)
        for button in (self.start_button, self.stop_button, self.restart_button,
                       self.pause_button, self.shell_button, self.delete_button,
                       self.reset_button):
            header.addWidget(button)

        # ---- body --------------------------------------------------------------------
        spec = default_spec(name, self.limits)
        self.first_run = FirstRunPanel(spec, MachinePaths.for_machine(name).state_dir, self)
        self.overview = OverviewTab(self)
        self.console = ConsoleTab(client_factory, name, self)
        self.ports = PortsTab(self)
        self.settings = SettingsPanel(self.limits, self)
        settings_scroll = QScrollArea(self)
        settings_scroll.setWidgetResizable(True)
        settings_scroll.setFrameShape(QFrame.Shape.NoFrame)
        settings_scroll.setWidget(self.settings)
        self.tabs = QTabWidget(self)
        self.tabs.setTabsClosable(True)
        self.tabs.addTab(self.overview, self.tr("Overview"))
        self.tabs.addTab(self.console, self.tr("Console"))
        self.tabs.addTab(self.ports, self.tr("Ports"))
        self.tabs.addTab(settings_scroll, self.tr("Settings"))
        for i in range(self.tabs.count()):
            # Only shell tabs close; the fixed tabs lose their close buttons.
            self.tabs.tabBar().setTabButton(i, QTabBar.ButtonPosition.RightSide, None)
        self.stack = QStackedWidget(self)
        self.loading = plain_label(self.tr("Asking berthd about the helper VM…"), self)
        self.loading.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.stack.addWidget(self.loading)
        self.stack.addWidget(self.first_run)
        self.stack.addWidget(self.tabs)

        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.message)
        layout.addWidget(self.stack, 1)

        self._poll = QTimer(self)
        self._poll.setInterval(poll_ms)
        self._poll.timeout.connect(lambda: self.refresh(sample=True))
        self._idle_poll = QTimer(self)
        self._idle_poll.setInterval(idle_poll_ms)
        self._idle_poll.timeout.connect(self.refresh)

        self.start_button.clicked.connect(self.start_vm)
        self.stop_button.clicked.connect(self.stop_vm)
        self.restart_button.clicked.connect(self.restart_vm)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.shell_button.clicked.connect(self.new_shell)
        self.delete_button.clicked.connect(self.delete_vm)
        self.reset_button.clicked.connect(self.reset_vm)
        self.first_run.create_requested.connect(self.create_vm)
        self.overview.failure.retry_requested.connect(self.start_vm)
        self.overview.failure.console_requested.connect(
            lambda: self.tabs.setCurrentWidget(self.console)
        )
        self.settings.save_requested.connect(self.save_settings)
        self.settings.restart_requested.connect(self.restart_vm)
        self.ports.lan_change_requested.connect(self.save_lan_exposure)
        self.ports.restart_requested.connect(self.restart_vm)
        self.tabs.tabCloseRequested.connect(self._close_tab)
        self.progress.connect(self._on_progress)
        self._update_buttons()
        self.refresh()

    # ---- small helpers -------------------------------------------------------------------
    @property
    def state(self) -> str:
        return str((self.status or {}).get("state") or ("none" if self.exists is False else ""))

    def _call(self, method: str, **params: Any) -> Any:
        """A blocking berthd call: run it on a worker only."""
        return self._client_factory().call(method, {"name": self.name, **params})

    def _say(self, text: str) -> None:
        self.message.setText(text)

    def _fail(self, what: str, err: BaseException) -> None:
        self._say(self.tr("{0} failed: {1}").format(what, user_message(err)))

    # ---- status --------------------------------------------------------------------------
    def refresh(self, sample: bool = False) -> None:
        """Ask berthd for the machine's status (one request in flight at a time)."""
        if self._refreshing:
            self._refresh_again = True
            # A poll tick that finds a read in flight still gets its chart sample.
            self._sample_again = self._sample_again or sample
            return
        self._refreshing = True
        name = self.name

        def fetch() -> dict[str, Any] | None:
            try:
                docs = self._client_factory(autostart=False).call("machine.list", {})
            except DaemonError:
                if daemon_answers(timeout=2.0):
                    raise
                return offline_status(name)
            for doc in docs or []:
                if isinstance(doc, dict) and doc.get("name") == name:
                    return doc
            return None

        def done() -> None:
            self._refreshing = False
            if self._refresh_again:
                again_sample, self._sample_again = self._sample_again, False
                self._refresh_again = False
                self.refresh(sample=again_sample)

        Op(fetch).success(lambda doc: self._render(doc, sample)).failure(
            lambda err: self._fail(self.tr("Reading the VM's status"), err)
        ).finally_(done).run(self)

    def _render(self, doc: dict[str, Any] | None, sample: bool = False) -> None:
        if doc is None:
            if self._busy == "creating":
                return
            self.exists = False
            self.status = None
            self.stack.setCurrentWidget(self.first_run)
            self.console.detach()
            self._drop_ssh()
            self.ports.set_status(None)
            self._update_buttons()
            self._update_polling()
            self.status_rendered.emit(None)
            return
        self.exists = True
        if self._booting and doc.get("state") in ("stopped", "crashed"):
            # An answer from before berthd took up our start (or a status read that raced
            # it): the boot in flight is the truth until machine.start returns.
            doc = {**doc, "state": "starting"}
        self.status = doc
        self.stack.setCurrentWidget(self.tabs)
        state = str(doc.get("state") or "stopped")
        ov = self.overview
        self.state_label.setText(self.tr(state_words(state)))
        detail = str(doc.get("detail") or "")
        if detail == doc.get("accelerator_reason") or not ov.failure.isHidden():
            # Said already: in the slow-mode notice, or in the failure panel.
            detail = ""
        ov.set_value("state", self.tr(state_words(state))
                     + (f" — {detail}" if detail else ""))
        accel = str(doc.get("accelerator") or "")
        ov.set_value("accelerator", accel.upper() if accel else self.tr("chosen at start"))
        spec = doc.get("spec") or {}
        if spec:
            ov.set_value("cpus", str(spec.get("cpus", "—")))
            ov.set_value("memory", f"{spec.get('memory_mib', '—')} MiB")
            ov.set_value("disk", f"{spec.get('disk_gib', '—')} GiB")
            running_now = state in SHELL_STATES
            run_id = doc.get("pid") if running_now else None
            if spec != self.settings.spec and not self.settings.changes():
                self.settings.set_spec(spec, running_now, run_id)
            else:
                self.settings.set_running(running_now, run_id)
        ov.set_value("uptime", format_uptime(doc.get("uptime_s")))
        ov.set_value("ssh", str(doc.get("ssh_port") or "—"))
        ov.set_value("socket", str(doc.get("socket") or "—"))
        if doc.get("slow_mode") and state in UP_STATES:
            ov.slow_notice.setText(
                self.tr(
                    "Slow mode: {0}. The VM is emulated in software, so booting takes minutes "
                    "and containers run several times slower than with hardware acceleration."
                ).format(doc.get("accelerator_reason") or "no hardware acceleration")
            )
            ov.slow_notice.show()
        else:
            ov.slow_notice.hide()
        timeline = doc.get("timeline") or []
        if timeline:
            ov.timeline.set_stages(timeline)
        resources = doc.get("resources") or {}
        if sample and state in UP_STATES:  # QEMU's cost while booting is worth seeing too
            cpu = resources.get("qemu_cpu_percent")
            rss = resources.get("qemu_rss_bytes")
            if isinstance(cpu, int | float):
                ov.cpu_chart.add_sample([float(cpu)])
            if isinstance(rss, int | float):
                ov.mem_chart.add_sample([float(rss)])
        # Charts appear once there is something to plot; a stopped VM keeps its history.
        has_samples = bool(ov.cpu_chart.samples() or ov.mem_chart.samples())
        ov.charts.setVisible(state in UP_STATES or has_samples)
        ov.guest.update_from(doc, state == "running", sample)
        ov.guest.setVisible(state in UP_STATES)
        self.ports.set_status(doc)
        self.settings.shares.set_live(state in SHELL_STATES, doc.get("shares"))
        docker_host = str(doc.get("docker_host") or "")
        if state == "running" and docker_host:
            ov.usage.set_docker_host(docker_host)
            ov.usage.show()
        else:
            ov.usage.hide()
        pid = doc.get("pid")
        if state in CONSOLE_STATES and pid:
            self.console.attach(pid)
        elif state not in CONSOLE_STATES:
            self.console.detach()
        if state not in SHELL_STATES:
            self._drop_ssh()
        self._update_buttons()
        self._update_polling()
        self.status_rendered.emit(doc)

    def _update_polling(self) -> None:
        visible = self.isVisible()
        want = visible and (self.state in UP_STATES or self._booting)
        if want and not self._poll.isActive():
            self._poll.start()
        elif not want and self._poll.isActive():
            self._poll.stop()
        # A VM that is not up (or not created) is looked at rarely, only while shown: a
        # start from the tray or the CLI then shows here within IDLE_POLL_MS.
        idle = visible and not want and self.exists is not None
        if idle and not self._idle_poll.isActive():
            self._idle_poll.start()
        elif not idle and self._idle_poll.isActive():
            self._idle_poll.stop()

    @property
    def polling(self) -> bool:
        return self._poll.isActive()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()
        self._update_polling()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._poll.stop()
        self._idle_poll.stop()

    @property
    def idle_polling(self) -> bool:
        return self._idle_poll.isActive()

    def _update_buttons(self) -> None:
        state = self.state
        busy = bool(self._busy)
        exists = self.exists is True
        self.start_button.setEnabled(
            exists and not busy and state in ("stopped", "crashed")
        )
        # Stop also cancels a boot in progress (berthd cancels within a poll interval).
        self.stop_button.setEnabled(
            exists and state in ("starting", "running", "paused", "crashed")
            and self._busy in ("", "starting")
        )
        self.restart_button.setEnabled(exists and not busy and state == "running")
        self.pause_button.setText(self.tr("Resume") if state == "paused" else self.tr("Pause"))
        self.pause_button.setEnabled(exists and not busy and state in ("running", "paused"))
        self.shell_button.setEnabled(exists and state == "running" and bool(
            (self.status or {}).get("ssh_port")))
        self.delete_button.setEnabled(exists and not busy and state != "stopping")
        self.reset_button.setEnabled(exists and not busy and state != "stopping")
        self.first_run.create_button.setEnabled(not busy)
        for button in (self.start_button, self.stop_button, self.restart_button,
                       self.pause_button, self.shell_button, self.delete_button,
                       self.reset_button):
            button.setVisible(exists)

    def _begin(self, busy: str, text: str) -> None:
        self._busy = busy
        self._say(text)
        self._update_buttons()

    def _end(self) -> None:
        self._busy = ""
        self._update_buttons()
        self.refresh()

    # ---- create / start ------------------------------------------------------------------
    def create_vm(self) -> None:
        """First run: create the machine with the defaults shown, then start it."""
        spec = default_spec(self.name, self.limits)
        self._begin("creating", self.tr("Creating the helper VM…"))
        self.first_run.status.setText(self.tr("Creating the data disk and settings…"))

        def created(_spec: Any) -> None:
            self._busy = ""
            self.exists = True
            self._first_boot = True
            self.status = {"name": self.name, "state": "stopped", "spec": _spec}
            self.stack.setCurrentWidget(self.tabs)
            self.tabs.setCurrentWidget(self.overview)
            self.start_vm()

        def failed(err: BaseException) -> None:
            self._busy = ""
            self.first_run.status.setText(
                self.tr("Could not create it: {0}").format(user_message(err))
            )
            self._fail(self.tr("Creating the helper VM"), err)
            self._update_buttons()

        Op(self._init_call, spec).success(created).failure(failed).run(self)

    def _init_call(self, spec: dict[str, Any]) -> Any:
        return self._client_factory().call("machine.init", spec)

    def start_vm(self) -> None:
        """Boot the VM; the timeline follows the progress stream live."""
        if self._booting:
            return
        self._booting = True
        ov = self.overview
        ov.failure.hide()
        ov.timeline.reset()
        if self.status is not None:
            self.status = {**self.status, "state": "starting"}
        self.state_label.setText(self.tr("Starting…"))
        ov.set_value("state", self.tr("Starting…"))
        self._begin("starting", self.tr("Starting the VM; the boot timeline shows each stage."))
        self._update_polling()
        emit = self._emit_progress
        name = self.name
        factory = self._client_factory

        def boot() -> Any:
            # No overall timeout: berthd bounds each stage, and Stop cancels the boot.
            return factory().call("machine.start", {"name": name}, on_progress=emit,
                                  timeout=None)

        Op(boot).success(self._started).failure(self._start_failed).run(self)

    def _emit_progress(self, message: dict[str, Any]) -> None:
        # Worker thread: a queued signal carries it to the GUI thread.
        with contextlib.suppress(RuntimeError):  # the page was deleted meanwhile
            self.progress.emit(message)

    def _on_progress(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        stage = message.get("stage")
        if isinstance(stage, dict):
            self.overview.timeline.update_stage(stage)
            # QEMU is up once its stage is done: the console can attach (status has its pid).
            if stage.get("stage") == "qemu" and stage.get("state") == "done":
                self.refresh()
        state = message.get("state")
        if isinstance(state, str):
            self.state_label.setText(self.tr(state_words(state)))

    def _started(self, doc: Any) -> None:
        self._booting = False
        self._cancelling = False
        self._busy = ""
        if isinstance(doc, dict):
            self._render(doc)
        if self._first_boot:
            self._first_boot = False
            self._say(
                self.tr("The helper VM is ready. From a terminal: docker --context berth ps "
                        "(or use the DOCKER_HOST line below).")
            )
        else:
            self._say(self.tr("The VM is running."))
        self._update_buttons()
        self.refresh()

    def _start_failed(self, err: BaseException) -> None:
        self._booting = False
        if self._cancelling:
            # The user stopped the boot: not a failure to explain. A status read while the
            # boot was in flight showed "starting"; read it again now that it is over.
            self._cancelling = False
            self._say(self.tr("Boot cancelled."))
            self._update_buttons()
            self.refresh()
            return
        self._busy = ""
        timeline = self.overview.timeline
        failed = timeline.failed()
        message = err.message if isinstance(err, BerthError) else user_message(err)
        hint = err.hint if isinstance(err, BerthError) else ""
        if failed is not None:
            stage, reason = failed.key, failed.detail or message
        else:
            running = timeline.running()
            stage = failed_stage_from(message, running.key if running else "qemu")
            reason = message
        self.overview.failure.show_failure(stage, reason, hint)
        self.tabs.setCurrentWidget(self.overview)
        self._say(self.tr("The VM did not start: {0}").format(message))
        self.state_label.setText(self.tr("Stopped"))
        Op(self._call, "machine.logs", which="console", lines=CONSOLE_TAIL_LINES).success(
            lambda doc: self.overview.failure.set_console_tail(
                str((doc or {}).get("text") or "")
            )
        ).failure(
            lambda e: self.overview.failure.set_console_tail(
                self.tr("(the console log could not be read: {0})").format(user_message(e))
            )
        ).run(self)
        if stage == "qemu":
            # QEMU refusing to run says why in its own log, not on the console.
            Op(self._call, "machine.logs", which="qemu", lines=QEMU_TAIL_LINES).success(
                lambda doc: self.overview.failure.set_qemu_output(
                    str((doc or {}).get("text") or "")
                )
            ).run(self)
        self._update_buttons()
        self.refresh()

    # ---- stop / restart / pause ------------------------------------------------------------
    def stop_vm(self) -> None:
        self._cancelling = self._booting
        self._begin("stopping", self.tr("Stopping the VM…"))
        self.console.detach(self.tr("Disconnected: the VM is stopping."))
        self._drop_ssh()
        Op(self._call, "machine.stop", timeout=STOP_TIMEOUT_S).success(
            lambda r: self._say(self.tr("Stopped ({0}).").format((r or {}).get("outcome", "")))
        ).failure(lambda e: self._fail(self.tr("Stop"), e)).finally_(self._end).run(self)

    def restart_vm(self) -> None:
        self._begin("restarting", self.tr("Restarting: stopping the VM…"))
        self.console.detach(self.tr("Disconnected: the VM is restarting."))
        self._drop_ssh()

        def stopped(_result: Any) -> None:
            self._busy = ""
            self.start_vm()

        def failed(err: BaseException) -> None:
            self._fail(self.tr("Restart"), err)
            self._end()

        Op(self._call, "machine.stop", timeout=STOP_TIMEOUT_S).success(stopped).failure(
            failed
        ).run(self)

    def toggle_pause(self) -> None:
        resume = self.state == "paused"
        method = "machine.resume" if resume else "machine.pause"
        self._begin("pausing", self.tr("Resuming…") if resume else self.tr("Pausing…"))
        Op(self._call, method).success(
            lambda doc: self._say(self.tr("Resumed.") if resume else self.tr(
                "Paused: the VM keeps its memory but runs nothing until you resume it."))
        ).failure(
            lambda e: self._fail(self.tr("Resume") if resume else self.tr("Pause"), e)
        ).finally_(self._end).run(self)

    # ---- delete / reset ------------------------------------------------------------------
    def confirm_delete(self) -> bool:
        return ask_destructive(
            self,
            self.tr("Delete the helper VM"),
            self.tr(
                "Delete the helper VM “{0}”? It is stopped first. Its data disk, with every "
                "image, container and volume in it, is deleted."
            ).format(self.name),
            self.tr("Delete"),
        )

    def ask_reset(self) -> str:
        """"keep", "drop" or "" (cancelled)."""
        box = plain_box(self, self.tr("Reset to factory"), self.tr(
            "Reset the helper VM to its factory state? It is stopped, and its keys, logs and "
            "settings files are made new (the CPU, memory and disk sizes stay).\n\n"
            "Keep the data disk to keep your images, containers and volumes."
        ))
        keep = box.addButton(self.tr("Reset, keep data"), QMessageBox.ButtonRole.AcceptRole)
        drop = box.addButton(self.tr("Reset and delete data"),
                             QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        clicked = box.clickedButton()
        return "keep" if clicked is keep else "drop" if clicked is drop else ""

    def delete_vm(self) -> None:
        if not self.confirm_delete():
            return
        self._begin("deleting", self.tr("Deleting the helper VM…"))
        self.console.detach()
        self._drop_ssh()
        Op(self._call, "machine.rm").success(
            lambda _r: self._say(self.tr("The helper VM was deleted."))
        ).failure(lambda e: self._fail(self.tr("Delete"), e)).finally_(self._end).run(self)

    def reset_vm(self) -> None:
        choice = self.ask_reset()
        if not choice:
            return
        keep = choice == "keep"
        self._begin("resetting", self.tr("Resetting to factory state…"))
        self.console.detach()
        self._drop_ssh()
        factory, name = self._client_factory, self.name
        home = berth_home()
        Op(lambda: reset_machine(factory(), name, keep_data=keep, home=home)).success(
            lambda _spec: self._say(
                self.tr("Reset done; the data disk was kept. Start the VM when you need it.")
                if keep
                else self.tr("Reset done, with a new empty data disk. Start the VM when you "
                             "need it.")
            )
        ).failure(lambda e: self._fail(self.tr("Reset"), e)).finally_(self._end).run(self)

    # ---- settings ------------------------------------------------------------------------
    def save_settings(self, changes: dict[str, Any]) -> None:
        Op(self._call, "machine.set", **changes).success(self._settings_saved).failure(
            lambda e: self.settings.save_failed(user_message(e))
        ).run(self)

    def save_lan_exposure(self, expose: bool) -> None:
        """The Ports tab's LAN opt-in, confirmed by the user: saved through machine.set."""
        Op(self._call, "machine.set", expose_ports_on_lan=expose).success(
            lambda spec: self._lan_saved(expose, spec)
        ).failure(lambda e: self.ports.lan_failed(user_message(e))).run(self)

    def _lan_saved(self, expose: bool, spec: Any) -> None:
        self.ports.lan_saved(expose)
        if isinstance(spec, dict) and self.status is not None:
            self.status = {**self.status, "spec": spec}
        self.refresh()

    def _settings_saved(self, spec: Any) -> None:
        if isinstance(spec, dict):
            self.settings.saved(spec)
            if self.status is not None:
                self.status = {**self.status, "spec": spec}
        self.refresh()

    # ---- shells --------------------------------------------------------------------------
    def _ssh_session(self, port: int) -> GuestSSH:
        """The page's one pinned SSH transport (worker threads only)."""
        with self._ssh_lock:
            if self._ssh is not None and self._ssh.port == port:
                return self._ssh
            old, self._ssh = self._ssh, None
        if old is not None:
            old.close()
        paths = MachinePaths.for_machine(self.name)
        keys = ensure_machine_keys(paths.state_dir, self.name)
        ssh = GuestSSH(port, keys.client.private_path, keys.host.public_openssh)
        ssh.connect(retry_for_s=SSH_RETRY_S)
        with self._ssh_lock:
            if self._ssh is None:
                self._ssh = ssh
                return ssh
            current = self._ssh
        ssh.close()  # another shell won the race; use its transport
        return current

    def _drop_ssh(self) -> None:
        with self._ssh_lock:
            ssh, self._ssh = self._ssh, None
        if ssh is not None:
            Op(ssh.close).run()  # joins its monitor thread: never on the GUI thread

    def new_shell(self) -> ShellTab | None:
        """Open a shell tab into the VM over SSH."""
        port = (self.status or {}).get("ssh_port")
        if not port or self.state != "running":
            self._say(self.tr("A shell needs the VM running."))
            return None
        self._shell_count += 1
        ssh_port = int(port)

        def opener(cols: int, rows: int) -> ChannelLike:
            chan: ChannelLike = self._ssh_session(ssh_port).open_pty_shell(cols, rows)
            return chan

        tab = ShellTab(opener, self)
        index = self.tabs.addTab(tab, self.tr("Shell {0}").format(self._shell_count))
        self.tabs.setCurrentIndex(index)
        tab.connect_shell()
        return tab

    def shell_tabs(self) -> list[ShellTab]:
        return [w for i in range(self.tabs.count())
                if isinstance(w := self.tabs.widget(i), ShellTab)]

    def _close_tab(self, index: int) -> None:
        widget = self.tabs.widget(index)
        if isinstance(widget, ShellTab):
            widget.disconnect_stream()
            self.tabs.removeTab(index)
            widget.deleteLater()

    def shutdown(self) -> None:
        """Close streams (the window is closing); the VM keeps running."""
        self._poll.stop()
        self._idle_poll.stop()
        self.console.detach()
        for tab in self.shell_tabs():
            tab.disconnect_stream()
        self._drop_ssh()


def _factory(ctx: AppContext) -> QWidget:
    return MachinePage(ctx)


register_page("machine", "Machine", _factory, icon="computer")
