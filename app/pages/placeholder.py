"""Pages that are announced but not built yet: they say exactly what will be there.

A placeholder is never a dead end: it names the page, lists what it will offer, and points
at what already works (the ``berth`` CLI, the Containers page). Registering a real page
under the same key replaces it (see :mod:`app.pages.registry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QLabel, QVBoxLayout, QWidget

from app.pages.registry import PageFactory, register_page

if TYPE_CHECKING:
    from app.context import AppContext

# key -> (title, one-line purpose, what will be there)
PLANNED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "images": (
        "Images",
        "Every image on the engine, and what you can do with it.",
        (
            "List with tags, size, age and how many containers use each image",
            "Pull with per-layer progress, build from a folder with a Dockerfile",
            "Tag, remove, prune dangling or unused images",
            "Layer history and full inspect",
            "Save to / load from a tar file, import a root filesystem",
            "Run a container from an image (opens the Run dialog prefilled)",
        ),
    ),
    "volumes": (
        "Volumes",
        "Named and anonymous volumes, their size and who uses them.",
        (
            "List with driver, size, mount point and the containers using each volume",
            "Create (driver and options), remove, prune unused volumes",
            "Browse a volume's files, export and import its contents",
        ),
    ),
    "networks": (
        "Networks",
        "The engine's networks and which containers are attached.",
        (
            "List with driver, subnet, gateway and attached containers with their addresses",
            "Create (subnet, gateway, internal), remove, prune",
            "Connect or disconnect a container",
        ),
    ),
    "machine": (
        "Machine",
        "The helper Linux VM that runs the engine on macOS and Windows (optional on Linux).",
        (
            "The VM's state, accelerator (HVF, WHPX, KVM or TCG) and resources",
            "Boot timeline: each readiness stage and how long it took",
            "The live serial console (read and type) and a shell in the VM",
            "The VM's logs, CPU, memory and disk use",
            "Start, stop, restart; CPU, memory and disk settings",
        ),
    ),
    "settings": (
        "Settings",
        "How Berth looks and behaves.",
        (
            "Theme (system, light, dark)",
            "Default engine and engines added by hand",
            "Ask before destructive actions; notifications on failures",
            "Start at login, close to the tray, log buffer size",
        ),
    ),
}

NOW = "Until then, the berth command line covers it: run `berth --help`."


class PlaceholderPage(QFrame):
    """A page that explains what will be there, in plain text."""

    def __init__(self, title: str, purpose: str, items: tuple[str, ...]) -> None:
        super().__init__()
        self.setObjectName("placeholderPage")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(32, 28, 32, 28)
        layout.setSpacing(10)
        heading = QLabel(title)
        heading.setTextFormat(Qt.TextFormat.PlainText)
        font = heading.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        heading.setFont(font)
        layout.addWidget(heading)
        badge = QLabel("This page is coming in an upcoming version of Berth.")
        badge.setTextFormat(Qt.TextFormat.PlainText)
        badge.setObjectName("comingBadge")
        layout.addWidget(badge)
        intro = QLabel(purpose)
        intro.setTextFormat(Qt.TextFormat.PlainText)
        intro.setWordWrap(True)
        layout.addWidget(intro)
        lead = QLabel("It will offer:")
        lead.setTextFormat(Qt.TextFormat.PlainText)
        layout.addWidget(lead)
        for item in items:
            line = QLabel(f"•  {item}")
            line.setTextFormat(Qt.TextFormat.PlainText)
            line.setWordWrap(True)
            line.setContentsMargins(12, 0, 0, 0)
            layout.addWidget(line)
        layout.addSpacing(12)
        now = QLabel(NOW)
        now.setTextFormat(Qt.TextFormat.PlainText)
        now.setWordWrap(True)
        now.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(now)
        layout.addStretch(1)
        self.items = items


def _factory(key: str) -> PageFactory:
    title, purpose, items = PLANNED[key]

    def build(_ctx: AppContext) -> QWidget:
        return PlaceholderPage(title, purpose, items)

    return build


def register_placeholders() -> None:
    """Announce the planned pages; real pages registered later (or earlier) win."""
    for key, (title, _purpose, _items) in PLANNED.items():
        register_page(key, title, _factory(key), placeholder=True)
