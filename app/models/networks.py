"""Networks as a Qt table keyed by id.

Docker's network list leaves ``Containers`` empty (only inspect fills it), so the
containers column is counted from the session's container snapshot instead: a container
lists the networks it is attached to. Only running containers count, which is what
``docker network inspect`` shows too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import QObject

from app.models.keyed import Column, KeyedTableModel
from vm_backend.engine.models import Container, Network

NETWORK_COLUMNS: tuple[Column[Network], ...] = (
    Column("Name", lambda n: n.name, tooltip=lambda n: n.id),
    Column("Driver", lambda n: n.driver),
    Column("Scope", lambda n: n.scope),
    Column("Subnet", lambda n: ", ".join(n.subnets)),
    Column("Gateway", lambda n: ", ".join(n.gateways)),
    Column("Internal", lambda n: "yes" if n.internal else "no", lambda n: n.internal),
    Column("Containers", lambda n: "", align_right=True),  # from the container snapshot
)
COL_CONTAINERS = 6


class NetworkTableModel(KeyedTableModel[Network]):
    """Networks keyed by id, with attached container counts from the session."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(NETWORK_COLUMNS, lambda n: n.id, parent)
        self._attached: dict[str, int] = {}  # network name -> running containers

    def cell_text(self, key: str, item: Network, col: int) -> str:
        if col == COL_CONTAINERS:
            return str(self.containers_on(item))
        return super().cell_text(key, item, col)

    def cell_sort(self, key: str, item: Network, col: int) -> Any:
        if col == COL_CONTAINERS:
            return self.containers_on(item)
        return super().cell_sort(key, item, col)

    def containers_on(self, network: Network) -> int:
        # The snapshot count when we have one; attachments if the engine listed them.
        return max(self._attached.get(network.name, 0), len(network.attachments))

    def set_containers(self, containers: Iterable[Container]) -> None:
        counts: dict[str, int] = {}
        for c in containers:
            if c.running:
                for name in c.networks:
                    counts[name] = counts.get(name, 0) + 1
        if counts != self._attached:
            self._attached = counts
            self.column_changed(COL_CONTAINERS)
