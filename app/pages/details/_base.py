"""What every details tab shares: the container it shows and its start/stop lifecycle.

:class:`ContainerDetails` drives the tabs through three calls:

* :meth:`DetailsTab.bind` when the container changes (stop everything, forget it);
* :meth:`DetailsTab.activate` when the tab becomes visible (start or resume work);
* :meth:`DetailsTab.deactivate` when another tab is chosen (stop polling that only
  makes sense on screen), and :meth:`DetailsTab.stop` when the details hide or close.

Every background result carries the *generation* it was started under; a result that
arrives after the container changed is dropped, so a slow answer for container A can
never land in the view of container B.
"""

from __future__ import annotations

from typing import Protocol

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QWidget

from app.bridge import call_in_gui
from vm_backend.engine.client import EngineClient


class HasClient(Protocol):
    """Anything with an engine client: an EngineSession, or a stand-in in tests."""

    @property
    def client(self) -> EngineClient: ...


class DetailsTab(QWidget):
    """A tab page showing one aspect of one container."""

    #: The tab's label in the tab bar.
    title = ""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # The bridge creates its relay object on first use, in the calling thread; our
        # reader threads call call_in_gui, so make sure the first use is here, on the GUI
        # thread (a relay born in a worker thread would never deliver).
        call_in_gui(_nothing)
        self._client: EngineClient | None = None
        self._container_id = ""
        self._generation = 0

    @property
    def client(self) -> EngineClient | None:
        return self._client

    @property
    def container_id(self) -> str:
        return self._container_id

    @property
    def generation(self) -> int:
        return self._generation

    def current(self, generation: int) -> bool:
        """True while results started under ``generation`` still belong on screen."""
        return generation == self._generation and self._client is not None

    def bind(self, client: EngineClient | None, container_id: str) -> None:
        """Show ``container_id`` (or nothing): stop all work and reset the view."""
        self.stop()
        self._generation += 1
        self._client = client
        self._container_id = container_id
        self.reset()

    def reset(self) -> None:
        """Empty the view for a new container (nothing is running any more)."""

    def activate(self) -> None:
        """The tab is on screen: start or resume its work (idempotent)."""

    def deactivate(self) -> None:
        """Another tab was chosen; by default work continues until :meth:`stop`."""

    def stop(self) -> None:
        """Stop every stream, timer and reader thread this tab started."""

    def release(self) -> None:
        """Stop reader threads and sockets only, touching no Qt object: called when the
        widget is being destroyed (deleted while shown, it never got a hide event)."""


def _nothing() -> None:
    """A no-op for call_in_gui."""


def plain_label(text: str = "", parent: QWidget | None = None) -> QLabel:
    """A QLabel that never interprets engine-supplied text as rich text."""
    label = QLabel(parent)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    return label


def human_bytes(value: float, suffix: str = "") -> str:
    """1536 -> '1.5 KiB' (binary units, as docker stats and free(1) use)."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            text = f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            return text + suffix
        size /= 1024
    return f"{size:.1f} PiB{suffix}"
