"""The Berth main window: a sidebar of pages, the engine banner and the status bar.

Pages come from :mod:`app.pages.registry` and are built the first time they are shown
(cold start imports and builds only the Containers page; the other page modules are
imported once the first container list is in, one per turn of the event loop). A page
registered later under the same key, typically a real page replacing a placeholder,
replaces the widget in place. The banner
appears when the active engine is unreachable, says why, offers Retry, and goes away by
itself when the engine answers again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import shiboken6
from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QCloseEvent, QIcon
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.pages import registry
from app.pages.registry import PageSpec
from app.session import EngineSession
from vm_backend.engine.models import Endpoint

log = logging.getLogger(__name__)

KEY_ROLE = Qt.ItemDataRole.UserRole + 1
#: The other pages' modules are imported this long after the window is built at the
#: latest; sooner (``AFTER_FIRST_LIST_MS`` after it) once the first container list is in.
LOAD_REST_MS = 1500
AFTER_FIRST_LIST_MS = 100


def _icon(name: str) -> QIcon:
    if not name:
        return QIcon()
    if Path(name).is_file():
        return QIcon(name)
    return QIcon.fromTheme(name)


class _PageHolder(QWidget):
    """A slot in the stack; the page widget is built into it on first show."""

    def __init__(self, spec: PageSpec) -> None:
        super().__init__()
        self.spec = spec
        self.page: QWidget | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

    def build(self, ctx: AppContext) -> QWidget:
        if self.page is None:
            try:
                self.page = self.spec.factory(ctx)
            except Exception as err:  # a broken page must not take the window
                log.exception("building page %s failed", self.spec.key)
                self.page = QLabel(f"The {self.spec.title} page failed to open: {err}")
                self.page.setTextFormat(Qt.TextFormat.PlainText)
                self.page.setWordWrap(True)
            layout = self.layout()
            assert layout is not None
            layout.addWidget(self.page)
        return self.page

    def replace(self, spec: PageSpec, ctx: AppContext, build_now: bool) -> None:
        self.spec = spec
        if self.page is not None:
            layout = self.layout()
            assert layout is not None
            layout.removeWidget(self.page)
            self.page.deleteLater()
            self.page = None
        if build_now:
            self.build(ctx)


class EngineBanner(QFrame):
    """Says the engine is unreachable, why, and offers Retry."""

    def __init__(self, ctx: AppContext) -> None:
        super().__init__()
        self.setObjectName("engineBanner")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(14, 10, 14, 10)
        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.reason = QLabel()
        self.reason.setTextFormat(Qt.TextFormat.PlainText)
        self.reason.setWordWrap(True)
        self.reason.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        text = QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(self.title)
        text.addWidget(self.reason)
        layout.addLayout(text, 1)
        self.retry = QPushButton("Retry")
        self.retry.clicked.connect(ctx.retry)
        layout.addWidget(self.retry, 0, Qt.AlignmentFlag.AlignVCenter)
        self.hide()

    def show_problem(self, title: str, reason: str) -> None:
        self.title.setText(title)
        self.reason.setText(reason)
        self.show()


class MainWindow(QMainWindow):
    """Sidebar + pages + banner + status bar over one :class:`AppContext`."""

    def __init__(self, ctx: AppContext | None = None) -> None:
        super().__init__()
        self.ctx = ctx if ctx is not None else AppContext(parent=self)
        self.setWindowTitle("Berth")
        self.resize(1200, 760)
        self._holders: dict[str, _PageHolder] = {}
        self._session: EngineSession | None = None
        # Set by main() when a tray icon exists: closing then hides the window (if the
        # settings say so) and only the tray's Quit ends Berth.
        self.tray: object | None = None
        self.quitting = False

        central = QWidget()
        outer = QHBoxLayout(central)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setFixedWidth(170)
        self.sidebar.setIconSize(QSize(18, 18))
        self.sidebar.setFrameShape(QFrame.Shape.NoFrame)
        self.sidebar.currentRowChanged.connect(self._page_selected)
        outer.addWidget(self.sidebar)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.VLine)
        line.setFrameShadow(QFrame.Shadow.Plain)
        line.setStyleSheet("color: palette(mid);")  # a sunken line glares in the dark theme
        outer.addWidget(line)
        right = QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        right.setSpacing(0)
        self.banner = EngineBanner(self.ctx)
        right.addWidget(self.banner)
        self.stack = QStackedWidget()
        right.addWidget(self.stack, 1)
        outer.addLayout(right, 1)
        self.setCentralWidget(central)

        status = self.statusBar()
        self.engine_combo = QComboBox()
        self.engine_combo.setMinimumWidth(260)
        self.engine_combo.setToolTip("The engine this window shows")
        self.engine_combo.activated.connect(self._engine_chosen)
        self.engine_state = QLabel()
        self.engine_state.setTextFormat(Qt.TextFormat.PlainText)
        status.addPermanentWidget(self.engine_state)
        status.addPermanentWidget(self.engine_combo)

        # The first page is needed now. The other page modules are imported once the first
        # container list is on screen (or after LOAD_REST_MS at the latest), one per turn
        # of the event loop, so neither the first paint nor the event loop waits for them;
        # they replace their placeholders live.
        registry.load_page_modules(registry.PAGE_MODULES[:1])
        self._rest = list(registry.PAGE_MODULES[1:])
        self._rest_timer = QTimer(self)
        self._rest_timer.setSingleShot(True)
        self._rest_timer.timeout.connect(self._load_next_page_module)
        self._rest_timer.start(LOAD_REST_MS)
        for spec in registry.pages():
            self._add_page(spec)
        self._unsubscribe = registry.subscribe(self._page_registered)
        self.destroyed.connect(lambda *_: self._unsubscribe())
        if self.sidebar.count():
            self.sidebar.setCurrentRow(0)

        self.ctx.session_changed.connect(self._session_changed)
        self.ctx.session_failed.connect(self._session_failed)
        self.ctx.endpoints_changed.connect(self._endpoints_changed)
        self.ctx.notified.connect(lambda t, x: self.statusBar().showMessage(f"{t}: {x}", 8000))
        self.ctx.page_requested.connect(self.show_page)
        self.ctx.run_requested.connect(self.open_run_dialog)
        self._endpoints_changed(self.ctx.endpoints)
        self._session_changed(self.ctx.session)

    # ---- pages --------------------------------------------------------------------------------
    def _load_next_page_module(self) -> None:
        if not self._rest:
            return
        registry.load_page_module(self._rest.pop(0))
        if self._rest:
            self._rest_timer.start(0)

    def _first_list(self, diffs: list[object]) -> None:
        if self._rest and any(getattr(d, "kind", "") == "container" for d in diffs):
            self._load_rest_soon()

    def _load_rest_soon(self) -> None:
        """Import the other page modules shortly (the first list has been painted)."""
        if self._rest and self._rest_timer.remainingTime() > AFTER_FIRST_LIST_MS:
            self._rest_timer.start(AFTER_FIRST_LIST_MS)

    def _add_page(self, spec: PageSpec) -> None:
        holder = _PageHolder(spec)
        self._holders[spec.key] = holder
        keys = [s.key for s in registry.pages() if s.key in self._holders]
        position = keys.index(spec.key)
        self.stack.insertWidget(position, holder)
        item = QListWidgetItem(_icon(spec.icon), spec.title)
        item.setData(KEY_ROLE, spec.key)
        self.sidebar.insertItem(position, item)

    def _page_registered(self, spec: PageSpec) -> None:
        if not shiboken6.isValid(self):
            return
        holder = self._holders.get(spec.key)
        if holder is None:
            current = self.current_page_key()
            self._add_page(spec)
            if current:
                self.show_page(current)
            return
        holder.replace(spec, self.ctx, build_now=self.stack.currentWidget() is holder)
        for row in range(self.sidebar.count()):
            item = self.sidebar.item(row)
            if item.data(KEY_ROLE) == spec.key:
                item.setText(spec.title)
                item.setIcon(_icon(spec.icon))

    def _page_selected(self, row: int) -> None:
        item = self.sidebar.item(row)
        if item is None:
            return
        holder = self._holders[str(item.data(KEY_ROLE))]
        holder.build(self.ctx)
        self.stack.setCurrentWidget(holder)

    def page_keys(self) -> list[str]:
        return [str(self.sidebar.item(r).data(KEY_ROLE)) for r in range(self.sidebar.count())]

    def current_page_key(self) -> str:
        item = self.sidebar.currentItem()
        return str(item.data(KEY_ROLE)) if item is not None else ""

    def show_page(self, key: str) -> QWidget | None:
        """Select page ``key`` (building it if needed) and return its widget."""
        for row in range(self.sidebar.count()):
            if self.sidebar.item(row).data(KEY_ROLE) == key:
                self.sidebar.setCurrentRow(row)
                return self._holders[key].build(self.ctx)
        return None

    def page_widget(self, key: str) -> QWidget | None:
        holder = self._holders.get(key)
        return holder.page if holder is not None else None

    def open_run_dialog(self, image: str = "") -> None:
        from app.dialogs.run import RunDialog

        if self.ctx.session is None:
            self.statusBar().showMessage("No engine is connected: nothing to run on.", 6000)
            return
        # Through the Containers page when there is one, so the new container is selected.
        page = self.show_page("containers")
        opener = getattr(page, "open_run_dialog", None)
        if callable(opener):
            opener(image)
            return
        dialog = RunDialog(self.ctx, image=image, parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()

    # ---- engine state -------------------------------------------------------------------------
    def _endpoints_changed(self, endpoints: list[Endpoint]) -> None:
        self.engine_combo.clear()
        current = self.ctx.endpoint
        for ep in endpoints:
            label = ep.name if ep.name == ep.url else f"{ep.name} — {ep.url}"
            if not ep.usable:
                label += f" ({ep.status.value})"
            self.engine_combo.addItem(label, ep)
            if not ep.usable:
                model = self.engine_combo.model()
                item = model.item(self.engine_combo.count() - 1)  # type: ignore[attr-defined]
                item.setEnabled(False)
        if current is not None:
            self._select_endpoint(current)
        self.engine_combo.setVisible(bool(endpoints))

    def _select_endpoint(self, endpoint: Endpoint) -> None:
        for i in range(self.engine_combo.count()):
            ep = self.engine_combo.itemData(i)
            if isinstance(ep, Endpoint) and ep.url == endpoint.url:
                self.engine_combo.setCurrentIndex(i)
                return

    def _engine_chosen(self, index: int) -> None:
        ep = self.engine_combo.itemData(index)
        current = self.ctx.endpoint
        if isinstance(ep, Endpoint) and (current is None or ep.url != current.url):
            self.ctx.switch_engine(ep)

    def _session_changed(self, session: EngineSession | None) -> None:
        if self._session is not None:
            try:
                self._session.connection_changed.disconnect(self._connection_changed)
                self._session.diffs.disconnect(self._first_list)
            except (RuntimeError, TypeError):
                pass
        self._session = session
        if session is None:
            ep = self.ctx.endpoint
            if ep is not None:
                self._select_endpoint(ep)
                self.engine_state.setText(f"Connecting to {ep.name}…")
            elif self.ctx.discovering:
                self.engine_state.setText("Looking for engines…")
            return
        session.connection_changed.connect(self._connection_changed)
        if self._rest:
            session.diffs.connect(self._first_list)
        self._select_endpoint(session.endpoint)
        if session.connected:
            self._connection_changed(True, "")
        elif session.reason:
            self._connection_changed(False, session.reason)
        else:
            self.engine_state.setText(f"Connecting to {session.endpoint.name}…")

    def _connection_changed(self, connected: bool, reason: str) -> None:
        ep = self._session.endpoint if self._session is not None else self.ctx.endpoint
        desc = _describe(ep)
        if connected:
            self.banner.hide()
            self.engine_state.setText(f"{desc} — connected")
        else:
            self.engine_state.setText(f"{desc} — unreachable")
            reason = (reason or "The connection was lost.").strip()
            if reason[-1] not in ".!?":
                reason += "."
            self.banner.show_problem(
                f"The engine {ep.name if ep else ''} does not answer.".replace("  ", " "),
                f"{reason} Berth keeps trying; the list shows the last known state.",
            )

    def _session_failed(self, endpoint: Endpoint | None, reason: str) -> None:
        self._load_rest_soon()
        if endpoint is None:
            self.engine_state.setText("No engine")
            self.banner.show_problem("No container engine is available.", reason)
        else:
            self.engine_state.setText(f"{_describe(endpoint)} — unreachable")
            self.banner.show_problem(f"Cannot connect to {endpoint.name}.", reason)

    @property
    def engine_down(self) -> bool:
        return self.banner.isVisibleTo(self)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.tray is not None and self.ctx.settings.close_to_tray and not self.quitting:
            event.ignore()
            self.hide()
            return
        self._unsubscribe()
        super().closeEvent(event)


def _describe(ep: Endpoint | None) -> str:
    if ep is None:
        return "No engine"
    parts = [ep.name]
    if ep.kind.value != "unknown":
        parts.append(ep.kind.value.capitalize())
    if ep.version:
        parts.append(ep.version)
    return " · ".join(parts)
