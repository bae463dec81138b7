"""Volumes as a Qt table keyed by name.

Two columns come from slower sources than the volume list and arrive later: sizes from
``disk_usage()`` (it walks every volume, so the page asks for it only on request) and
the containers using each volume (from the engine's ``volume`` container filter, run in a
worker). Both land through ``dataChanged`` on their column only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from PySide6.QtCore import QObject

from app.models.keyed import Column, KeyedTableModel
from vm_backend.engine.models import Volume
from vm_backend.units import human_size

VOLUME_COLUMNS: tuple[Column[Volume], ...] = (
    Column("Name", lambda v: v.name, tooltip=lambda v: v.name),
    Column("Driver", lambda v: v.driver),
    Column("Mountpoint", lambda v: v.mountpoint, tooltip=lambda v: v.mountpoint),
    Column("Size", lambda v: "", align_right=True),  # from disk_usage, on request
    Column("Used by", lambda v: ""),  # from the container filter, in a worker
    Column("Created", lambda v: v.created[:19].replace("T", " "), lambda v: v.created),
)
COL_SIZE = 3
COL_USED_BY = 4


class VolumeTableModel(KeyedTableModel[Volume]):
    """Volumes keyed by name, with sizes and users filled in when known."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(VOLUME_COLUMNS, lambda v: v.name, parent)
        self._sizes: dict[str, int] = {}
        self._users: dict[str, tuple[str, ...]] = {}

    def cell_text(self, key: str, item: Volume, col: int) -> str:
        if col == COL_SIZE:
            return human_size(self.size_of(key))
        if col == COL_USED_BY:
            return ", ".join(self._users.get(key, ()))
        return super().cell_text(key, item, col)

    def cell_sort(self, key: str, item: Volume, col: int) -> Any:
        if col == COL_SIZE:
            return self.size_of(key)
        if col == COL_USED_BY:
            return len(self._users.get(key, ()))
        return super().cell_sort(key, item, col)

    def size_of(self, name: str) -> int:
        """Bytes, or -1 when not measured yet (or the engine did not say)."""
        item = self.item(name)
        return self._sizes.get(name, item.size if item is not None else -1)

    def users_of(self, name: str) -> tuple[str, ...]:
        return self._users.get(name, ())

    def set_sizes(self, sizes: Mapping[str, int]) -> None:
        self._sizes = dict(sizes)
        self.column_changed(COL_SIZE)

    def set_users(self, users: Mapping[str, Iterable[str]]) -> None:
        fresh = {k: tuple(sorted(v)) for k, v in users.items()}
        if fresh != self._users:
            self._users = fresh
            self.column_changed(COL_USED_BY)
