"""The Volumes page: list, create, remove, prune, browse files, export and import.

Two columns are fed off the GUI thread after the list arrives:

* *Used by*: the list JSON has no mounts, so a worker asks the engine which containers
  use each volume (the ``volume`` container filter). It reruns, debounced, whenever
  containers or volumes change; one run at a time, and a change during a run schedules
  exactly one more.
* *Size*: ``disk_usage()`` walks every volume on the engine and can take long on big
  hosts, so it runs only when the user asks (Sizes) and never blocks the page.

Browse, export and import use the volume helper (a never-started container, always
removed; see :mod:`vm_backend.engine.volume_helper`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QTimer
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QFileDialog, QWidget

from app.bridge import Op
from app.dialogs.image_ops import TaskRow, show_error
from app.dialogs.volume_ops import CreateVolumeDialog, VolumeBrowser
from app.models.volumes import VolumeTableModel
from app.pages.images import MAX_NAMES, ObjectPage, prune_text, soon
from app.pages.registry import register_page
from vm_backend.engine.models import Container, DiskUsage, Volume
from vm_backend.engine.monitor import Diff
from vm_backend.engine.volume_helper import (
    HELPER_LABEL,
    export_volume,
    import_volume,
    remove_stale_helpers,
)
from vm_backend.units import human_size

if TYPE_CHECKING:
    from app.context import AppContext
    from app.session import EngineSession
    from vm_backend.engine.client import EngineClient

USAGE_DEBOUNCE_MS = 400


def volume_users(client: EngineClient, names: list[str]) -> dict[str, list[str]]:
    """Container names using each volume (blocking; run on a worker).

    Volume helpers (ours or another Berth's, mid-transfer) are not users.
    """
    users: dict[str, list[str]] = {}
    for name in names:
        users[name] = [
            c.name for c in client.containers(all=True, filters={"volume": name})
            if HELPER_LABEL not in c.labels
        ]
    return users


class VolumesPage(ObjectPage):
    """Volumes of the active engine."""

    kind = "volume"
    noun = "volumes"
    stretch_column = 2  # the mountpoint: long paths
    search_hint = "Search name, driver or mountpoint"

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        self.volumes = VolumeTableModel()
        super().__init__(ctx, self.volumes, parent)
        self._usage_running = False
        self._usage_again = False
        self._usage_timer = QTimer(self)
        self._usage_timer.setSingleShot(True)
        self._usage_timer.setInterval(USAGE_DEBOUNCE_MS)
        self._usage_timer.timeout.connect(self.refresh_users)

        self.add_action("Create…", self.open_create, tip="Create a volume")
        self.browse_act = self.add_action("Browse…", self.browse_selected, needs_selection=True,
                                          tip="See, download and upload the volume's files")
        self.remove_act = self.add_action(
            "Remove", self.remove_selected, needs_selection=True,
            shortcut=QKeySequence(QKeySequence.StandardKey.Delete),
            tip="Remove the selected volumes")
        self.toolbar.addSeparator()
        self.export_act = self.add_action("Export…", self.export_dialog, needs_selection=True,
                                          tip="Save the volume's files to a tar")
        self.import_act = self.add_action("Import…", self.import_dialog, needs_selection=True,
                                          tip="Unpack a tar into the volume")
        self.toolbar.addSeparator()
        self.sizes_act = self.add_action("Sizes", self.refresh_sizes,
                                         tip="Measure every volume (can be slow on big engines)")
        self.prune_act = self.add_action("Prune", self.prune,
                                         tip="Remove every volume no container uses")
        self.view.doubleClicked.connect(lambda _i: self.browse_selected())
        self.finish_setup()

    # ---- model feed ------------------------------------------------------------------------
    def set_session(self, session: EngineSession | None) -> None:
        super().set_session(session)
        if session is not None:
            # Helpers of a Berth that crashed mid-transfer would hold their volume forever.
            Op(remove_stale_helpers, session.client).failure(
                lambda err: self.say(f"Could not clean up old volume helpers: {err}")
            ).run(self)

    def apply_diff(self, diff: Diff[Any]) -> None:
        super().apply_diff(diff)
        if diff.added or diff.removed:
            soon(self._usage_timer)

    def containers_changed(self, containers: list[Container]) -> None:
        if self.session is not None:
            soon(self._usage_timer)

    def refresh_users(self) -> None:
        """Ask the engine which containers use each volume (one worker run at a time)."""
        client = self.client
        if client is None:
            return
        if self._usage_running:
            self._usage_again = True
            return
        self._usage_running = True
        names = self.volumes.row_keys()

        def done() -> None:
            self._usage_running = False
            if self._usage_again:
                self._usage_again = False
                soon(self._usage_timer)

        # A failure here only leaves the column as it was; the next change retries.
        Op(volume_users, client, names).success(self.volumes.set_users).failure(
            lambda err: self.say(f"Could not read volume usage: {err}")
        ).finally_(done).run(self)

    def refresh_sizes(self) -> None:
        client = self.client
        if client is None:
            return
        self.sizes_act.setEnabled(False)
        self.say("Measuring volumes…")

        def got(usage: DiskUsage) -> None:
            self.volumes.set_sizes(usage.volume_sizes)
            total = sum(max(0, s) for s in usage.volume_sizes.values())
            self.say(f"Volumes use {human_size(total)} in all.")

        Op(client.disk_usage).success(got).failure(
            lambda err: self.fail("Measure volumes", err)
        ).finally_(lambda: self.sizes_act.setEnabled(self.session is not None)).run(self)

    def selected_volumes(self) -> list[Volume]:
        return [v for v in self.selected() if isinstance(v, Volume)]

    # ---- actions -------------------------------------------------------------------------
    def open_create(self) -> CreateVolumeDialog | None:
        client = self.client
        if client is None:
            return None
        dialog = CreateVolumeDialog(client, self)
        dialog.created.connect(lambda v: self.say(f"Created volume {v.name}."))
        dialog.created.connect(lambda v: self.select_key(v.name))
        dialog.open()
        return dialog

    def browse_selected(self) -> VolumeBrowser | None:
        client = self.client
        volumes = self.selected_volumes()
        if client is None or not volumes:
            return None
        browser = VolumeBrowser(client, volumes[0].name, self)
        browser.show()
        return browser

    def remove_selected(self) -> None:
        client = self.client
        volumes = self.selected_volumes()
        if client is None or not volumes:
            return
        names = [v.name for v in volumes]
        text = "Remove volume" + ("s " if len(names) > 1 else " ") + ", ".join(names) + "?"
        users = sorted({u for n in names for u in self.volumes.users_of(n)})
        if users:
            shown = ", ".join(users[:MAX_NAMES])
            if len(users) > MAX_NAMES:
                shown += f" and {len(users) - MAX_NAMES} more"
            text += ("\n\nUsed by containers: " + shown +
                     ".\nThe engine refuses to remove a volume while a container uses it.")
        text += "\n\nIts files are deleted for good."

        def remove() -> list[str]:
            failures = []
            for name in names:
                try:
                    client.remove_volume(name)
                except Exception as err:  # noqa: BLE001 - reported per volume below
                    failures.append(str(err))
            return failures

        def done(failures: list[str]) -> None:
            if failures:
                show_error(self, "Remove volume", "\n".join(failures))
                self.say("Some volumes were not removed.")
            else:
                self.say(f"Removed {', '.join(names)}.")

        self.confirm("Remove volumes", text, "Remove",
                     lambda: self.run_op("Removing volumes", remove, done=done))

    def export_dialog(self) -> None:
        volumes = self.selected_volumes()
        if not volumes:
            return
        dest, _ = QFileDialog.getSaveFileName(self, "Export volume", f"{volumes[0].name}.tar",
                                              "Tar archives (*.tar)")
        if dest:
            self.export_to(volumes[0].name, Path(dest))

    def export_to(self, name: str, dest: Path) -> TaskRow | None:
        client = self.client
        if client is None:
            return None
        return self.run_task(
            f"Exporting volume {name}",
            lambda cancelled, progress: export_volume(client, name, dest, cancelled, progress),
            on_success=lambda n: self.notify(
                "Volume exported", f"Saved {name} to {dest} ({human_size(n)})."),
            failure_title="Export volume",
        )

    def import_dialog(self) -> None:
        volumes = self.selected_volumes()
        if not volumes:
            return
        src, _ = QFileDialog.getOpenFileName(self, f"Import into {volumes[0].name}", "",
                                             "Tar archives (*.tar);;All files (*)")
        if src:
            self.import_into(volumes[0].name, Path(src))

    def import_into(self, name: str, src: Path) -> None:
        """Unpack ``src`` into the volume, after a confirmation (same names are replaced)."""
        client = self.client
        if client is None:
            return

        def start() -> TaskRow:
            return self.run_task(
                f"Importing {src.name} into {name}",
                lambda cancelled, progress: import_volume(client, name, src, cancelled,
                                                          progress),
                total=src.stat().st_size,
                on_success=lambda n: self.notify(
                    "Volume imported", f"Unpacked {src.name} into {name} ({human_size(n)})."),
                failure_title="Import volume",
            )

        self.confirm("Import into volume",
                     f"Unpack {src.name} into {name}? Files with the same paths are replaced.",
                     "Import", start)

    def prune(self) -> None:
        client = self.client
        if client is None:
            return
        self.confirm(
            "Prune volumes",
            "Remove every volume that no container uses? Their files are deleted for good.",
            "Prune",
            lambda: self.run_task(
                "Pruning volumes",
                lambda _c, _p: client.prune_volumes(all_unused=True),
                cancellable=False,  # the engine prunes in one request
                on_success=lambda r: self.notify("Volumes pruned", prune_text("volumes", r)),
                failure_title="Prune volumes",
            ),
        )


register_page("volumes", "Volumes", VolumesPage, icon="")
