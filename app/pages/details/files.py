"""The Files tab: browse a container's filesystem, download and upload files.

Listing, download and upload go through the engine's archive API, which works on stopped
containers too. Downloads are untrusted tar streams written by whatever runs in the
container, so they are extracted with tarfile's ``data`` filter plus our own checks:
absolute names and ``..`` components refuse the whole archive; links pointing outside the
download are skipped (and reported). Extraction goes into a hidden temporary folder next
to the destination and is moved into place only when complete, so a cancelled or failed
download leaves nothing half-written behind.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QProgressBar,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, call_in_gui, user_message
from app.pages.details._base import DetailsTab, human_bytes, plain_label
from vm_backend.engine.client import EngineClient
from vm_backend.errors import BerthError

#: Uploads up to this size are built in memory; larger ones spill to a temporary file.
UPLOAD_SPOOL = 32 << 20
#: Progress reaches the GUI at most this often.
PROGRESS_INTERVAL = 0.1

#: Sort and identity data on the name item.
PATH_ROLE = Qt.ItemDataRole.UserRole + 1
IS_DIR_ROLE = Qt.ItemDataRole.UserRole + 2
SORT_ROLE = Qt.ItemDataRole.UserRole + 3

_TYPE_BITS = {
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


class UnsafeArchive(BerthError):
    """A downloaded archive tried to write outside the folder chosen for it."""


class TransferCancelled(BerthError):
    """The user cancelled a download or upload."""


@dataclass(frozen=True)
class Entry:
    """One directory entry as the Files tab shows it."""

    name: str
    path: str
    size: int
    mode: str
    mtime: float
    is_dir: bool
    link_target: str = ""

    @classmethod
    def from_tarinfo(cls, directory: str, member: tarfile.TarInfo) -> Entry:
        name = posixpath.basename(member.name.rstrip("/"))
        bits = _TYPE_BITS.get(member.type, stat.S_IFREG)
        link = member.linkname if member.issym() else ""
        if member.islnk():
            # Hard links name their target relative to the archive root (its parent dir).
            link = "hard link to " + posixpath.basename(member.linkname)
        return cls(
            name=name,
            path=posixpath.join(directory, name),
            size=member.size,
            mode=stat.filemode(bits | member.mode),
            mtime=float(member.mtime),
            is_dir=member.isdir(),
            link_target=link,
        )


@dataclass
class DownloadResult:
    """What a finished download produced."""

    paths: list[Path] = field(default_factory=list)
    skipped_links: list[str] = field(default_factory=list)
    bytes: int = 0


class ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks that counts bytes and honours cancel."""

    def __init__(
        self,
        chunks: Iterator[bytes],
        cancelled: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._chunks = chunks
        self._buf = b""
        self._cancelled = cancelled
        self._progress = progress
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            if self._cancelled is not None and self._cancelled.is_set():
                raise TransferCancelled("Download cancelled.", "Nothing was written.")
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
            self.total += len(self._buf)
            if self._progress is not None:
                self._progress(self.total)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or PureWindowsPath(name).is_absolute()


def make_filter(skipped: list[str]) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """tarfile's ``data`` filter, stricter about names and lenient about stray links.

    A member with an absolute name or a ``..`` component is an attack (the engine never
    produces one), so the whole download is refused. A symlink pointing outside the
    download (an absolute ``/bin/busybox`` is common in images) is skipped and named in
    ``skipped``; extracting it would leave a link into the user's own filesystem.
    """

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        name = member.name
        if _is_absolute(name) or ".." in PurePosixPath(name.replace("\\", "/")).parts:
            raise UnsafeArchive(
                f"Refused the download: the archive entry {name!r} points outside the "
                "destination folder.",
                "The container's files may have been tampered with; nothing was written.",
            )
        try:
            return tarfile.data_filter(member, dest)
        except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
            skipped.append(name)
            return None
        except tarfile.FilterError as err:
            raise UnsafeArchive(
                f"Refused the download: {err}.",
                "The container's files may have been tampered with; nothing was written.",
            ) from err

    return check


def _free_name(dest: Path, name: str) -> Path:
    """``dest/name``, or ``dest/name (2)`` and so on if taken: never overwrite."""
    target = dest / name
    stem, dot, ext = name.partition(".") if not name.startswith(".") else (name, "", "")
    n = 2
    while target.exists() or target.is_symlink():
        target = dest / f"{stem} ({n}){dot}{ext}"
        n += 1
    return target


def extract_archive(
    chunks: Iterator[bytes],
    dest: Path,
    cancelled: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Extract a tar stream into ``dest`` safely and atomically (see the module doc)."""
    dest = Path(dest)
    if not dest.is_dir():
        raise BerthError(f"{dest} is not a folder.", "Choose an existing folder.")
    result = DownloadResult()
    staging = Path(tempfile.mkdtemp(prefix=".berth-download-", dir=dest))
    try:
        reader = ChunkReader(chunks, cancelled, progress)
        buffered = io.BufferedReader(reader, buffer_size=1 << 16)
        with tarfile.open(fileobj=buffered, mode="r|") as tar:
            tar.extractall(staging, filter=make_filter(result.skipped_links))
        result.bytes = reader.total
        if cancelled is not None and cancelled.is_set():
            raise TransferCancelled("Download cancelled.", "Nothing was written.")
        for child in sorted(staging.iterdir()):
            target = _free_name(dest, child.name)
            os.replace(child, target)
            result.paths.append(target)
    except tarfile.TarError as err:
        raise BerthError(
            f"The download is not a readable archive: {err}.", "Retry; the engine may have failed."
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def build_upload(paths: Sequence[Path]) -> IO[bytes]:
    """A tar of local files/folders (by their base names), owned by root in the container."""

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        # Host uids mean nothing inside the container; docker cp does the same.
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    spool = tempfile.SpooledTemporaryFile(max_size=UPLOAD_SPOOL)  # noqa: SIM115 - returned
    with tarfile.open(fileobj=spool, mode="w") as tar:
        for path in paths:
            tar.add(str(path), arcname=path.name, filter=as_root)
    spool.seek(0)
    return spool


def list_directory(
    client: EngineClient, container_id: str, path: str, cancelled: threading.Event | None = None
) -> list[tarfile.TarInfo]:
    """The direct children of ``path``, read through the archive API (blocking).

    Written here rather than calling ``EngineClient.list_dir`` because engines name the
    members of an archive of ``/`` with a leading slash and an empty root entry, which
    that helper does not handle. A listing cancelled by navigating elsewhere stops
    reading the (possibly large) archive early.
    """
    chunks, _stat = client.get_archive(container_id, path)
    entries: list[tarfile.TarInfo] = []
    try:
        reader = io.BufferedReader(ChunkReader(chunks, cancelled), buffer_size=1 << 16)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            root: str | None = None
            for member in tar:
                name = member.name.lstrip("/").rstrip("/")
                name = "" if name == "." else name.removeprefix("./")
                if root is None:
                    root = name
                    continue
                rel = name[len(root) + 1 :] if root else name
                if rel and "/" not in rel:
                    entries.append(member)
    except tarfile.TarError as err:
        raise BerthError(f"Cannot read the listing of {path}: {err}.", "Retry.") from err
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return entries


def _offset(report: Callable[[int], None], base: int) -> Callable[[int], None]:
    """Progress of one archive reported as a running total over several."""
    return lambda n: report(base + n)


class FilesTab(DetailsTab):
    """A folder listing with a path bar, up, download and upload."""

    title = "Files"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path = "/"
        self._loaded = False
        self._cancel: threading.Event | None = None
        self._listing: threading.Event | None = None
        self._expected = 0  # bytes the running download should bring, 0: unknown
        self.entries: list[Entry] = []
        self.last_download: DownloadResult | None = None
        self.last_error: BaseException | None = None

        self.up_button = QToolButton(self)
        self.up_button.setText(self.tr("Up"))
        self.up_button.setToolTip(self.tr("Go to the parent folder"))
        self.path_edit = QLineEdit("/", self)
        self.path_edit.setToolTip(self.tr("Type a folder path and press Enter"))
        self.refresh_button = QToolButton(self)
        self.refresh_button.setText(self.tr("Refresh"))
        self.download_button = QToolButton(self)
        self.download_button.setText(self.tr("Download…"))
        self.download_button.setToolTip(
            self.tr("Copy the selected files or folders to this computer")
        )
        self.download_button.setEnabled(False)
        self.upload_button = QToolButton(self)
        self.upload_button.setText(self.tr("Upload files…"))
        self.upload_button.setToolTip(self.tr("Copy files into the folder shown"))
        self.upload_folder_button = QToolButton(self)
        self.upload_folder_button.setText(self.tr("Upload folder…"))

        self.model = QStandardItemModel(0, 5, self)
        self.model.setHorizontalHeaderLabels(
            [self.tr("Name"), self.tr("Size"), self.tr("Mode"), self.tr("Modified"),
             self.tr("Link target")]
        )
        self.model.setSortRole(SORT_ROLE)
        self.view = QTableView(self)
        self.view.setModel(self.model)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(0, Qt.SortOrder.AscendingOrder)  # Qt starts descending
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.view.setShowGrid(False)
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.view.setColumnWidth(0, 240)
        self.view.setColumnWidth(1, 90)
        self.view.setColumnWidth(2, 100)
        self.view.setColumnWidth(3, 150)

        self.progress = QProgressBar(self)
        self.progress.setVisible(False)
        self.cancel_button = QToolButton(self)
        self.cancel_button.setText(self.tr("Cancel"))
        self.cancel_button.setVisible(False)
        self.status = plain_label("", self)

        bar = QHBoxLayout()
        bar.addWidget(self.up_button)
        bar.addWidget(self.path_edit, 1)
        bar.addWidget(self.refresh_button)
        bar.addWidget(self.download_button)
        bar.addWidget(self.upload_button)
        bar.addWidget(self.upload_folder_button)
        foot = QHBoxLayout()
        foot.addWidget(self.status, 1)
        foot.addWidget(self.progress)
        foot.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)
        layout.addLayout(foot)

        self.up_button.clicked.connect(self.go_up)
        self.path_edit.returnPressed.connect(lambda: self.navigate(self.path_edit.text()))
        self.refresh_button.clicked.connect(lambda: self.navigate(self.path))
        self.view.doubleClicked.connect(self._double_clicked)
        self.view.selectionModel().selectionChanged.connect(self._selection_changed)
        self.download_button.clicked.connect(self._download_clicked)
        self.upload_button.clicked.connect(self._upload_files_clicked)
        self.upload_folder_button.clicked.connect(self._upload_folder_clicked)
        self.cancel_button.clicked.connect(self.cancel_transfer)

    # ---- lifecycle -------------------------------------------------------------------
    def reset(self) -> None:
        self._loaded = False
        self.path = "/"
        self.path_edit.setText("/")
        self.entries = []
        self.model.removeRows(0, self.model.rowCount())
        self.status.setText("")
        self._end_transfer()

    def activate(self) -> None:
        if not self._loaded:
            self.navigate(self.path)

    def stop(self) -> None:
        self.cancel_transfer()
        if self._listing is not None:
            self._listing.set()
            self._listing = None

    def release(self) -> None:
        for event in (self._cancel, self._listing):
            if event is not None:
                event.set()

    @property
    def busy(self) -> bool:
        return self._cancel is not None

    # ---- browsing --------------------------------------------------------------------
    def navigate(self, path: str, note: str = "") -> None:
        """List ``path`` (absolute, or relative to the folder shown); once listed, the
        status line shows ``note`` if given (e.g. what an upload did), else the count."""
        if self.client is None or not self.container_id:
            return
        target = posixpath.normpath(posixpath.join(self.path, path.strip() or "/"))
        target = "/" + target.lstrip("/")
        self._loaded = True
        self.status.setText(self.tr("Listing {0}…").format(target))
        generation = self.generation
        if self._listing is not None:
            self._listing.set()  # the previous listing is no longer wanted
        listing = self._listing = threading.Event()
        Op(list_directory, self.client, self.container_id, target, listing).success(
            lambda members: self._listed(generation, listing, target, members, note)
        ).failure(lambda err: self._list_failed(generation, listing, target, err)).run(self)

    def go_up(self) -> None:
        if self.path != "/":
            self.navigate(posixpath.dirname(self.path.rstrip("/")) or "/")

    def selected_entries(self) -> list[Entry]:
        rows = sorted({index.row() for index in self.view.selectionModel().selectedRows()})
        by_path = {e.path: e for e in self.entries}
        out = []
        for row in rows:
            path = self.model.item(row, 0).data(PATH_ROLE)
            if path in by_path:
                out.append(by_path[path])
        return out

    def select_name(self, name: str) -> bool:
        """Select the row called ``name`` (for keyboard-free use and tests)."""
        for row in range(self.model.rowCount()):
            if self.model.item(row, 0).text() == name:
                self.view.selectRow(row)
                self.view.scrollTo(self.model.index(row, 0))
                return True
        return False

    def _listed(
        self,
        generation: int,
        listing: threading.Event,
        path: str,
        members: list[tarfile.TarInfo],
        note: str = "",
    ) -> None:
        if not self.current(generation) or listing is not self._listing:
            return
        self._listing = None
        self.path = path
        self.path_edit.setText(path)
        self.entries = [Entry.from_tarinfo(path, m) for m in members]
        self.model.removeRows(0, self.model.rowCount())
        sorting = self.view.isSortingEnabled()
        self.view.setSortingEnabled(False)  # don't re-sort on every appended row
        for entry in self.entries:
            self.model.appendRow(self._row(entry))
        self.view.setSortingEnabled(sorting)
        self.model.sort(
            self.view.horizontalHeader().sortIndicatorSection(),
            self.view.horizontalHeader().sortIndicatorOrder(),
        )
        self.status.setText(
            note or self.tr("{0} items in {1}").format(len(self.entries), path)
        )
        self.up_button.setEnabled(path != "/")
        self._selection_changed()

    def _row(self, entry: Entry) -> list[QStandardItem]:
        kind = 0 if entry.is_dir else 1  # folders first whatever the column
        name = QStandardItem(entry.name + ("/" if entry.is_dir else ""))
        name.setData(entry.path, PATH_ROLE)
        name.setData(entry.is_dir, IS_DIR_ROLE)
        name.setData(f"{kind}{entry.name.lower()}", SORT_ROLE)
        sized = not entry.is_dir and not entry.link_target  # links have no size of their own
        size = QStandardItem(human_bytes(entry.size) if sized else "")
        size.setData(entry.size if not entry.is_dir else -1, SORT_ROLE)
        size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        mode = QStandardItem(entry.mode)
        mode.setData(entry.mode, SORT_ROLE)
        when = datetime.fromtimestamp(entry.mtime).strftime("%Y-%m-%d %H:%M") if entry.mtime else ""
        mtime = QStandardItem(when)
        mtime.setData(entry.mtime, SORT_ROLE)
        link = QStandardItem(entry.link_target)
        link.setData(entry.link_target, SORT_ROLE)
        return [name, size, mode, mtime, link]

    def _list_failed(
        self, generation: int, listing: threading.Event, path: str, err: BaseException
    ) -> None:
        if not self.current(generation) or listing is not self._listing:
            return
        self._listing = None
        self.status.setText(self.tr("Cannot list {0}: {1}").format(path, user_message(err)))
        self.path_edit.setText(self.path)

    def _double_clicked(self, index: QModelIndex) -> None:
        item = self.model.item(index.row(), 0)
        path = str(item.data(PATH_ROLE))
        entry = next((e for e in self.entries if e.path == path), None)
        if entry is None:
            return
        if entry.is_dir:
            self.navigate(entry.path)
        elif entry.link_target and not entry.link_target.startswith("hard link"):
            # Follow a symlink as a folder; if it is a file the listing error says so.
            self.navigate(posixpath.join(self.path, entry.link_target))

    def _selection_changed(self, *_args: object) -> None:
        self.download_button.setEnabled(bool(self.selected_entries()) and not self.busy)

    # ---- transfers -------------------------------------------------------------------
    def download(self, paths: Sequence[str], dest: Path, expected: int = 0) -> None:
        """Copy container ``paths`` into the local folder ``dest`` in the background;
        ``expected`` (bytes, 0: unknown) makes the progress bar show a fraction."""
        if self.client is None or not paths or self.busy:
            return
        cancel = self._begin_transfer(self.tr("Downloading…"))
        self._expected = expected
        if expected:
            # QProgressBar counts in int: KiB keeps files up to terabytes in range.
            self.progress.setRange(0, max(1, expected >> 10))
            self.progress.setValue(0)
            self.progress.setFormat("%p%")
        client, cid, generation = self.client, self.container_id, self.generation
        report = self._progress_reporter(generation)

        def work() -> DownloadResult:
            total = DownloadResult()
            for path in paths:
                chunks, _stat = client.get_archive(cid, path)
                one = extract_archive(chunks, dest, cancel, _offset(report, total.bytes))
                total.paths += one.paths
                total.skipped_links += one.skipped_links
                total.bytes += one.bytes
            return total

        Op(work).success(lambda r: self._downloaded(generation, r)).failure(
            lambda err: self._transfer_failed(generation, err)
        ).run(self)

    def upload(self, local_paths: Sequence[Path]) -> None:
        """Copy local files/folders into the folder shown, in the background."""
        if self.client is None or not local_paths or self.busy:
            return
        # The engine extracts an upload as it arrives, so once sending starts it is not
        # cancellable without leaving part of it behind: no Cancel button for uploads.
        self._begin_transfer(self.tr("Uploading…"), cancellable=False)
        client, cid, generation, folder = (
            self.client, self.container_id, self.generation, self.path
        )

        def work() -> int:
            archive = build_upload(local_paths)
            try:
                size = archive.seek(0, io.SEEK_END)
                archive.seek(0)
                client.put_archive(cid, folder, archive)
                return size
            finally:
                archive.close()

        names = ", ".join(p.name for p in local_paths)
        Op(work).success(lambda size: self._uploaded(generation, names, folder, size)).failure(
            lambda err: self._transfer_failed(generation, err)
        ).run(self)

    def cancel_transfer(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def _begin_transfer(self, text: str, cancellable: bool = True) -> threading.Event:
        self._cancel = threading.Event()
        self.progress.setRange(0, 0)  # busy until bytes arrive
        self.progress.setFormat("%v")
        self.progress.setVisible(True)
        self.cancel_button.setVisible(cancellable)
        self.status.setText(text)
        self._selection_changed()
        for button in (self.upload_button, self.upload_folder_button):
            button.setEnabled(False)
        return self._cancel

    def _end_transfer(self) -> None:
        self._cancel = None
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        for button in (self.upload_button, self.upload_folder_button):
            button.setEnabled(True)
        self._selection_changed()

    def _progress_reporter(self, generation: int) -> Callable[[int], None]:
        last = [0.0]

        def report(done: int) -> None:
            now = time.monotonic()
            if now - last[0] < PROGRESS_INTERVAL:
                return
            last[0] = now
            call_in_gui(lambda: self._show_progress(generation, done))

        return report

    def _show_progress(self, generation: int, done: int) -> None:
        if not (self.current(generation) and self.busy):
            return
        if self._expected:
            # The tar framing adds a little to the files' own size.
            self.progress.setValue(min(done >> 10, self.progress.maximum()))
            self.status.setText(self.tr("Downloading… {0} of {1}").format(
                human_bytes(min(done, self._expected)), human_bytes(self._expected)
            ))
        else:
            self.status.setText(self.tr("Downloading… {0} received").format(human_bytes(done)))

    def _downloaded(self, generation: int, result: DownloadResult) -> None:
        if not self.current(generation):
            return
        self._end_transfer()
        names = ", ".join(str(p) for p in result.paths)
        text = self.tr("Downloaded {0} to {1}").format(human_bytes(result.bytes), names)
        if result.skipped_links:
            text += self.tr(" — skipped {0} link(s) pointing outside: {1}").format(
                len(result.skipped_links), ", ".join(result.skipped_links[:5])
            )
        self.status.setText(text)
        self.last_download = result

    def _uploaded(self, generation: int, names: str, folder: str, size: int) -> None:
        if not self.current(generation):
            return
        self._end_transfer()
        text = self.tr("Uploaded {0} ({1}) to {2}").format(names, human_bytes(size), folder)
        self.status.setText(text)
        if folder == self.path:
            self.navigate(self.path, note=text)

    def _transfer_failed(self, generation: int, err: BaseException) -> None:
        if not self.current(generation):
            return
        self._end_transfer()
        self.status.setText(user_message(err))
        self.last_error = err

    # ---- dialogs ---------------------------------------------------------------------
    def _download_clicked(self) -> None:
        entries = self.selected_entries()
        if not entries:
            return
        dest = QFileDialog.getExistingDirectory(
            self, self.tr("Download to folder"), str(Path.home())
        )
        if dest:
            # Sizes are known for plain files; a folder's size is its whole subtree.
            plain = all(not e.is_dir and not e.link_target for e in entries)
            expected = sum(e.size for e in entries) if plain else 0
            self.download([e.path for e in entries], Path(dest), expected)

    def _upload_files_clicked(self) -> None:
        files, _filter = QFileDialog.getOpenFileNames(
            self, self.tr("Upload files to {0}").format(self.path), str(Path.home())
        )
        if files:
            self.upload([Path(f) for f in files])

    def _upload_folder_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, self.tr("Upload a folder to {0}").format(self.path), str(Path.home())
        )
        if folder:
            self.upload([Path(folder)])
