"""The details tabs as the Containers page's details area.

The Containers page asks for ``factory(ctx) -> QWidget`` whose widget has
``show_container(container_id | None)`` (see :func:`app.pages.containers.set_details_factory`).
:class:`ContainerDetailsPanel` adapts :class:`ContainerDetails` to that: it follows the
context's active session (a new engine means new streams) and shows a hint instead of the
tabs when nothing, or more than one container, is selected. Hiding the tabs stops their
streams (ContainerDetails stops on hide).
"""

from __future__ import annotations

from typing import Any, Protocol

from PySide6.QtCore import Qt, SignalInstance
from PySide6.QtWidgets import QStackedWidget, QVBoxLayout, QWidget

from app.pages.containers import set_details_factory
from app.pages.details import ContainerDetails, HasClient
from app.pages.details._base import plain_label


class SessionSource(Protocol):
    """What the panel needs of the AppContext: the session and word of its changes."""

    session: Any
    session_changed: SignalInstance


class ContainerDetailsPanel(QWidget):
    """ContainerDetails driven by the selected container id and the active session."""

    def __init__(self, ctx: SessionSource, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._ctx = ctx
        self._container_id: str | None = None
        self.details = ContainerDetails(parent=self)
        self.hint = plain_label(
            self.tr(
                "Select one container to see its logs, terminal, stats, inspect, "
                "files and isolation."
            ),
            self,
        )
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.setWordWrap(True)
        self.stack = QStackedWidget(self)
        self.stack.addWidget(self.hint)
        self.stack.addWidget(self.details)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.stack)
        ctx.session_changed.connect(self._session_changed)

    @property
    def container_id(self) -> str | None:
        return self._container_id

    def show_container(self, container_id: str | None) -> None:
        """Show ``container_id`` on the active engine, or the hint for None."""
        self._container_id = container_id
        session: HasClient | None = self._ctx.session
        if not container_id or session is None:
            self.stack.setCurrentWidget(self.hint)
            self.details.clear()
            return
        self.details.show_container(session, container_id)
        self.stack.setCurrentWidget(self.details)

    def _session_changed(self, _session: object) -> None:
        # Ids belong to one engine: a different engine means the old id means nothing.
        self.details.clear()
        self.show_container(None)


def details_factory(ctx: SessionSource) -> ContainerDetailsPanel:
    """For ``app.pages.containers.set_details_factory``."""
    return ContainerDetailsPanel(ctx)


# Loading this module (the window's page loader does) gives the Containers page its
# details pane.
set_details_factory(details_factory)
