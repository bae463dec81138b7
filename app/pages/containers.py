"""The Containers page: toolbar, search, state filter, the live table and a details area.

Actions run through :class:`~app.bridge.Op` (one per container, so a bulk stop of many
containers runs in parallel on the worker pool); the rows in progress show what is being
done, and the outcome is reported in the page's status line, with errors in a message box
quoting the engine's own words as plain text.

The details area below the table is a hook for the container details tabs: call
:func:`set_details_factory` with ``factory(ctx) -> QWidget`` whose widget has a
``show_container(container_id: str | None)`` method. Until one is set, a plain summary of
the selected container is shown. ``ContainersPage.details_requested(container_id)`` is
emitted whenever one container becomes the selection (or a row is double-clicked).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QPoint, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QAction,
    QDesktopServices,
    QGuiApplication,
    QHideEvent,
    QKeySequence,
    QResizeEvent,
    QShowEvent,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QTableView,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.models.containers import (
    COL_CPU,
    COL_CREATED,
    COL_IMAGE,
    COL_MEMORY,
    COL_NAME,
    COL_PORTS,
    COL_PROJECT,
    COL_STATE,
    PORTS_ROLE,
    STATE_FILTERS,
    ContainersModel,
    ContainersProxy,
    StatsPool,
    ports_text,
    state_text,
)
from app.pages.registry import register_page
from app.session import EngineSession
from vm_backend.engine.client import EngineClient
from vm_backend.engine.models import Container, ContainerState

if TYPE_CHECKING:
    from app.context import AppContext

log = logging.getLogger(__name__)


@runtime_checkable
class ContainerDetails(Protocol):
    """What a details widget offers the page."""

    def show_container(self, container_id: str | None) -> None: ...


DetailsFactory = Callable[["AppContext"], QWidget]

_details_factory: DetailsFactory | None = None
_pages: list[ContainersPage] = []


def set_details_factory(factory: DetailsFactory | None) -> None:
    """Use ``factory(ctx)`` for the details area of every Containers page (None: summary).

    The widget it returns must have ``show_container(container_id: str | None)``. Pages
    that already exist switch over at once.
    """
    global _details_factory
    _details_factory = factory
    for page in list(_pages):
        page.install_details(factory)


@dataclass(frozen=True)
class Action:
    """One container action: how it is named, done, and when it applies."""

    key: str
    label: str
    doing: str  # shown on the row while it runs
    done: str  # past tense for the outcome
    destructive: bool
    applies: Callable[[Container], bool]
    run: Callable[[EngineClient, str], None]


def _not_running(c: Container) -> bool:
    return c.state in (ContainerState.CREATED, ContainerState.EXITED, ContainerState.DEAD)


def _live(c: Container) -> bool:
    return c.running or c.state is ContainerState.PAUSED


ACTIONS: tuple[Action, ...] = (
    Action("start", "Start", "Starting", "started", False, _not_running, lambda cl, i: cl.start(i)),
    Action("stop", "Stop", "Stopping", "stopped", False, _live, lambda cl, i: cl.stop(i)),
    Action("restart", "Restart", "Restarting", "restarted", False, lambda c: True,
           lambda cl, i: cl.restart(i)),
    Action("pause", "Pause", "Pausing", "paused", False,
           lambda c: c.state is ContainerState.RUNNING, lambda cl, i: cl.pause(i)),
    Action("resume", "Resume", "Resuming", "resumed", False,
           lambda c: c.state is ContainerState.PAUSED, lambda cl, i: cl.unpause(i)),
    Action("kill", "Kill", "Killing", "killed", True, _live, lambda cl, i: cl.kill(i)),
    Action("remove", "Remove", "Removing", "removed", True, lambda c: True,
           lambda cl, i: cl.remove(i, force=True)),
)
ACTIONS_BY_KEY = {a.key: a for a in ACTIONS}
PROJECT_ACTIONS = ("start", "stop", "restart", "remove")


def plain_label(text: str = "", *, selectable: bool = False) -> QLabel:
    """A QLabel that never interprets its text as HTML (engine text goes here)."""
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def show_error(parent: QWidget, title: str, text: str) -> QMessageBox:
    """A non-blocking error box whose text is plain (it quotes the engine)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(text)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


class ContainerSummary(QScrollArea):
    """The selected container in brief: what the details tabs show until they exist."""

    FIELDS = ("Name", "ID", "Image", "State", "Status", "Command", "Created", "Ports",
              "Networks", "Project", "Labels")

    def __init__(self, model: ContainersModel) -> None:
        super().__init__()
        self.model = model
        self.cid: str | None = None
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        body = QWidget()
        outer = QVBoxLayout(body)
        outer.setContentsMargins(12, 8, 12, 8)
        self.hint = plain_label("Select a container to see its summary.")
        self.hint.setObjectName("muted")
        outer.addWidget(self.hint)
        self.form_box = QWidget()
        form = QFormLayout(self.form_box)
        form.setContentsMargins(0, 0, 0, 0)
        form.setHorizontalSpacing(16)
        form.setVerticalSpacing(4)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.values: dict[str, QLabel] = {}
        for name in self.FIELDS:
            value = plain_label(selectable=True)
            value.setWordWrap(True)
            form.addRow(plain_label(name + ":"), value)
            self.values[name] = value
        outer.addWidget(self.form_box)
        outer.addStretch(1)
        self.setWidget(body)
        self.form_box.hide()
        model.dataChanged.connect(self._cells_changed)
        model.rowsRemoved.connect(self._refresh)
        model.modelReset.connect(self._refresh)

    def show_container(self, container_id: str | None) -> None:
        self.cid = container_id
        self._refresh()

    def _cells_changed(self, top: QModelIndex, bottom: QModelIndex, *_roles: object) -> None:
        row = self.model.row_of(self.cid) if self.cid else -1
        if top.row() <= row <= bottom.row():
            self._refresh()

    def _refresh(self) -> None:
        c = self.model.container(self.cid) if self.cid else None
        self.form_box.setVisible(c is not None)
        if c is None:
            self.hint.setText(
                "This container no longer exists." if self.cid else
                "Select a container to see its summary."
            )
            self.hint.show()
            return
        self.hint.hide()
        created = self.model.data(self.model.index(self.model.row_of(c.id), COL_CREATED))
        labels = "\n".join(f"{k}={v}" for k, v in sorted(c.labels.items())) or "none"
        values = {
            "Name": c.name,
            "ID": c.id,
            "Image": c.image,
            "State": state_text(c),
            "Status": c.status,
            "Command": c.command,
            "Created": str(created or ""),
            "Ports": ports_text(c) or "none",
            "Networks": ", ".join(c.networks) or "none",
            "Project": c.compose_project or "none",
            "Labels": labels,
        }
        for key, text in values.items():
            self.values[key].setText(text)


class ContainersPage(QWidget):
    """Live containers of the active engine, with actions."""

    details_requested = Signal(str)  # container id
    action_finished = Signal(str, list, list)  # action key, ok ids, [(id, error text)]

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.session: EngineSession | None = None
        self.model = ContainersModel(self)
        self.proxy = ContainersProxy(self)
        self.proxy.setSourceModel(self.model)
        self.pool: StatsPool | None = None
        self.open_url: Callable[[QUrl], object] = QDesktopServices.openUrl
        self._select_when_seen: str | None = None
        self._running_ops = 0
        self.details: QWidget | None = None
        self.details_scroll: QScrollArea | None = None

        self._build_ui()
        self._stats_timer = QTimer(self)
        self._stats_timer.setSingleShot(True)
        self._stats_timer.setInterval(300)
        self._stats_timer.timeout.connect(self._update_stats_targets)

        self.model.rowsInserted.connect(self._rows_inserted)
        for sig in (self.model.rowsRemoved, self.model.modelReset, self.proxy.layoutChanged,
                    self.proxy.rowsInserted, self.proxy.rowsRemoved):
            sig.connect(self._model_changed)
        # Cell changes come in bursts (stats, 500 state changes): recount once per burst.
        self._recount_timer = QTimer(self)
        self._recount_timer.setSingleShot(True)
        self._recount_timer.setInterval(50)
        self._recount_timer.timeout.connect(self._model_changed)
        self.model.dataChanged.connect(lambda *_a: self._recount_timer.start())
        ctx.session_changed.connect(self._set_session)
        self._set_session(ctx.session)
        _pages.append(self)
        self.destroyed.connect(lambda *_: _pages.remove(self) if self in _pages else None)
        self.install_details(_details_factory)

    # ---- layout --------------------------------------------------------------------------
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)

        self.toolbar = QToolBar("Container actions")
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.run_action = QAction("Run…", self)
        self.run_action.setIconText("Run…")  # Qt drops a trailing ellipsis otherwise
        self.run_action.setToolTip("Run a new container from an image")
        self.run_action.setShortcut(QKeySequence("Ctrl+N"))
        self.run_action.triggered.connect(lambda: self.open_run_dialog())
        self.toolbar.addAction(self.run_action)
        self.toolbar.addSeparator()
        self.actions_by_key: dict[str, QAction] = {}
        for spec in ACTIONS:
            act = QAction(spec.label, self)
            act.setToolTip(f"{spec.label} the selected containers")
            act.triggered.connect(lambda _=False, k=spec.key: self.run_action_on_selection(k))
            if spec.key == "remove":
                act.setShortcut(QKeySequence.StandardKey.Delete)
                act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.actions_by_key[spec.key] = act
            self.toolbar.addAction(act)
        self.toolbar.addSeparator()
        self.project_menu = QMenu("Project", self)
        self.project_actions: dict[str, QAction] = {}
        for key in PROJECT_ACTIONS:
            spec = ACTIONS_BY_KEY[key]
            act = self.project_menu.addAction(f"{spec.label} whole project")
            act.triggered.connect(lambda _=False, k=key: self.run_project_action(k))
            self.project_actions[key] = act
        self.project_button = QToolButton()
        self.project_button.setText("Project")
        self.project_button.setToolTip("Act on every container of the selected compose project")
        self.project_button.setMenu(self.project_menu)
        self.project_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.toolbar.addWidget(self.project_button)
        layout.addWidget(self.toolbar)

        filters = QHBoxLayout()
        filters.setContentsMargins(8, 4, 8, 4)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search name, image, id, project or label")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.proxy.set_search)
        find = QAction(self)
        find.setShortcut(QKeySequence.StandardKey.Find)
        find.triggered.connect(lambda: self.search.setFocus())
        self.addAction(find)
        self.state_combo = QComboBox()
        for key, label in STATE_FILTERS:
            self.state_combo.addItem(label, key)
        self.state_combo.currentIndexChanged.connect(
            lambda _i: self.proxy.set_state_filter(str(self.state_combo.currentData()))
        )
        self.count_label = plain_label()
        self.count_label.setObjectName("muted")
        filters.addWidget(self.search, 1)
        filters.addWidget(self.state_combo)
        filters.addWidget(self.count_label)
        layout.addLayout(filters)

        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COL_CREATED, Qt.SortOrder.DescendingOrder)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(
            self.table.fontMetrics().height() + 10
        )
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._context_menu)
        self.table.clicked.connect(self._clicked)
        self.table.doubleClicked.connect(self._double_clicked)
        header = self.table.horizontalHeader()
        header.setStretchLastSection(False)
        header.setHighlightSections(False)
        widths = {COL_NAME: 170, COL_PROJECT: 90, COL_IMAGE: 200, COL_STATE: 120,
                  COL_PORTS: 130, COL_CPU: 60, COL_MEMORY: 80, COL_CREATED: 125}
        for col, width in widths.items():
            self.table.setColumnWidth(col, width)
        header.setSectionResizeMode(COL_IMAGE, QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        self.table.verticalScrollBar().valueChanged.connect(lambda _v: self._stats_timer.start())
        self.empty_label = plain_label("", selectable=False)
        self.empty_label.setParent(self.table.viewport())
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setObjectName("muted")
        self.empty_label.setWordWrap(True)
        self.splitter.addWidget(self.table)

        self.details_box = QFrame()
        self.details_box.setFrameShape(QFrame.Shape.NoFrame)
        self.details_layout = QVBoxLayout(self.details_box)
        self.details_layout.setContentsMargins(0, 0, 0, 0)
        self.splitter.addWidget(self.details_box)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([420, 260])
        layout.addWidget(self.splitter, 1)

        self.status = plain_label()
        self.status.setContentsMargins(8, 3, 8, 3)
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self._update_actions()

    def install_details(self, factory: DetailsFactory | None) -> None:
        """Put the details widget from ``factory`` (or the summary) below the table."""
        widget: QWidget = ContainerSummary(self.model) if factory is None else factory(self.ctx)
        if not isinstance(widget, ContainerDetails):
            log.error("details widget %r has no show_container(); using the summary", widget)
            widget = ContainerSummary(self.model)
        if self.details_scroll is not None:
            self.details_layout.removeWidget(self.details_scroll)
            self.details_scroll.deleteLater()
        self.details = widget
        # In a scroll area, so a details widget with a tall minimum size cannot squeeze
        # the table: the splitter decides the height, the details scroll if they must.
        self.details_scroll = QScrollArea()
        self.details_scroll.setWidgetResizable(True)
        self.details_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.details_scroll.setWidget(widget)
        self.details_layout.addWidget(self.details_scroll)
        widget.show_container(self._single_selected_id())
        # A details widget with a tall size hint must not squeeze the table: keep the
        # table at about 55 % of the height.
        QTimer.singleShot(0, self._balance_splitter)

    def _balance_splitter(self) -> None:
        total = sum(self.splitter.sizes())
        if total > 0:
            self.splitter.setSizes([int(total * 0.55), total - int(total * 0.55)])

    # ---- session -------------------------------------------------------------------------
    def _set_session(self, session: EngineSession | None) -> None:
        if self.session is not None:
            try:
                self.session.connection_changed.disconnect(self._connection_changed)
                self.session.diffs.disconnect(self._diffs_arrived)
            except (RuntimeError, TypeError):
                pass  # the old session is already gone
        self.session = session
        if session is not None:
            session.connection_changed.connect(self._connection_changed)
            session.diffs.connect(self._diffs_arrived)
        if self.pool is not None:
            self.pool.close()
            self.pool.deleteLater()
            self.pool = None
        self.model.set_session(session)
        if session is not None:
            self.pool = StatsPool(session.endpoint.url, self)
            self.pool.samples.connect(self.model.set_stats)
        self._model_changed()
        self._stats_timer.start()

    def _diffs_arrived(self, _diffs: list[object]) -> None:
        # Containers started or stopped: which ones get stats streams may change.
        self._stats_timer.start()

    def _connection_changed(self, _connected: bool, _reason: str) -> None:
        self._update_actions()
        self._stats_timer.start()

    # ---- stats ---------------------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._stats_timer.start()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._stats_timer.stop()
        if self.pool is not None:
            self.pool.stop()

    def stats_targets(self, limit: int | None = None) -> list[str]:
        """Running containers, the rows on screen first (they get the capped streams).

        Only the rows on screen are mapped through the proxy (the whole table once cost
        40 ms per call with 500 rows); the running containers off screen follow in the
        model's order, when the filter shows them. ``limit`` stops after that many.
        """
        rows = self.proxy.rowCount()
        if not rows:
            return []
        first = max(self.table.rowAt(0), 0)
        last = self.table.rowAt(self.table.viewport().height() - 1)
        last = rows - 1 if last < 0 else last
        out: list[str] = []
        for row in range(first, last + 1):
            c = self.proxy.container_at(row)
            if c is not None and c.state is ContainerState.RUNNING:
                out.append(c.id)
                if limit is not None and len(out) >= limit:
                    return out
        seen = set(out)
        accepts = self.proxy.accepts
        for c in self.model.containers():
            if c.state is ContainerState.RUNNING and c.id not in seen and accepts(c):
                out.append(c.id)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def _update_stats_targets(self) -> None:
        if self.pool is None:
            return
        if not self.isVisible() or self.session is None or not self.session.connected:
            self.pool.stop()
            return
        self.pool.set_targets(self.stats_targets(self.pool.max_streams))

    # ---- selection -----------------------------------------------------------------------
    def selected_containers(self) -> list[Container]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        out = []
        for row in rows:
            c = self.proxy.container_at(row)
            if c is not None:
                out.append(c)
        return out

    def _single_selected_id(self) -> str | None:
        selected = self.selected_containers()
        return selected[0].id if len(selected) == 1 else None

    def select_container(self, cid: str) -> bool:
        row = self.model.row_of(cid)
        if row < 0:
            return False
        proxy_index = self.proxy.mapFromSource(self.model.index(row, 0))
        if not proxy_index.isValid():
            return False
        self.table.selectionModel().select(
            proxy_index,
            QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows,
        )
        self.table.scrollTo(proxy_index)
        return True

    def screenshot_ready(self) -> bool:
        """Whether every running container on screen shows its live figures yet."""
        targets = self.stats_targets(StatsPool.MAX_STREAMS)
        return all(self.model.stats(cid) is not None for cid in targets)

    def select_first_row(self) -> None:
        """Select something to show (the first running container, else the first row)."""
        if not self.proxy.rowCount() or self.selected_containers():
            return
        rows = range(self.proxy.rowCount())
        running = [r for r in rows if (c := self.proxy.container_at(r)) is not None and c.running]
        self.table.selectRow(running[0] if running else 0)

    def _selection_changed(self) -> None:
        self._update_actions()
        cid = self._single_selected_id()
        if isinstance(self.details, ContainerDetails):
            self.details.show_container(cid)
        if cid is not None:
            self.details_requested.emit(cid)

    def _rows_inserted(self, _parent: QModelIndex, first: int, last: int) -> None:
        wanted = self._select_when_seen
        if wanted is not None and first <= self.model.row_of(wanted) <= last:
            self._select_when_seen = None
            self.select_container(wanted)
        self._stats_timer.start()

    def _model_changed(self) -> None:
        self._update_actions()
        total, shown = self.model.rowCount(), self.proxy.rowCount()
        running = self.model.running_count()
        text = f"{total} containers, {running} running"
        if shown != total:
            text = f"{shown} of {text}"
        self.count_label.setText(text)
        if self.session is None:
            empty = "No engine connected."
        elif total == 0:
            empty = "No containers yet. Use Run… to start one from an image."
        elif shown == 0:
            empty = "No container matches the search and state filter."
        else:
            empty = ""
        self.empty_label.setText(empty)
        self.empty_label.setVisible(bool(empty))
        self._place_empty_label()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._place_empty_label()

    def _place_empty_label(self) -> None:
        vp = self.table.viewport()
        self.empty_label.setGeometry(20, 20, max(0, vp.width() - 40), max(0, vp.height() - 40))

    def _update_actions(self) -> None:
        selected = self.selected_containers()
        connected = self.session is not None and self.session.connected
        self.run_action.setEnabled(connected)
        for key, act in self.actions_by_key.items():
            spec = ACTIONS_BY_KEY[key]
            act.setEnabled(connected and any(spec.applies(c) for c in selected))
        project = self.selected_project()
        self.project_button.setEnabled(connected and bool(project))
        self.project_button.setText(f"Project: {project}" if project else "Project")

    def selected_project(self) -> str:
        """The compose project of the selection, if it has exactly one."""
        projects = {c.compose_project for c in self.selected_containers()}
        return projects.pop() if len(projects) == 1 else ""

    # ---- ports ---------------------------------------------------------------------------
    def _clicked(self, index: QModelIndex) -> None:
        if index.column() != COL_PORTS:
            return
        ports = index.data(PORTS_ROLE) or []
        if len(ports) == 1:
            self.open_port(int(ports[0]))
        elif ports:
            menu = QMenu(self)
            for port in ports:
                act = menu.addAction(f"Open http://localhost:{port}")
                act.triggered.connect(lambda _=False, p=port: self.open_port(int(p)))
            menu.popup(self.table.viewport().mapToGlobal(self.table.visualRect(index).center()))

    def open_port(self, port: int) -> None:
        self.open_url(QUrl(f"http://localhost:{port}"))

    def _double_clicked(self, index: QModelIndex) -> None:
        c = self.proxy.container_at(index.row())
        if c is not None and index.column() != COL_PORTS:
            self.details_requested.emit(c.id)

    def _context_menu(self, pos: QPoint) -> None:
        menu = QMenu(self)
        for key in ("start", "stop", "restart", "pause", "resume", "kill", "remove"):
            menu.addAction(self.actions_by_key[key])
        project = self.selected_project()
        if project:
            menu.addSeparator()
            sub = menu.addMenu(f"Project {project}")
            for act in self.project_actions.values():
                sub.addAction(act)
        selected = self.selected_containers()
        if selected:
            menu.addSeparator()
            copy = menu.addAction("Copy ID" if len(selected) == 1 else "Copy IDs")
            ids = "\n".join(c.id for c in selected)
            copy.triggered.connect(lambda: QGuiApplication.clipboard().setText(ids))
        menu.popup(self.table.viewport().mapToGlobal(pos))

    # ---- actions -------------------------------------------------------------------------
    def open_run_dialog(self, image: str = "") -> None:
        from app.dialogs.run import RunDialog

        if self.ctx.session is None:
            return
        dialog = RunDialog(self.ctx, image=image, parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.started.connect(self._run_started)
        dialog.open()

    def _run_started(self, cid: str, name: str) -> None:
        self.status.setText(f"Started {name or cid[:12]}.")
        if not self.select_container(cid):
            self._select_when_seen = cid

    def run_action_on_selection(self, key: str) -> None:
        spec = ACTIONS_BY_KEY[key]
        targets = [c for c in self.selected_containers() if spec.applies(c)]
        self.run_action_on(key, targets)

    def run_project_action(self, key: str) -> None:
        project = self.selected_project()
        if not project:
            return
        spec = ACTIONS_BY_KEY[key]
        members = [c for c in self.model.containers() if c.compose_project == project]
        targets = [c for c in members if spec.applies(c)]
        if not targets:
            self.status.setText(f"Nothing to {spec.label.lower()} in project {project}.")
            return
        self.run_action_on(key, targets, what=f"project {project}")

    def confirm(self, title: str, text: str) -> bool:
        """Ask before a destructive action (tests replace this)."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle(title)
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setText(text)
        box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        return box.exec() == QMessageBox.StandardButton.Yes

    def run_action_on(self, key: str, targets: list[Container], what: str = "") -> None:
        """Run action ``key`` on ``targets``, one background op per container."""
        session = self.session
        if session is None or not targets:
            return
        spec = ACTIONS_BY_KEY[key]
        names = [c.name or c.short_id for c in targets]
        if spec.destructive and self.ctx.settings.confirm_destructive:
            listing = "\n".join(f"  {n}" for n in names[:20])
            if len(names) > 20:
                listing += f"\n  … and {len(names) - 20} more"
            extra = ""
            if key == "remove":
                extra = "Files written inside these containers are lost (volumes are kept)."
            scope = f" of {what}" if what else ""
            text = f"{spec.label} {len(names)} container(s){scope}?\n\n{listing}\n\n{extra}"
            if not self.confirm(f"{spec.label} containers", text.rstrip()):
                return
        label = what or (names[0] if len(names) == 1 else f"{len(names)} containers")
        self.status.setText(f"{spec.doing} {label}…")
        ok: list[str] = []
        failed: list[tuple[str, str]] = []
        remaining = [len(targets)]
        self._running_ops += 1

        def finish_one() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self._running_ops -= 1
                self._report(spec, label, ok, failed)

        for c in targets:
            self.model.set_busy(c.id, spec.doing)

            def succeeded(_r: object, cid: str = c.id) -> None:
                ok.append(cid)

            def errored(err: BaseException, c: Container = c) -> None:
                failed.append((c.id, f"{c.name or c.short_id}: {user_message(err)}"))

            def done(cid: str = c.id) -> None:
                self.model.set_busy(cid, "")
                finish_one()

            Op(spec.run, session.client, c.id).success(succeeded).failure(errored).finally_(
                done
            ).run(self)

    def _report(
        self, spec: Action, label: str, ok: list[str], failed: list[tuple[str, str]]
    ) -> None:
        if not failed:
            self.status.setText(f"{label[0].upper()}{label[1:]} {spec.done}.")
        else:
            self.status.setText(
                f"{spec.label}: {len(ok)} done, {len(failed)} failed."
            )
            show_error(
                self,
                f"{spec.label} failed",
                "\n\n".join(text for _cid, text in failed[:10])
                + (f"\n\n… and {len(failed) - 10} more" if len(failed) > 10 else ""),
            )
            self.ctx.notify(f"{spec.label} failed", failed[0][1])
        self.action_finished.emit(spec.key, ok, failed)

    @property
    def busy(self) -> bool:
        return self._running_ops > 0


register_page("containers", "Containers", ContainersPage, icon="")
