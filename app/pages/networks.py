"""The Networks page: list, inspect (with connect/disconnect), create, remove, prune.

The containers column counts running containers per network from the session's
container snapshot (Docker's network list leaves attachments empty); the inspect dialog
reads the real attachments with their addresses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QWidget

from app.dialogs.image_ops import show_error
from app.dialogs.network_ops import CreateNetworkDialog, NetworkInspectDialog
from app.models.networks import NetworkTableModel
from app.pages.images import ObjectPage, prune_text
from app.pages.registry import register_page
from vm_backend.engine.models import Container, Network

if TYPE_CHECKING:
    from app.context import AppContext

# Networks every engine creates for itself; the engine refuses to remove them.
BUILTIN = {"bridge", "host", "none", "podman"}


class NetworksPage(ObjectPage):
    """Networks of the active engine."""

    kind = "network"
    noun = "networks"
    search_hint = "Search name, driver or subnet"

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        self.networks = NetworkTableModel()
        super().__init__(ctx, self.networks, parent)
        self.add_action("Create…", self.open_create, tip="Create a network")
        self.inspect_act = self.add_action(
            "Inspect…", self.inspect_selected, needs_selection=True,
            tip="Addresses and attached containers; connect or disconnect one")
        self.remove_act = self.add_action(
            "Remove", self.remove_selected, needs_selection=True,
            shortcut=QKeySequence(QKeySequence.StandardKey.Delete),
            tip="Remove the selected networks")
        self.toolbar.addSeparator()
        self.prune_act = self.add_action("Prune", self.prune,
                                         tip="Remove every network no container uses")
        self.view.doubleClicked.connect(lambda _i: self.inspect_selected())
        self.finish_setup()

    def containers_changed(self, containers: list[Container]) -> None:
        self.networks.set_containers(containers)

    def selected_networks(self) -> list[Network]:
        return [n for n in self.selected() if isinstance(n, Network)]

    def _containers(self) -> list[Container]:
        return self.session.snapshot("container") if self.session is not None else []

    def open_create(self) -> CreateNetworkDialog | None:
        client = self.client
        if client is None:
            return None
        dialog = CreateNetworkDialog(client, self)
        dialog.created.connect(lambda nid: self.say("Network created."))
        dialog.open()
        return dialog

    def inspect_selected(self) -> NetworkInspectDialog | None:
        client = self.client
        networks = self.selected_networks()
        if client is None or not networks:
            return None
        dialog = NetworkInspectDialog(client, networks[0], self._containers, self)
        # A connect/disconnect is a network event; the monitor re-lists networks but not
        # containers, whose network lists feed the count column: ask for a full re-list.
        dialog.changed.connect(self._attachments_changed)
        dialog.show()
        return dialog

    def _attachments_changed(self, ok: bool, _message: str) -> None:
        if ok and self.session is not None:
            self.session.retry()

    def remove_selected(self) -> None:
        client = self.client
        networks = self.selected_networks()
        if client is None or not networks:
            return
        names = [n.name for n in networks]
        builtin = [n for n in names if n in BUILTIN]
        if builtin:
            show_error(self, "Remove network",
                       f"{', '.join(builtin)} belong{'s' if len(builtin) == 1 else ''} to the "
                       "engine and cannot be removed.")
            return
        attached = sum(self.networks.containers_on(n) for n in networks)
        text = "Remove network" + ("s " if len(names) > 1 else " ") + ", ".join(names) + "?"
        if attached:
            text += (f"\n\n{attached} running container{'s are' if attached > 1 else ' is'} "
                     "attached; the engine refuses until they are disconnected.")
        ids = [n.id for n in networks]

        def remove() -> list[str]:
            failures = []
            for ident in ids:
                try:
                    client.remove_network(ident)
                except Exception as err:  # noqa: BLE001 - reported per network below
                    failures.append(str(err))
            return failures

        def done(failures: list[str]) -> None:
            if failures:
                show_error(self, "Remove network", "\n".join(failures))
                self.say("Some networks were not removed.")
            else:
                self.say(f"Removed {', '.join(names)}.")

        self.confirm("Remove networks", text, "Remove",
                     lambda: self.run_op("Removing networks", remove, done=done))

    def prune(self) -> None:
        client = self.client
        if client is None:
            return
        self.confirm(
            "Prune networks",
            "Remove every network no container uses (the engine's own networks stay)?",
            "Prune",
            lambda: self.run_task(
                "Pruning networks",
                lambda _c, _p: client.prune_networks(),
                cancellable=False,  # the engine prunes in one request
                on_success=lambda r: self.notify("Networks pruned", prune_text("networks", r)),
                failure_title="Prune networks",
            ),
        )


register_page("networks", "Networks", NetworksPage, icon="")
