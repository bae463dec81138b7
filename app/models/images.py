"""Images as a Qt table: one row per tag, as ``docker images`` shows them.

:class:`ImageTableModel` builds on :class:`~app.models.keyed.KeyedTableModel`: an untagged
image has one ``<none>`` row, and rows are keyed by ``image id|reference``. Its "in use"
column is counted from the session's container snapshot, which is fresher than the
engine's image list (that one is only re-listed when an image event arrives).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject

from app.models.keyed import Column, KeyedTableModel, format_time
from vm_backend.engine.models import Container, Image
from vm_backend.units import human_size


# ---- images ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRow:
    """One tag of an image (or its single ``<none>`` row when it has no tag)."""

    image: Image
    reference: str  # "repo:tag", or "" for a dangling image

    @property
    def key(self) -> str:
        return f"{self.image.id}|{self.reference}"

    @property
    def repository(self) -> str:
        return split_reference(self.reference)[0] if self.reference else "<none>"

    @property
    def tag(self) -> str:
        return split_reference(self.reference)[1] if self.reference else "<none>"


def split_reference(reference: str) -> tuple[str, str]:
    """``registry:5000/a/b:tag`` -> (``registry:5000/a/b``, ``tag``); a port is no tag."""
    repo, sep, tag = reference.rpartition(":")
    if not sep or "/" in tag:
        return reference, ""
    return repo, tag


def _bare(image_id: str) -> str:
    # Docker lists container image ids with "sha256:", Podman without.
    return image_id.removeprefix("sha256:")


def image_rows(image: Image) -> list[ImageRow]:
    if not image.tags:
        return [ImageRow(image, "")]
    return [ImageRow(image, t) for t in image.tags]


IMAGE_COLUMNS: tuple[Column[ImageRow], ...] = (
    Column("Repository", lambda r: r.repository),
    Column("Tag", lambda r: r.tag),
    Column("Image ID", lambda r: r.image.short_id, tooltip=lambda r: r.image.id),
    Column("Size", lambda r: human_size(r.image.size), lambda r: r.image.size, align_right=True),
    Column("Created", lambda r: format_time(r.image.created), lambda r: r.image.created),
    Column("In use", lambda r: "", align_right=True),  # filled from container usage
)
COL_IN_USE = 5


class ImageTableModel(KeyedTableModel[ImageRow]):
    """Images, one row per tag, fed by the session's image and container diffs."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(IMAGE_COLUMNS, lambda r: r.key, parent)
        self._by_image: dict[str, set[str]] = {}
        self._users: dict[str, list[str]] = {}  # image id -> container names

    def cell_text(self, key: str, item: ImageRow, col: int) -> str:
        if col == COL_IN_USE:
            n = len(self.users_of(item.image.id))
            return f"{n} container{'s' if n != 1 else ''}" if n else ""
        return super().cell_text(key, item, col)

    def cell_sort(self, key: str, item: ImageRow, col: int) -> Any:
        if col == COL_IN_USE:
            return len(self.users_of(item.image.id))
        return super().cell_sort(key, item, col)

    def users_of(self, image_id: str) -> list[str]:
        """Names of the containers (any state) created from this image."""
        return list(self._users.get(_bare(image_id), ()))

    def set_images(self, images: Iterable[Image]) -> None:
        """Make the model equal a full image list (on connect or session change)."""
        fresh = list(images)
        ids = {i.id for i in fresh}
        self.remove_images([i for i in self._by_image if i not in ids])
        self.update_images(fresh)

    def update_images(self, images: Iterable[Image]) -> None:
        """Add or refresh images; a changed tag set becomes row removes/inserts."""
        stale: list[str] = []
        rows: list[ImageRow] = []
        for image in images:
            new = image_rows(image)
            new_keys = {r.key for r in new}
            stale.extend(self._by_image.get(image.id, set()) - new_keys)
            self._by_image[image.id] = new_keys
            rows.extend(new)
        self.remove_keys(stale)
        self.upsert(rows)

    def remove_images(self, image_ids: Iterable[str]) -> None:
        keys: list[str] = []
        for image_id in image_ids:
            keys.extend(self._by_image.pop(image_id, set()))
        self.remove_keys(keys)

    def set_containers(self, containers: Iterable[Container]) -> None:
        users: dict[str, list[str]] = {}
        for c in containers:
            users.setdefault(_bare(c.image_id), []).append(c.name)
        if users != self._users:
            self._users = users
            self.column_changed(COL_IN_USE)
