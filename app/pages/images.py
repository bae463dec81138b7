"""The Images page, and :class:`ObjectPage`, the frame the Volumes and Networks pages share.

:class:`ObjectPage` is a toolbar, a search box, a sorted/filtered table and a strip of
running tasks (each with progress and Cancel). It follows the context's active session:
the model is filled from the session's snapshot and then kept equal to the engine by the
session's batched diffs (row inserts, removes and dataChanged; never a reset).

The Images page lists one row per tag. Its actions: pull, build, run, tag, history,
remove (forced, after naming the containers that use it), export to a tar, load from a
tar, import a root filesystem tarball and prune (dangling or all unused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLineEdit,
    QMenu,
    QTableView,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.dialogs.build import BuildDialog
from app.dialogs.image_ops import (
    HistoryDialog,
    TagDialog,
    TaskRow,
    confirm,
    plain_label,
    show_error,
)
from app.dialogs.pull import PullDialog
from app.models.images import ImageRow, ImageTableModel
from app.models.keyed import ITEM_ROLE, KeyedTableModel, ObjectFilterProxy
from app.pages.registry import register_page
from vm_backend.engine.models import Container, PruneResult
from vm_backend.engine.monitor import Diff
from vm_backend.units import human_size

if TYPE_CHECKING:
    from app.context import AppContext
    from app.session import EngineSession
    from vm_backend.engine.client import EngineClient


def soon(timer: QTimer) -> None:
    """Start a single-shot timer unless it is already counting down.

    Throttle, not debounce: restarting on every change would starve the timer while an
    engine keeps changing (a busy host sends diffs every batch).
    """
    if not timer.isActive():
        timer.start()


MAX_NAMES = 12  # a confirmation names at most this many containers, then "and N more"


class ObjectPage(QWidget):
    """Toolbar + search + table + task strip, bound to the context's session."""

    kind = ""  # the Diff kind this page's model follows
    noun = "items"  # for the count ("3 of 7 images")
    search_hint = "Search"
    stretch_column = 0  # takes the spare width; the others grow to fit their contents

    def __init__(self, ctx: AppContext, model: KeyedTableModel[Any],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.session: EngineSession | None = None
        self.model = model
        model.setParent(self)
        self.proxy = ObjectFilterProxy(self)
        self.proxy.setSourceModel(model)
        self.tasks: list[TaskRow] = []

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.toolbar = QToolBar()
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        layout.addWidget(self.toolbar)
        filters = QHBoxLayout()
        filters.setContentsMargins(8, 4, 8, 4)
        self.search = QLineEdit()
        self.search.setPlaceholderText(self.search_hint)
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.proxy.setFilterFixedString)
        find = QAction(self)
        find.setShortcut(QKeySequence(QKeySequence.StandardKey.Find))
        find.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        find.triggered.connect(lambda: self.search.setFocus())
        self.addAction(find)
        filters.addWidget(self.search, 1)
        self.filters = filters
        self.count_label = plain_label()
        self.count_label.setObjectName("muted")
        filters.addWidget(self.count_label)
        layout.addLayout(filters)
        self.banner = plain_label(wrap=True)
        self.banner.setObjectName("muted")
        self.banner.setContentsMargins(8, 4, 8, 4)
        layout.addWidget(self.banner)

        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setAlternatingRowColors(True)
        self.view.setWordWrap(False)
        self.view.verticalHeader().hide()
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.view.horizontalHeader()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(self.stretch_column, QHeaderView.ResizeMode.Stretch)
        self._fit_timer = QTimer(self)
        self._fit_timer.setSingleShot(True)
        self._fit_timer.setInterval(200)
        self._fit_timer.timeout.connect(self._fit_columns)
        model.dataChanged.connect(lambda *_: soon(self._fit_timer))
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        layout.addWidget(self.view, 1)
        self.task_box = QVBoxLayout()
        self.task_box.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.task_box)
        self.status = plain_label(wrap=True, selectable=True)
        self.status.setContentsMargins(8, 2, 8, 4)
        layout.addWidget(self.status)

        self.selection_actions: list[QAction] = []
        self.engine_actions: list[QAction] = []
        for sig in (self.proxy.rowsInserted, self.proxy.rowsRemoved, self.proxy.modelReset,
                    self.proxy.layoutChanged):
            sig.connect(self._update_count)
        self.view.selectionModel().selectionChanged.connect(self._update_actions)
        ctx.session_changed.connect(self.set_session)

    def add_action(self, text: str, slot: Callable[[], object], *, tip: str = "",
                   needs_selection: bool = False, shortcut: QKeySequence | None = None,
                   toolbar: bool = True) -> QAction:
        act = QAction(text, self)
        act.setIconText(text)  # Qt would drop a trailing ellipsis from the toolbar text
        act.setToolTip(tip or text)
        act.triggered.connect(lambda _=False: slot())
        if shortcut is not None:
            act.setShortcut(shortcut)
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.addAction(act)
        if toolbar:
            self.toolbar.addAction(act)
        (self.selection_actions if needs_selection else self.engine_actions).append(act)
        return act

    def add_menu(self, text: str, actions: Iterable[QAction]) -> QToolButton:
        menu = QMenu(text, self)
        for act in actions:
            menu.addAction(act)
        button = QToolButton()
        button.setText(text)
        button.setMenu(menu)
        button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.toolbar.addWidget(button)
        return button

    def finish_setup(self) -> None:
        """Call at the end of a subclass __init__: binds the current session."""
        self.set_session(self.ctx.session)

    def _fit_columns(self) -> None:
        # Columns only ever grow to fit what they show (rows arrive, sizes and usage are
        # filled in later); never shrinking keeps them from jumping while the user reads.
        # Debounced: a burst of diffs costs one pass (Qt samples at most 1000 rows).
        if self.model.rowCount() == 0:
            return
        header = self.view.horizontalHeader()
        for col in range(self.model.columnCount()):
            if col != self.stretch_column:
                want = max(self.view.sizeHintForColumn(col), header.sectionSizeHint(col))
                if want > header.sectionSize(col):
                    header.resizeSection(col, want)

    # ---- session -------------------------------------------------------------------------
    @property
    def client(self) -> EngineClient | None:
        return self.session.client if self.session is not None else None

    def set_session(self, session: EngineSession | None) -> None:
        if self.session is not None:
            try:
                self.session.diffs.disconnect(self._on_diffs)
            except (RuntimeError, TypeError):
                pass  # the old session is already gone
        self.session = session
        if session is None:
            self.load_snapshot(None)
            self.banner.setText("No container engine is connected.")
            self.banner.show()
        else:
            self.banner.hide()
            session.diffs.connect(self._on_diffs)
            self.load_snapshot(session)
        self._update_actions()
        self._update_count()

    def load_snapshot(self, session: EngineSession | None) -> None:
        """Fill the model from the session's current tables (all gone without one)."""
        items = session.snapshot(self.kind) if session is not None else []
        self.model.replace_all(items)
        self.containers_changed(session.snapshot("container") if session is not None else [])

    def _on_diffs(self, diffs: list[Diff[Any]]) -> None:
        containers = False
        for diff in diffs:
            if diff.kind == self.kind:
                self.apply_diff(diff)
            elif diff.kind == "container":
                containers = True
        if containers and self.session is not None:
            self.containers_changed(self.session.snapshot("container"))
        self._update_actions()

    def apply_diff(self, diff: Diff[Any]) -> None:
        self.model.remove_keys(diff.removed)
        self.model.upsert(list(diff.added) + list(diff.changed))

    def containers_changed(self, containers: list[Container]) -> None:
        """The session's containers changed (pages that show usage override this)."""

    # ---- selection -----------------------------------------------------------------------
    def selected(self) -> list[Any]:
        rows = self.view.selectionModel().selectedRows()
        items = [self.proxy.data(i, ITEM_ROLE) for i in rows]
        return [i for i in items if i is not None]

    def select_key(self, key: str) -> bool:
        row = self.model.row_of(key)
        if row < 0:
            return False
        index = self.proxy.mapFromSource(self.model.index(row, 0))
        if not index.isValid():
            return False
        self.view.selectRow(index.row())
        return True

    def _update_actions(self) -> None:
        connected = self.session is not None
        has_selection = connected and bool(self.selected())
        for act in self.engine_actions:
            act.setEnabled(connected)
        for act in self.selection_actions:
            act.setEnabled(has_selection)

    def _update_count(self) -> None:
        shown, total = self.proxy.rowCount(), self.model.rowCount()
        text = f"{shown} of {total}" if shown != total else f"{total}"
        self.count_label.setText(f"{text} {self.noun}")
        soon(self._fit_timer)

    def _context_menu(self, pos: Any) -> None:
        if not self.view.indexAt(pos).isValid():
            return
        menu = QMenu(self)
        for act in self.selection_actions:
            menu.addAction(act)
        menu.popup(self.view.viewport().mapToGlobal(pos))

    # ---- helpers -------------------------------------------------------------------------
    @property
    def ask_first(self) -> bool:
        settings = getattr(self.ctx, "settings", None)
        return bool(getattr(settings, "confirm_destructive", True))

    def confirm(self, title: str, text: str, ok_text: str, on_yes: Callable[[], object]) -> None:
        confirm(self, title, text, ok_text, on_yes, ask=self.ask_first)

    def say(self, text: str) -> None:
        self.status.setText(text)

    def notify(self, title: str, text: str) -> None:
        self.say(text)
        notify = getattr(self.ctx, "notify", None)
        if callable(notify):
            notify(title, text)

    def fail(self, title: str, err: BaseException) -> None:
        message = user_message(err)
        self.say(f"{title}: {message}")
        show_error(self, title, message)

    def run_task(self, label: str, work: Callable[..., Any], *, total: int = 0,
                 cancellable: bool = True,
                 on_success: Callable[[Any], None] | None = None,
                 failure_title: str = "") -> TaskRow:
        """Run ``work(cancelled, progress)`` on a worker with a progress row and Cancel."""
        title = failure_title or label

        def failed(err: BaseException) -> None:
            if task.cancelled:
                self.say(f"{label}: cancelled.")
            else:
                self.fail(title, err)

        task = TaskRow(label, work, total=total, cancellable=cancellable,
                       on_success=on_success, on_failure=failed, parent=self)
        self.tasks.append(task)
        task.destroyed.connect(lambda *_: self.tasks.remove(task) if task in self.tasks else None)
        self.task_box.addWidget(task)
        task.start()
        return task

    def run_op(self, doing: str, fn: Callable[..., Any], *args: Any,
               done: Callable[[Any], None] | None = None) -> None:
        """A short engine call: status text while it runs, an error box if it fails."""
        self.say(f"{doing}…")

        def ok(result: Any) -> None:
            self.say("")
            if done is not None:
                done(result)

        Op(fn, *args).success(ok).failure(lambda err: self.fail(doing, err)).run(self)


def prune_text(what: str, result: PruneResult) -> str:
    """"Pruned images: 3 removed, 12.0 MB reclaimed." (Docker counts untagged references
    and deleted layers separately, so the count is of the engine's entries.)"""
    text = f"Pruned {what}: {len(result.deleted)} removed"
    if result.space_reclaimed:
        text += f", {human_size(result.space_reclaimed)} reclaimed"
    return text + "."


class ImagesPage(ObjectPage):
    """Local images of the active engine."""

    kind = "image"
    noun = "images"
    search_hint = "Search repository, tag or id"

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        self.images = ImageTableModel()
        super().__init__(ctx, self.images, parent)
        self.add_action("Pull…", self.open_pull, tip="Pull an image from a registry")
        self.add_action("Build…", self.open_build, tip="Build an image from a Dockerfile")
        self.run_act = self.add_action("Run…", self.run_selected, needs_selection=True,
                                       tip="Run a container from the selected image")
        self.toolbar.addSeparator()
        self.tag_act = self.add_action("Tag…", self.tag_selected, needs_selection=True,
                                       tip="Add a tag to the selected image")
        self.history_act = self.add_action("History", self.history_selected,
                                           needs_selection=True, tip="Layers and their sizes")
        self.remove_act = self.add_action(
            "Remove", self.remove_selected, needs_selection=True,
            shortcut=QKeySequence(QKeySequence.StandardKey.Delete),
            tip="Remove the selected images (tags)",
        )
        self.toolbar.addSeparator()
        self.export_act = self.add_action("Export…", self.export_dialog, needs_selection=True,
                                          tip="Save the selected image to a tar file",
                                          toolbar=False)
        self.load_act = self.add_action("Load…", self.load_dialog, toolbar=False,
                                        tip="Load images from a tar made by docker save")
        self.import_act = self.add_action("Import rootfs…", self.import_dialog, toolbar=False,
                                          tip="Create an image from a root filesystem tarball")
        self.add_menu("Files", [self.export_act, self.load_act, self.import_act])
        self.prune_dangling_act = self.add_action(
            "Prune dangling", lambda: self.prune(dangling_only=True), toolbar=False,
            tip="Remove images without a tag")
        self.prune_all_act = self.add_action(
            "Prune all unused", lambda: self.prune(dangling_only=False), toolbar=False,
            tip="Remove every image no container uses")
        self.add_menu("Prune", [self.prune_dangling_act, self.prune_all_act])

        self.dangling = QCheckBox("Dangling only")
        self.dangling.setToolTip("Show only images without a tag")
        self.dangling.toggled.connect(self._dangling_toggled)
        self.filters.insertWidget(1, self.dangling)
        self.view.doubleClicked.connect(lambda _i: self.history_selected())
        self.finish_setup()

    def _dangling_toggled(self, on: bool) -> None:
        self.proxy.set_predicate((lambda r: r.image.dangling) if on else None)

    # ---- model feed ------------------------------------------------------------------------
    def load_snapshot(self, session: EngineSession | None) -> None:
        self.images.set_images(session.snapshot("image") if session is not None else [])
        self.containers_changed(session.snapshot("container") if session is not None else [])

    def apply_diff(self, diff: Diff[Any]) -> None:
        self.images.remove_images(diff.removed)
        self.images.update_images(list(diff.added) + list(diff.changed))

    def containers_changed(self, containers: list[Container]) -> None:
        self.images.set_containers(containers)

    def selected_rows(self) -> list[ImageRow]:
        return [r for r in self.selected() if isinstance(r, ImageRow)]

    def select_reference(self, reference: str) -> bool:
        for key in self.images.row_keys():
            row = self.images.item(key)
            if row is not None and row.reference == reference:
                return self.select_key(key)
        return False

    # ---- actions -------------------------------------------------------------------------
    def _keep(self, dialog: QWidget) -> QWidget:
        # Parented to the page and deleted on close: nothing to track here.
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        return dialog

    def open_pull(self, reference: str = "") -> PullDialog:
        dialog = PullDialog(self.client, reference, self)
        dialog.pulled.connect(lambda ref: self.notify("Image pulled", f"Pulled {ref}."))
        self._keep(dialog)
        dialog.open()
        return dialog

    def open_build(self) -> BuildDialog:
        dialog = BuildDialog(self.client, self)
        dialog.built.connect(
            lambda image_id, tag: self.notify("Image built", f"Built {tag or image_id[:19]}.")
        )
        self._keep(dialog)
        dialog.open()
        return dialog

    def run_selected(self) -> None:
        rows = self.selected_rows()
        if not rows:
            return
        row = rows[0]
        image = row.reference or row.image.id
        request_run = getattr(self.ctx, "request_run", None)
        if callable(request_run):
            request_run(image)  # the window opens its Run dialog, prefilled
            return
        from app.dialogs.run import RunDialog

        self._keep(RunDialog(self.ctx, image=image, parent=self)).show()

    def tag_selected(self) -> TagDialog | None:
        rows = self.selected_rows()
        if not rows or self.client is None:
            return None
        dialog = TagDialog(self.client, rows[0].image.id, rows[0].reference, self)
        dialog.tagged.connect(lambda ref: self.say(f"Tagged {ref}."))
        self._keep(dialog)
        dialog.open()
        return dialog

    def history_selected(self) -> HistoryDialog | None:
        rows = self.selected_rows()
        if not rows or self.client is None:
            return None
        row = rows[0]
        dialog = HistoryDialog(self.client, row.image.id, row.reference or row.image.short_id,
                               self)
        self._keep(dialog)
        dialog.show()
        return dialog

    def remove_selected(self) -> None:
        rows = self.selected_rows()
        client = self.client
        if not rows or client is None:
            return
        names = [r.reference or r.image.short_id for r in rows]
        users = sorted({u for r in rows for u in self.images.users_of(r.image.id)})
        text = "Remove " + ", ".join(names) + "?"
        if users:
            shown = ", ".join(users[:MAX_NAMES])
            if len(users) > MAX_NAMES:
                shown += f" and {len(users) - MAX_NAMES} more"
            text += (
                "\n\nIn use by containers: " + shown + ".\nThe removal will be "
                "forced: Docker keeps the layers those containers need, Podman removes the "
                "containers too. A running container still blocks the removal on Docker."
            )
        # A tagged row removes that tag (the image goes with its last tag); an untagged
        # one removes the image by id. In-use images need force: the user was told above.
        targets = [(r.reference or r.image.id, bool(self.images.users_of(r.image.id)))
                   for r in rows]

        def remove() -> list[str]:
            failures = []
            for ref, in_use in targets:
                try:
                    client.remove_image(ref, force=in_use)
                except Exception as err:  # noqa: BLE001 - reported per image below
                    failures.append(user_message(err))
            return failures

        def done(failures: list[str]) -> None:
            if failures:
                show_error(self, "Remove image", "\n".join(failures))
                self.say("Some images were not removed.")
            else:
                self.say(f"Removed {', '.join(names)}.")

        self.confirm("Remove images", text, "Remove",
                     lambda: self.run_op("Removing images", remove, done=done))

    def export_dialog(self) -> None:
        rows = self.selected_rows()
        if not rows:
            return
        suggested = (rows[0].reference or rows[0].image.short_id).replace("/", "_")
        dest, _ = QFileDialog.getSaveFileName(self, "Export image", f"{suggested}.tar",
                                              "Tar archives (*.tar)")
        if dest:
            self.export_to(rows[0], Path(dest))

    def export_to(self, row: ImageRow, dest: Path) -> TaskRow | None:
        """Save the image to ``dest`` (docker save), atomically and cancellably."""
        client = self.client
        if client is None:
            return None
        ref = row.reference or row.image.id
        return self.run_task(
            f"Exporting {ref} to {dest.name}",
            lambda cancelled, progress: client.export_image(ref, dest, cancelled, progress),
            total=row.image.size,
            on_success=lambda n: self.notify("Image exported",
                                             f"Saved {ref} to {dest} ({human_size(n)})."),
            failure_title="Export image",
        )

    def load_dialog(self) -> None:
        src, _ = QFileDialog.getOpenFileName(self, "Load images", "",
                                             "Tar archives (*.tar *.tar.gz);;All files (*)")
        if src:
            self.load_from(Path(src))

    def load_from(self, src: Path) -> TaskRow | None:
        client = self.client
        if client is None:
            return None
        return self.run_task(
            f"Loading {src.name}",
            lambda _cancelled, _progress: client.load_image(src),
            cancellable=False,  # one upload request; the client offers no way to stop it
            on_success=lambda names: self.notify(
                "Images loaded", f"Loaded {', '.join(names) or 'the archive'}."),
            failure_title="Load images",
        )

    def import_dialog(self) -> None:
        src, _ = QFileDialog.getOpenFileName(self, "Import a root filesystem", "",
                                             "Tar archives (*.tar *.tar.gz *.tgz);;All files (*)")
        if not src:
            return
        ref, ok = QInputDialog.getText(self, "Import a root filesystem",
                                       "Name the new image (repository[:tag]):")
        if ok:
            self.import_from(Path(src), ref.strip())

    def import_from(self, src: Path, reference: str) -> TaskRow | None:
        client = self.client
        if client is None:
            return None
        return self.run_task(
            f"Importing {src.name}",
            lambda _cancelled, _progress: client.import_image(src, reference),
            cancellable=False,  # one upload request; the client offers no way to stop it
            on_success=lambda ident: self.notify(
                "Image imported", f"Imported {src.name} as {reference or ident}."),
            failure_title="Import image",
        )

    def prune(self, dangling_only: bool) -> None:
        client = self.client
        if client is None:
            return
        what = "images without a tag" if dangling_only else "every image no container uses"
        self.confirm(
            "Prune images", f"Remove {what}? This cannot be undone.", "Prune",
            lambda: self.run_task(
                "Pruning images",
                lambda _c, _p: client.prune_images(dangling_only=dangling_only),
                cancellable=False,  # the engine prunes in one request
                on_success=lambda r: self.notify("Images pruned", prune_text("images", r)),
                failure_title="Prune images",
            ),
        )


register_page("images", "Images", ImagesPage, icon="")
