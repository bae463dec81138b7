"""The containers table: a model keyed by id, its filter proxy, and live CPU/memory.

* :class:`ContainersModel` holds one row per container. It follows
  :class:`~app.session.EngineSession` diffs with row inserts, removes and ``dataChanged``
  over contiguous ranges, never a reset on an event (a reset loses selection and scroll).
  A reset happens only when the model is pointed at another session.
* :class:`ContainersProxy` sorts on raw values (``SORT_ROLE``) and filters by a search text
  and a state.
* :class:`StatsPool` keeps one engine stats stream per running container the user can see,
  each read on its own worker thread, and hands the latest samples to the GUI thread in one
  batch per ``FLUSH_MS``.

Everything shown is plain text: ``data()`` returns strings, and tooltips, which Qt would
render as rich text when they look like markup, are escaped first.
"""

from __future__ import annotations

import html
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from PySide6.QtCore import (
    QAbstractItemModel,
    QAbstractTableModel,
    QModelIndex,
    QModelRoleData,
    QModelRoleDataSpan,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QColor, QFont

from app.session import EngineSession
from vm_backend.engine.client import EngineClient
from vm_backend.engine.errors import EngineError
from vm_backend.engine.models import Container, ContainerState, Health, StatsSample
from vm_backend.engine.monitor import Diff
from vm_backend.engine.streams import Stream

log = logging.getLogger(__name__)

Index = QModelIndex | QPersistentModelIndex
RoleData = QModelRoleDataSpan | QModelRoleData


def _role_data(span: RoleData) -> Iterable[QModelRoleData]:
    """The entries of a multiData() span (the stubs do not say a span iterates)."""
    if isinstance(span, QModelRoleData):
        return (span,)
    return iter(span)  # type: ignore[call-overload,no-any-return]

SORT_ROLE = Qt.ItemDataRole.UserRole + 1  # raw value for sorting (numbers, times)
CONTAINER_ROLE = Qt.ItemDataRole.UserRole + 2  # the Container object
PORTS_ROLE = Qt.ItemDataRole.UserRole + 3  # list[int]: published host ports
BUSY_ROLE = Qt.ItemDataRole.UserRole + 4  # str: the action in progress, "" if none
PROJECT_ROLE = Qt.ItemDataRole.UserRole + 5  # str: compose project ("" if none)

COLUMNS = ("Name", "Project", "Image", "State", "Ports", "CPU %", "Memory", "Created")
(COL_NAME, COL_PROJECT, COL_IMAGE, COL_STATE, COL_PORTS, COL_CPU, COL_MEMORY, COL_CREATED) = range(
    len(COLUMNS)
)

_NCOLS = len(COLUMNS)

STATE_FILTERS: tuple[tuple[str, str], ...] = (
    ("all", "All states"),
    ("running", "Running"),
    ("stopped", "Stopped"),
    ("paused", "Paused"),
    ("created", "Created"),
    ("unhealthy", "Unhealthy"),
)
_STOPPED = {ContainerState.EXITED, ContainerState.DEAD}


def plain_tooltip(text: str) -> str:
    """A tooltip that shows ``text`` literally (Qt guesses rich text for tooltips)."""
    return f"<p style='white-space:pre-wrap'>{html.escape(text)}</p>" if text else ""


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def state_text(c: Container) -> str:
    text = c.state.value
    if c.health is not Health.NONE:
        text += f" ({c.health.value})"
    return text


def published_ports(c: Container) -> list[int]:
    seen: list[int] = []
    for p in c.ports:
        if p.host_port and p.host_port not in seen:
            seen.append(p.host_port)
    return seen


def ports_text(c: Container) -> str:
    # Docker lists a binding once per address family (0.0.0.0 and ::): show it once.
    out: list[str] = []
    for p in c.ports:
        text = str(p)
        if text not in out:
            out.append(text)
    return ", ".join(out)


def _changed_columns(old: Container, new: Container) -> set[int]:
    """The columns whose text can differ between two versions of a container."""
    cols = set()
    if old.name != new.name:
        cols.add(COL_NAME)
    if old.labels != new.labels:
        cols.add(COL_PROJECT)
    if old.image != new.image:
        cols.add(COL_IMAGE)
    if (old.state, old.health, old.status) != (new.state, new.health, new.status):
        # A container that stops also loses its CPU and memory figures.
        cols.update((COL_STATE, COL_CPU, COL_MEMORY))
    if old.ports != new.ports:
        cols.add(COL_PORTS)
    if old.created != new.created:
        cols.add(COL_CREATED)
    if not cols and old != new:
        cols.add(COL_NAME)  # something only the summary shows (command, networks)
    return cols


def _ranges(rows: Iterable[int]) -> list[tuple[int, int]]:
    """Contiguous (first, last) ranges of sorted, distinct rows."""
    out: list[tuple[int, int]] = []
    for row in sorted(set(rows)):
        if out and row == out[-1][1] + 1:
            out[-1] = (out[-1][0], row)
        else:
            out.append((row, row))
    return out


class ContainersModel(QAbstractTableModel):
    """Containers of one session, one row each, in the order they were first seen."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._ids: list[str] = []
        self._items: dict[str, Container] = {}
        self._rows: dict[str, int] = {}
        self._stats: dict[str, StatsSample] = {}
        self._busy: dict[str, str] = {}
        # What multiData() answered per row and (column, role), until the row changes:
        # a repaint asks seven roles of every cell on screen, and answering from here
        # costs a fraction of working each one out again (see multiData).
        self._cells: dict[str, dict[int, Any]] = {}
        self._running = 0  # how many rows are running (the page's count, kept as rows change)
        self._session: EngineSession | None = None
        self._muted = QColor(128, 128, 128)
        self._link = QColor(38, 110, 220)

    # ---- feeding --------------------------------------------------------------------------
    def set_session(self, session: EngineSession | None) -> None:
        """Follow ``session`` (or nothing). This is the one place the model resets."""
        if self._session is not None:
            try:
                self._session.diffs.disconnect(self.apply_diffs)
            except (RuntimeError, TypeError):
                pass  # already disconnected or the session object is gone
        self._session = session
        self.beginResetModel()
        self._ids, self._items, self._stats, self._busy = [], {}, {}, {}
        self._cells, self._running = {}, 0
        if session is not None:
            for c in session.snapshot("container"):
                self._ids.append(c.id)
                self._items[c.id] = c
                self._running += c.running
        self._reindex()
        self.endResetModel()
        if session is not None:
            session.diffs.connect(self.apply_diffs)

    def apply_diffs(self, diffs: Sequence[Diff[Any]]) -> None:
        """Apply a batch of monitor diffs (other kinds are ignored)."""
        added: dict[str, Container] = {}
        changed: dict[str, Container] = {}
        removed: set[str] = set()
        # Fold the batch first so a container created and destroyed within one batch
        # costs nothing, and each row gets at most one signal.
        for diff in diffs:
            if diff.kind != "container":
                continue
            for c in (*diff.added, *diff.changed):
                removed.discard(c.id)
                if c.id in self._items and c.id not in added:
                    changed[c.id] = c
                else:
                    added[c.id] = c
            for cid in diff.removed:
                added.pop(cid, None)
                changed.pop(cid, None)
                if cid in self._items:
                    removed.add(cid)
        self.remove_ids(removed)
        self.upsert(list(added.values()) + list(changed.values()))

    def upsert(self, containers: Sequence[Container]) -> None:
        """Insert new containers at the end and refresh known ones in place."""
        new = [c for c in containers if c.id not in self._items]
        known = [c for c in containers if c.id in self._items]
        changed_cols: set[int] = set()
        for c in known:
            old = self._items[c.id]
            changed_cols |= _changed_columns(old, c)
            self._running += c.running - old.running
            self._items[c.id] = c
            self._cells.pop(c.id, None)
            if not c.running:
                self._stats.pop(c.id, None)
        if changed_cols:
            # Only the columns that changed: a state change must not make the proxy
            # re-sort rows when the table is sorted by another column (500 rows at once).
            self._emit_changed(
                (self._rows[c.id] for c in known), min(changed_cols), max(changed_cols)
            )
        if new:
            first = len(self._ids)
            self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
            for c in new:
                self._rows[c.id] = len(self._ids)
                self._ids.append(c.id)
                self._items[c.id] = c
                self._running += c.running
            self.endInsertRows()

    def remove_ids(self, ids: Iterable[str]) -> None:
        rows = [self._rows[i] for i in ids if i in self._rows]
        if not rows:
            return
        # Back to front, so earlier ranges keep their row numbers.
        for first, last in reversed(_ranges(rows)):
            self.beginRemoveRows(QModelIndex(), first, last)
            for cid in self._ids[first : last + 1]:
                gone = self._items.pop(cid, None)
                self._running -= gone is not None and gone.running
                self._stats.pop(cid, None)
                self._busy.pop(cid, None)
                self._cells.pop(cid, None)
            del self._ids[first : last + 1]
            self.endRemoveRows()
        self._reindex()

    def set_stats(self, samples: dict[str, StatsSample]) -> None:
        rows = []
        for cid, sample in samples.items():
            if cid not in self._rows:
                continue
            old = self._stats.get(cid)
            self._stats[cid] = sample
            self._cells.pop(cid, None)
            # An idle container's figures rarely change as shown: repaint only when
            # the text (or the sort value) would differ.
            if old is None or (
                f"{old.cpu_percent:.1f}" != f"{sample.cpu_percent:.1f}"
                or old.mem_usage != sample.mem_usage
                or old.mem_limit != sample.mem_limit
            ):
                rows.append(self._rows[cid])
        for first, last in _ranges(rows):
            self.dataChanged.emit(self.index(first, COL_CPU), self.index(last, COL_MEMORY))

    def set_busy(self, cid: str, text: str) -> None:
        """Mark a row busy with an action (``""`` clears it)."""
        if text:
            self._busy[cid] = text
        else:
            self._busy.pop(cid, None)
        self._cells.pop(cid, None)
        if cid in self._rows:
            self._emit_changed([self._rows[cid]])

    def _emit_changed(
        self, rows: Iterable[int], first_col: int = 0, last_col: int = len(COLUMNS) - 1
    ) -> None:
        for first, last in _ranges(rows):
            self.dataChanged.emit(self.index(first, first_col), self.index(last, last_col))

    def _reindex(self) -> None:
        self._rows = {cid: row for row, cid in enumerate(self._ids)}

    # ---- lookup -----------------------------------------------------------------------------
    def container(self, cid: str) -> Container | None:
        return self._items.get(cid)

    def containers(self) -> list[Container]:
        return [self._items[i] for i in self._ids]

    def running_count(self) -> int:
        """How many rows are running (kept as rows change: no walk over the rows)."""
        return self._running

    def container_at_row(self, row: int) -> Container | None:
        if 0 <= row < len(self._ids):
            return self._items.get(self._ids[row])
        return None

    def row_of(self, cid: str) -> int:
        return self._rows.get(cid, -1)

    def stats(self, cid: str) -> StatsSample | None:
        return self._stats.get(cid)

    def busy(self, cid: str) -> str:
        return self._busy.get(cid, "")

    # ---- Qt model API -------------------------------------------------------------------------
    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._ids)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if (
            orientation == Qt.Orientation.Horizontal
            and role == Qt.ItemDataRole.DisplayRole
            and 0 <= section < len(COLUMNS)
        ):
            return COLUMNS[section]
        return None

    # No flags() here: QAbstractTableModel's own answers the same (enabled and selectable,
    # nothing for an invalid index) without a call into Python for every painted cell.

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        try:
            if not index.isValid() or index.parent().isValid():
                return None
            row, col = index.row(), index.column()
            if not (0 <= row < len(self._ids) and 0 <= col < len(COLUMNS)):
                return None
            c = self._items[self._ids[row]]
            return self._data(c, col, role)
        except Exception:  # a view must never see an exception
            log.exception("containers model data() failed")
            return None

    def multiData(self, index: Index, roleDataSpan: RoleData) -> None:
        """All the roles a delegate asks for, in one call (views ask seven per cell).

        Qt 6's item delegates fetch a cell's roles through ``multiData``; the default goes
        back to Python once per role, and each return into Python has to take the GIL,
        which other threads may hold: one call per cell instead of seven. The answers are
        kept per row until the row, its stats or its busy mark change, so repainting the
        rows on screen (every burst of changes repaints the viewport) mostly looks them up.
        """
        try:
            row, col = index.row(), index.column()
            cid = (
                self._ids[row]
                if index.isValid() and 0 <= row < len(self._ids) and 0 <= col < len(COLUMNS)
                else None
            )
            if cid is None:
                for role_data in _role_data(roleDataSpan):
                    role_data.setData(None)
                return
            cells = self._cells.get(cid)
            if cells is None:
                cells = self._cells[cid] = {}
            for role_data in _role_data(roleDataSpan):
                role = role_data.role()
                key = role * _NCOLS + col  # one key per (column, role), any role number
                if key in cells:
                    value = cells[key]
                else:
                    value = cells[key] = self._data(self._items[cid], col, role)
                role_data.setData(value)
        except Exception:  # a view must never see an exception
            log.exception("containers model multiData() failed")

    def _data(self, c: Container, col: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(c, col)
        if role == SORT_ROLE:
            return self._sort_value(c, col)
        if role == CONTAINER_ROLE:
            return c
        if role == PORTS_ROLE:
            return published_ports(c)
        if role == BUSY_ROLE:
            return self._busy.get(c.id, "")
        if role == PROJECT_ROLE:
            return c.compose_project
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(c, col)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (COL_CPU, COL_MEMORY):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole:
            if c.id in self._busy:
                return self._muted
            if col == COL_PORTS and published_ports(c):
                return self._link
            if col == COL_STATE and c.health is Health.UNHEALTHY:
                return QColor(200, 60, 50)
            return None
        if role == Qt.ItemDataRole.FontRole and col == COL_PORTS and published_ports(c):
            font = QFont()
            font.setUnderline(True)
            return font
        return None

    def _display(self, c: Container, col: int) -> str:
        if col == COL_NAME:
            return c.name
        if col == COL_PROJECT:
            return c.compose_project
        if col == COL_IMAGE:
            return c.image
        if col == COL_STATE:
            busy = self._busy.get(c.id)
            return f"{busy}…" if busy else state_text(c)
        if col == COL_PORTS:
            return ports_text(c)
        sample = self._stats.get(c.id) if c.running else None
        if col == COL_CPU:
            return f"{sample.cpu_percent:.1f}" if sample else ("…" if c.running else "")
        if col == COL_MEMORY:
            return human_bytes(sample.mem_usage) if sample else ""
        if col == COL_CREATED:
            if c.created <= 0:
                return ""
            return time.strftime("%Y-%m-%d %H:%M", time.localtime(c.created))
        return ""

    def _sort_value(self, c: Container, col: int) -> Any:
        sample = self._stats.get(c.id) if c.running else None
        if col == COL_CPU:
            return sample.cpu_percent if sample else -1.0
        if col == COL_MEMORY:
            return float(sample.mem_usage) if sample else -1.0
        if col == COL_CREATED:
            return float(c.created)
        if col == COL_PORTS:
            ports = published_ports(c)
            return float(ports[0]) if ports else 0.0
        return self._display(c, col).lower()

    def _tooltip(self, c: Container, col: int) -> str:
        if col == COL_STATE:
            return plain_tooltip(c.status or state_text(c))
        if col == COL_PORTS:
            ports = published_ports(c)
            if ports:
                return plain_tooltip(
                    "Click to open " + ", ".join(f"http://localhost:{p}" for p in ports)
                )
            return plain_tooltip(ports_text(c))
        if col == COL_MEMORY:
            sample = self._stats.get(c.id)
            if sample and sample.mem_limit:
                return plain_tooltip(
                    f"{human_bytes(sample.mem_usage)} of {human_bytes(sample.mem_limit)} "
                    f"({sample.mem_percent:.1f} %)"
                )
            return ""
        if col in (COL_NAME, COL_IMAGE, COL_PROJECT):
            text = self._display(c, col)
            return plain_tooltip(f"{text}\n{c.short_id}" if col == COL_NAME else text)
        return ""


class ContainersProxy(QSortFilterProxyModel):
    """Search (name, image, id, project, label keys and values) and a state filter."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._search = ""
        self._state = "all"
        self._containers: ContainersModel | None = None
        self.setSortRole(SORT_ROLE)
        self.setDynamicSortFilter(True)

    @property
    def search(self) -> str:
        return self._search

    @property
    def state_filter(self) -> str:
        return self._state

    def set_search(self, text: str) -> None:
        text = text.strip().lower()
        if text != self._search:
            self._begin_filter_change()
            self._search = text
            self._end_filter_change()

    def set_state_filter(self, state: str) -> None:
        if state not in dict(STATE_FILTERS):
            state = "all"
        if state != self._state:
            self._begin_filter_change()
            self._state = state
            self._end_filter_change()

    # Qt 6.10 replaced invalidateFilter() with a begin/end pair; keep older Qt working.
    def _begin_filter_change(self) -> None:
        if hasattr(self, "beginFilterChange"):
            self.beginFilterChange()

    def _end_filter_change(self) -> None:
        if hasattr(self, "endFilterChange"):
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self.invalidateFilter()

    def setSourceModel(self, model: QAbstractItemModel) -> None:
        super().setSourceModel(model)
        self._containers = model if isinstance(model, ContainersModel) else None

    def multiData(self, index: Index, roleDataSpan: RoleData) -> None:
        # QSortFilterProxyModel answers multiData with one data() call per role; hand the
        # whole span to the source model instead (see ContainersModel.multiData).
        model = self._containers
        if model is not None:
            model.multiData(self.mapToSource(index), roleDataSpan)
        else:
            super().multiData(index, roleDataSpan)

    # Both lookups go straight to the Python source model: a round trip through Qt's
    # data() would wrap and unwrap the Container in a QVariant for every row.
    def container_at(self, proxy_row: int) -> Container | None:
        model = self.sourceModel()
        if not isinstance(model, ContainersModel):
            return None
        source = self.mapToSource(self.index(proxy_row, 0))
        return model.container_at_row(source.row()) if source.isValid() else None

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        model = self.sourceModel()
        if not isinstance(model, ContainersModel) or source_parent.isValid():
            return False
        c = model.container_at_row(source_row)
        return c is not None and self.accepts(c)

    def accepts(self, c: Container) -> bool:
        """Whether the search and state filter show ``c``."""
        return self._state_matches(c) and self._search_matches(c)

    def _state_matches(self, c: Container) -> bool:
        wanted = self._state
        if wanted == "all":
            return True
        if wanted == "running":
            return c.running
        if wanted == "stopped":
            return c.state in _STOPPED
        if wanted == "paused":
            return c.state is ContainerState.PAUSED
        if wanted == "created":
            return c.state is ContainerState.CREATED
        if wanted == "unhealthy":
            return c.health is Health.UNHEALTHY
        return True

    def _search_matches(self, c: Container) -> bool:
        needle = self._search
        if not needle:
            return True
        haystack = [c.name, c.image, c.id, c.compose_project]
        for key, value in c.labels.items():
            haystack.append(key)
            haystack.append(value)
        return any(needle in h.lower() for h in haystack)


class _Reader(threading.Thread):
    """Reads one container's stats stream until stopped or the stream ends."""

    def __init__(self, pool: StatsPool, cid: str) -> None:
        super().__init__(name=f"berth-stats-{cid[:12]}", daemon=True)
        self.pool = pool
        self.cid = cid
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._stream: Stream[StatsSample] | None = None

    def run(self) -> None:
        try:
            client = self.pool.client()
            stream = client.stats(self.cid)
        except EngineError as err:
            log.debug("stats for %s unavailable: %s", self.cid[:12], err)
            self.pool.reader_ended(self)
            return
        with self._lock:
            if self._stopped.is_set():
                stream.close()
                self.pool.reader_ended(self)
                return
            self._stream = stream
        try:
            for sample in stream:
                if self._stopped.is_set():
                    break
                self.pool.push(sample)
        except Exception as err:  # noqa: BLE001 - a broken stream only ends this reader
            log.debug("stats stream of %s ended: %s", self.cid[:12], err)
        finally:
            stream.close()
            self.pool.reader_ended(self)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()  # shuts the socket down: the blocked read returns at once


class _Control:
    """One daemon thread that starts and stops stats readers, in order, off the GUI thread.

    ``Thread.start()`` waits until the new thread runs and closing a stream shuts a socket
    down: both took milliseconds each on a loaded machine, on the GUI thread, when a burst
    of container changes moved the streams around.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="berth-stats-control", daemon=True
                )
                self._thread.start()
        self._queue.put(fn)

    def _loop(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                fn()
            except Exception:  # one failed start or stop must not end the loop
                log.exception("stats stream control failed")


_control = _Control()


def _stop_and_start(stale: Sequence[_Reader], fresh: Sequence[_Reader]) -> None:
    for r in stale:
        r.stop()
    for r in fresh:
        if not r.stopped:
            r.start()


class StatsPool(QObject):
    """Live stats for a bounded set of containers, batched to the GUI thread.

    The caller says which containers it wants (most wanted first) with
    :meth:`set_targets`; at most ``max_streams`` streams run at once. The pool uses its
    own engine client, built on the first reader thread, so its long-lived streams do not
    occupy the session client's connection pool.
    """

    samples = Signal(dict)  # {container id: StatsSample}

    MAX_STREAMS = 10  # docker-py's per-host connection pool size
    FLUSH_MS = 1000  # the engine samples once a second; more often only repaints more

    def __init__(self, url: str, parent: QObject | None = None, max_streams: int = MAX_STREAMS):
        super().__init__(parent)
        self.url = url
        self.max_streams = max_streams
        self._client: EngineClient | None = None
        self._client_lock = threading.Lock()
        self._lock = threading.Lock()
        self._readers: dict[str, _Reader] = {}
        self._pending: dict[str, StatsSample] = {}
        self._timer = QTimer(self)
        self._timer.setInterval(self.FLUSH_MS)
        self._timer.timeout.connect(self._flush)
        readers, lock = self._readers, self._lock

        def abandon(*_args: object) -> None:
            # The pool's QObject is going away (its page was deleted without being hidden):
            # end the streams with plain Python only, as the Qt side is already gone.
            with lock:
                stale = list(readers.values())
                readers.clear()
            for reader in stale:
                reader.stop()

        self.destroyed.connect(abandon)

    def client(self) -> EngineClient:
        """The pool's client (worker threads only: creating it contacts the engine)."""
        with self._client_lock:
            if self._client is None:
                self._client = EngineClient(self.url)
            return self._client

    @property
    def active(self) -> list[str]:
        with self._lock:
            return list(self._readers)

    def set_targets(self, ids: Sequence[str]) -> None:
        """Stream stats for the first ``max_streams`` of ``ids``; stop all others."""
        wanted = list(dict.fromkeys(ids))[: self.max_streams]
        with self._lock:
            stale = [r for cid, r in self._readers.items() if cid not in wanted]
            for r in stale:
                del self._readers[r.cid]
            fresh = [_Reader(self, cid) for cid in wanted if cid not in self._readers]
            for r in fresh:
                self._readers[r.cid] = r
            running = bool(self._readers)
        if stale or fresh:
            _control.submit(lambda: _stop_and_start(stale, fresh))
        if running and not self._timer.isActive():
            self._timer.start()
        elif not running:
            self._timer.stop()

    def stop(self) -> None:
        self.set_targets([])

    def close(self) -> None:
        """Stop every stream; the client is closed off the GUI thread by the caller's Op."""
        self.stop()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            threading.Thread(target=client.close, daemon=True).start()

    # ---- reader threads ---------------------------------------------------------------------
    def push(self, sample: StatsSample) -> None:
        with self._lock:
            self._pending[sample.container_id] = sample

    def reader_ended(self, reader: _Reader) -> None:
        with self._lock:
            if self._readers.get(reader.cid) is reader:
                del self._readers[reader.cid]

    # ---- GUI thread ---------------------------------------------------------------------------
    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            running = bool(self._readers)
        if pending:
            self.samples.emit(pending)
        if not running:
            self._timer.stop()
