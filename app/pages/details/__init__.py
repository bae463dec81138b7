"""Container details: logs, terminal, stats, inspect, files and isolation in one tab set.

``ContainerDetails`` shows one container at a time. The Containers page calls
:meth:`ContainerDetails.show_container` with the session and the selected id; the widget
stops everything it started (log and stats streams, exec sessions, polling) whenever the
container changes, :meth:`ContainerDetails.clear` is called, or the widget is hidden or
closed. Only the visible tab does work: a tab is activated when it is chosen, and the
Stats tab stops polling when another tab is chosen. Logs and the terminal keep their
stream across tab switches so that switching tabs never loses a shell or log lines.

When the session also has the EngineSession's ``diffs`` signal, the header follows the
container's state, and a log or stats stream that ended because the container stopped
resumes when it starts again.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, SignalInstance
from PySide6.QtGui import QCloseEvent, QHideEvent, QShowEvent
from PySide6.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from app.bridge import Op, user_message
from app.pages.details._base import DetailsTab, HasClient, plain_label
from app.pages.details.files import FilesTab
from app.pages.details.inspect import InspectTab
from app.pages.details.isolation import IsolationTab
from app.pages.details.logs import LogsTab
from app.pages.details.stats import StatsTab
from app.pages.details.terminal import TerminalTab
from vm_backend.engine.client import EngineClient
from vm_backend.engine.models import Container

__all__ = ["ContainerDetails", "HasClient"]


def _release(tabs: tuple[DetailsTab, ...]) -> None:
    for tab in tabs:
        tab.release()


class ContainerDetails(QWidget):
    """The details tab set for one container."""

    #: The container shown changed: its id ("" when cleared).
    container_changed = Signal(str)

    def __init__(
        self,
        session: HasClient | None = None,
        container_id: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._client: EngineClient | None = None
        self._container_id = ""
        self._active: DetailsTab | None = None
        self._diffs: SignalInstance | None = None

        self.header = plain_label("", self)
        font = self.header.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.header.setFont(font)
        self.header.setContentsMargins(6, 6, 6, 2)

        self.logs = LogsTab(self)
        self.terminal = TerminalTab(self)
        self.stats = StatsTab(self)
        self.inspect = InspectTab(self)
        self.files = FilesTab(self)
        self.isolation = IsolationTab(self)
        self.tabs = QTabWidget(self)
        self.tabs.setDocumentMode(True)
        for tab in self.all_tabs():
            self.tabs.addTab(tab, self.tr(tab.title))

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.header)
        layout.addWidget(self.tabs, 1)
        self.tabs.currentChanged.connect(self._tab_changed)
        # Deleted while shown (deleteLater without hiding first), a widget gets no hide
        # event: stop the reader threads when it is destroyed. The handler holds the tabs'
        # Python objects, not this widget, and release() touches no Qt object.
        tabs = self.all_tabs()
        self.destroyed.connect(lambda *_args: _release(tabs))

        if session is not None and container_id:
            self.show_container(session, container_id)

    # ---- public API --------------------------------------------------------------------
    def all_tabs(self) -> tuple[DetailsTab, ...]:
        return (self.logs, self.terminal, self.stats, self.inspect, self.files, self.isolation)

    @property
    def container_id(self) -> str:
        return self._container_id

    def show_container(self, session: HasClient, container_id: str) -> None:
        """Show ``container_id`` of ``session``'s engine (same id again: nothing restarts)."""
        client = session.client
        if client is self._client and container_id == self._container_id:
            return
        self._follow_diffs(getattr(session, "diffs", None))
        self._bind(client, container_id)

    def clear(self) -> None:
        """Show nothing and stop every stream."""
        self._follow_diffs(None)
        self._bind(None, "")

    def show_tab(self, name: str) -> DetailsTab:
        """Switch to the tab titled ``name`` (Logs, Terminal, Stats, Inspect, Files,
        Isolation) and return it."""
        for index, tab in enumerate(self.all_tabs()):
            if tab.title.lower() == name.lower():
                self.tabs.setCurrentIndex(index)
                return tab
        raise KeyError(name)

    def stop(self) -> None:
        """Stop all streams and polling; they restart when the widget is shown again."""
        for tab in self.all_tabs():
            tab.stop()
        self._active = None

    # ---- internals ---------------------------------------------------------------------
    def _bind(self, client: EngineClient | None, container_id: str) -> None:
        self._client = client
        self._container_id = container_id
        self._active = None
        for tab in self.all_tabs():
            tab.bind(client, container_id)
        self.header.setText(container_id[:12] if container_id else self.tr("No container selected"))
        if client is not None and container_id:
            self._load_header(client, container_id)
        self.container_changed.emit(container_id)
        self._activate_current()

    def _follow_diffs(self, signal: object) -> None:
        if self._diffs is not None:
            self._diffs.disconnect(self._on_diffs)
        self._diffs = signal if isinstance(signal, SignalInstance) else None
        if self._diffs is not None:
            self._diffs.connect(self._on_diffs)

    def _on_diffs(self, diffs: list[Any]) -> None:
        cid = self._container_id
        for diff in diffs:
            if getattr(diff, "kind", "") != "container":
                continue
            if cid in diff.removed:
                self.header.setText(self.tr("{0}: removed").format(cid[:12]))
                continue
            for container in (*diff.added, *diff.changed):
                if isinstance(container, Container) and container.id == cid:
                    self._container_changed(container)

    def _container_changed(self, container: Container) -> None:
        self.header.setText(
            f"{container.name}  ·  {container.short_id}  ·  {container.image}  ·  "
            f"{container.state.value}"
        )
        if container.running and self.isVisible():
            self.logs.container_started()
            if self._active is self.stats:
                self.stats.container_started()

    def _load_header(self, client: EngineClient, container_id: str) -> None:
        def done(info: dict[str, object]) -> None:
            if container_id != self._container_id:
                return
            name = str(info.get("Name") or "").lstrip("/")
            state = info.get("State")
            status = str(state.get("Status") or "") if isinstance(state, dict) else ""
            config = info.get("Config")
            image = str(config.get("Image") or "") if isinstance(config, dict) else ""
            self.header.setText(f"{name}  ·  {container_id[:12]}  ·  {image}  ·  {status}")

        def failed(err: BaseException) -> None:
            if container_id == self._container_id:
                self.header.setText(f"{container_id[:12]}: {user_message(err)}")

        Op(client.inspect_container, container_id).success(done).failure(failed).run(self)

    def _activate_current(self) -> None:
        if not self.isVisible() or self._client is None or not self._container_id:
            return
        tab = self.tabs.currentWidget()
        if not isinstance(tab, DetailsTab):
            return
        if self._active is not None and self._active is not tab:
            self._active.deactivate()
        self._active = tab
        tab.activate()

    def _tab_changed(self, _index: int) -> None:
        self._activate_current()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._activate_current()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        # A minimised window hides spontaneously: keep shells and streams alive then.
        if not event.spontaneous():
            self.stop()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.stop()
        super().closeEvent(event)
