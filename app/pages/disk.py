"""Disk use and clean-up (``system df``): sizes, what is reclaimable, prune with a preview.

The preview lists exactly what each prune would remove, computed from the engine's own
lists (stopped containers, dangling or unused images, volumes no container uses, unused
build cache); the prune runs only after the user saw it and confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.pages.registry import register_page
from app.session import EngineSession
from vm_backend.engine.client import EngineClient
from vm_backend.engine.models import ContainerState, DiskUsage, PruneResult
from vm_backend.units import human_size

if TYPE_CHECKING:
    from app.context import AppContext


@dataclass(frozen=True)
class PrunePlan:
    containers: tuple[str, ...]
    images: tuple[str, ...]
    volumes: tuple[str, ...]
    build_cache: int  # bytes of unused build cache

    def describe(self) -> str:
        lines = []
        for title, items in (
            ("Stopped containers", self.containers),
            ("Images", self.images),
            ("Volumes", self.volumes),
        ):
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  {i}" for i in items] or ["  none"]
        lines.append(f"Build cache: {human_size(self.build_cache)} unused")
        return "\n".join(lines)

    @property
    def empty(self) -> bool:
        return not (self.containers or self.images or self.volumes or self.build_cache)


def plan_prune(client: EngineClient, all_images: bool, volumes: bool) -> PrunePlan:
    """What a prune would remove, from the engine's lists (runs on a worker)."""
    containers = client.containers(all=True)
    stopped = tuple(
        f"{c.name} ({c.short_id})"
        for c in containers
        if c.state in (ContainerState.EXITED, ContainerState.CREATED, ContainerState.DEAD)
    )
    # Images that stay in use: those of containers that will survive the prune.
    survivors = {
        c.image_id
        for c in containers
        if c.state not in (ContainerState.EXITED, ContainerState.CREATED, ContainerState.DEAD)
    }
    images = tuple(
        (", ".join(i.tags) or i.short_id)
        for i in client.images()
        if i.id not in survivors and (i.dangling or all_images)
    )
    usage = client.disk_usage()
    vols: tuple[str, ...] = ()
    if volumes:
        in_use = {v for c in containers if c.running for v in _volumes_of(client, c.id)}
        vols = tuple(v.name for v in client.volumes() if v.name not in in_use)
    return PrunePlan(stopped, images, vols, usage.build_cache.reclaimable)


def _volumes_of(client: EngineClient, container_id: str) -> list[str]:
    info = client.inspect_container(container_id)
    return [str(m.get("Name")) for m in info.get("Mounts") or [] if m.get("Type") == "volume"]


def run_prune(client: EngineClient, all_images: bool, volumes: bool) -> list[PruneResult]:
    results = [client.prune_containers(), client.prune_images(dangling_only=not all_images)]
    if volumes:
        results.append(client.prune_volumes(all_unused=True))
    results.append(client.prune_networks())
    try:
        results.append(client.prune_build_cache())
    except Exception:  # noqa: BLE001 - Podman 4.3 has no build cache endpoint
        pass
    return results


class DiskPage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.refresh_button = QPushButton("Refresh")
        self.state = QLabel("")
        self.state.setTextFormat(Qt.TextFormat.PlainText)
        top.addWidget(self.refresh_button)
        top.addWidget(self.state, 1)
        layout.addLayout(top)

        box = QGroupBox("Disk use")
        self.grid = QGridLayout(box)
        for col, title in enumerate(("", "Total", "In use", "Size", "Reclaimable")):
            label = QLabel(f"<b>{title}</b>")  # our own constant text, not engine text
            label.setTextFormat(Qt.TextFormat.RichText)
            if col:
                label.setAlignment(Qt.AlignmentFlag.AlignRight)
            self.grid.addWidget(label, 0, col)
        self.cells: dict[tuple[int, int], QLabel] = {}
        for row, kind in enumerate(("Images", "Containers", "Volumes", "Build cache"), start=1):
            self.grid.addWidget(QLabel(kind), row, 0)
            for col in range(1, 5):
                cell = QLabel("…")
                cell.setTextFormat(Qt.TextFormat.PlainText)
                cell.setAlignment(Qt.AlignmentFlag.AlignRight)
                self.grid.addWidget(cell, row, col)
                self.cells[(row, col)] = cell
        layout.addWidget(box)

        prune = QGroupBox("Clean up")
        pl = QVBoxLayout(prune)
        self.all_images = QCheckBox("Also images no container uses (not only dangling ones)")
        self.volumes = QCheckBox("Also volumes no running container uses (their data is lost)")
        pl.addWidget(self.all_images)
        pl.addWidget(self.volumes)
        buttons = QHBoxLayout()
        self.preview_button = QPushButton("Preview")
        self.prune_button = QPushButton("Prune…")
        buttons.addWidget(self.preview_button)
        buttons.addWidget(self.prune_button)
        buttons.addStretch(1)
        pl.addLayout(buttons)
        self.preview = QPlainTextEdit()
        self.preview.setReadOnly(True)
        self.preview.setPlaceholderText("Preview shows what a prune would remove.")
        pl.addWidget(self.preview, 1)
        layout.addWidget(prune, 1)

        self.refresh_button.clicked.connect(self.refresh)
        self.preview_button.clicked.connect(self.show_preview)
        self.prune_button.clicked.connect(self._confirm_prune)
        self.all_images.toggled.connect(lambda _v: self.preview.clear())
        self.volumes.toggled.connect(lambda _v: self.preview.clear())
        ctx.session_changed.connect(lambda _s: self.refresh())
        self._plan: PrunePlan | None = None
        self.refresh()

    @property
    def session(self) -> EngineSession | None:
        return self.ctx.session

    def _busy(self, busy: bool, text: str = "") -> None:
        for b in (self.refresh_button, self.preview_button, self.prune_button):
            b.setEnabled(not busy and self.session is not None)
        if text:
            self.state.setText(text)

    def refresh(self) -> None:
        session = self.session
        if session is None:
            self._busy(False, "No engine: disk use appears once one answers.")
            return
        self._busy(True, "Reading disk use…")
        Op(session.client.disk_usage).success(self._show).failure(
            lambda err: self.state.setText(user_message(err))
        ).finally_(lambda: self._busy(False)).run(self)

    def _show(self, usage: DiskUsage) -> None:
        for row, item in enumerate(usage.items, start=1):
            values = (
                str(item.total),
                str(item.active),
                human_size(item.size),
                human_size(item.reclaimable),
            )
            for col, text in enumerate(values, start=1):
                self.cells[(row, col)].setText(text)
        total = sum(i.size for i in usage.items)
        reclaim = sum(i.reclaimable for i in usage.items)
        self.state.setText(f"{human_size(total)} in use, {human_size(reclaim)} reclaimable.")

    def show_preview(self) -> None:
        session = self.session
        if session is None:
            return
        self._busy(True, "Working out what a prune would remove…")
        Op(
            plan_prune, session.client, self.all_images.isChecked(), self.volumes.isChecked()
        ).success(self._planned).failure(
            lambda err: self.state.setText(user_message(err))
        ).finally_(lambda: self._busy(False)).run(self)

    def _planned(self, plan: PrunePlan) -> None:
        self._plan = plan
        self.preview.setPlainText(plan.describe())
        self.state.setText("Nothing to clean up." if plan.empty else "Preview ready.")

    def _confirm_prune(self) -> None:
        if self._plan is None:
            self.state.setText("Preview first, to see what would go.")
            self.show_preview()
            return
        if self.ctx.settings.confirm_destructive:
            answer = QMessageBox.question(
                self,
                "Prune",
                "Remove everything listed in the preview?\n\n" + self._plan.describe()[:2000],
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.prune()

    def prune(self) -> None:
        session = self.session
        if session is None:
            return
        self._busy(True, "Pruning…")

        def done(results: list[PruneResult]) -> None:
            freed = sum(r.space_reclaimed for r in results)
            count = sum(len(r.deleted) for r in results)
            self._plan = None
            self.preview.clear()
            self.state.setText(f"Removed {count} objects, reclaimed {human_size(freed)}.")
            self.refresh()

        Op(
            run_prune, session.client, self.all_images.isChecked(), self.volumes.isChecked()
        ).success(done).failure(lambda err: self.state.setText(user_message(err))).finally_(
            lambda: self._busy(False)
        ).run(self)


register_page("disk", "Disk", DiskPage, "drive-harddisk")
