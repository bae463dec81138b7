"""Live engine state: an event subscription that reconnects, plus list-and-diff reconciling.

Engine events are lossy: dockerd keeps only 256, gives each subscriber 100 ms per event
and forgets everything when it restarts. So the event stream is only a hint. The
:class:`EngineMonitor` keeps its own copy of containers, images, volumes and networks;
an event marks a kind (or one container) dirty and a worker re-lists it and diffs. After
every (re)connect and every ``reconcile_interval`` seconds it re-lists everything, so its
consumers always end equal to the engine's truth. Diffs that no event announced are
counted in ``reconciled_without_event``.

Three threads: a reader that only reads events (so we are never a slow subscriber: dockerd
skips a subscriber that takes more than 100 ms per event), a worker that lists, diffs and
calls ``on_diff``/``on_connection``, and a dispatcher that hands events to ``on_event``
from a bounded queue (a slow ``on_event`` delays only itself; overflow is counted in
``events_dropped``). A GUI bridges the callbacks to its own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from vm_backend.engine.client import EngineClient
from vm_backend.engine.errors import EngineError, NotFound
from vm_backend.engine.models import Container, Event, Image, Network, Volume
from vm_backend.engine.streams import Stream

log = logging.getLogger(__name__)

T = TypeVar("T")

KINDS = ("container", "image", "volume", "network")
MAX_PENDING_EVENTS = 10_000
# Event types whose actions change the listed state of that kind.
_STATE_ACTIONS = {
    "container": {
        "create",
        "start",
        "restart",
        "die",
        "stop",
        "kill",
        "pause",
        "unpause",
        "destroy",
        "rename",
        "update",
        "health_status",
        "oom",
        "remove",
        "cleanup",
        "init",
        "exited",
        "died",
        "mount",
        "unmount",
        "attach",
        "commit",
        "checkpoint",
        "sync",
    },
    "image": {
        "pull",
        "push",
        "tag",
        "untag",
        "delete",
        "import",
        "load",
        "save",
        "remove",
        "build",
        "prune",
    },
    "volume": {"create", "destroy", "remove", "mount", "unmount", "prune"},
    "network": {"create", "destroy", "remove", "connect", "disconnect", "prune"},
}


@dataclass(frozen=True)
class Diff(Generic[T]):
    kind: str
    added: tuple[T, ...] = ()
    changed: tuple[T, ...] = ()
    removed: tuple[str, ...] = ()
    full: bool = False  # produced by a full re-list (reconcile) rather than one event

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


class MonitorListener(Protocol):
    def on_connection(self, connected: bool, reason: str) -> None: ...

    def on_diff(self, diff: Diff[Any]) -> None: ...

    def on_event(self, event: Event) -> None: ...


@dataclass
class _Table(Generic[T]):
    key: Callable[[T], str]
    items: dict[str, T] = field(default_factory=dict)

    def replace_all(self, fresh: Iterable[T]) -> tuple[list[T], list[T], list[str]]:
        new = {self.key(i): i for i in fresh}
        added = [v for k, v in new.items() if k not in self.items]
        changed = [v for k, v in new.items() if k in self.items and self.items[k] != v]
        removed = [k for k in self.items if k not in new]
        self.items = new
        return added, changed, removed

    def replace_some(
        self, keys: set[str], fresh: Iterable[T]
    ) -> tuple[list[T], list[T], list[str]]:
        new = {self.key(i): i for i in fresh}
        added = [v for k, v in new.items() if k not in self.items]
        changed = [v for k, v in new.items() if k in self.items and self.items[k] != v]
        removed = [k for k in keys if k in self.items and k not in new]
        for k in removed:
            del self.items[k]
        self.items.update(new)
        return added, changed, removed


def _key_of(item: Hashable) -> str:
    if isinstance(item, Container | Image | Network):
        return item.id
    if isinstance(item, Volume):
        return item.name
    raise TypeError(type(item).__name__)


class EngineMonitor:
    """Keeps live tables of an engine's objects and reports diffs to a listener."""

    def __init__(
        self,
        client: EngineClient,
        listener: MonitorListener,
        *,
        kinds: Iterable[str] = KINDS,
        reconcile_interval: float = 30.0,
        retry_interval: float = 0.2,
        settle_delay: float = 0.25,
    ) -> None:
        self.client = client
        self.listener = listener
        self.kinds = tuple(k for k in KINDS if k in set(kinds))
        self.reconcile_interval = reconcile_interval
        self.retry_interval = retry_interval
        self.settle_delay = settle_delay
        self.tables: dict[str, _Table[Any]] = {k: _Table(_key_of) for k in self.kinds}
        self.connected = False
        self._reason = ""
        self.reconnects = 0
        self.reconciled_without_event = 0
        self.events_seen = 0
        self.events_dropped = 0  # events on_event never saw because it fell behind
        self._ever_connected = False
        self._events: deque[Event] = deque()
        self._events_cond = threading.Condition()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._dirty_kinds: set[str] = set()
        self._dirty_containers: set[str] = set()
        self._full_pending = False  # the reader asks for one on connect
        # dockerd publishes some events (pause, unpause...) before its list view has the new
        # state; what an event refreshed is listed once more after settle_delay.
        self._recheck_ids: set[str] = set()
        self._recheck_kinds: set[str] = set()
        self._recheck_due: float | None = None
        self._stream: Stream[Event] | None = None
        self._last_event_time: float | None = None
        self._reader = threading.Thread(target=self._read_loop, name="berth-events", daemon=True)
        self._worker = threading.Thread(target=self._work_loop, name="berth-sync", daemon=True)
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="berth-event-dispatch", daemon=True
        )

    # ---- public ---------------------------------------------------------------------------
    def start(self) -> None:
        self._reader.start()
        self._worker.start()
        self._dispatcher.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        with self._cond:
            self._cond.notify_all()
        with self._events_cond:
            self._events_cond.notify_all()
        for t in (self._reader, self._worker, self._dispatcher):
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout)

    def request_reconcile(self) -> None:
        """Ask for a full re-list soon (e.g. the user pressed Retry)."""
        with self._cond:
            self._full_pending = True
            self._cond.notify_all()

    def snapshot(self, kind: str) -> list[Any]:
        with self._cond:
            return list(self.tables[kind].items.values())

    # ---- reader ---------------------------------------------------------------------------
    def _read_loop(self) -> None:
        delay = self.retry_interval
        while not self._stop.is_set():
            try:
                # Podman keeps events across restarts; Docker only a 256-event ring. Either
                # way we re-list after subscribing, so `since` only narrows the gap.
                since = self._last_event_time
                self._stream = self.client.events(since=since)
            except EngineError as err:
                self._set_connected(False, err.message)
                self._stop.wait(delay)
                delay = min(delay * 2, 0.5)
                continue
            delay = self.retry_interval
            # (self.connected is already False after a drop, so it cannot tell us this.)
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self._set_connected(True, "")
            self.request_reconcile()
            try:
                for event in self._stream:
                    self._on_event(event)
            except Exception as err:  # noqa: BLE001 - any transport error means: reconnect
                log.debug("event stream ended: %s", err)
            if self._stop.is_set():
                return
            self._set_connected(False, "the event stream ended; reconnecting")
            self.request_reconcile()

    def _on_event(self, event: Event) -> None:
        self.events_seen += 1
        if event.time_nano:
            self._last_event_time = event.time_nano / 1e9
        if event.type in self.tables and event.action in _STATE_ACTIONS.get(event.type, ()):
            with self._cond:
                if event.type == "container" and event.id:
                    self._dirty_containers.add(event.id)
                else:
                    self._dirty_kinds.add(event.type)
                if event.type == "container" and event.action in ("destroy", "remove"):
                    # Volumes and images in use change with container removal.
                    self._dirty_kinds.update(k for k in ("image", "volume") if k in self.tables)
                self._cond.notify_all()
        with self._events_cond:
            if len(self._events) >= MAX_PENDING_EVENTS:
                self._events.popleft()
                self.events_dropped += 1
            self._events.append(event)
            self._events_cond.notify()

    def _dispatch_loop(self) -> None:
        while True:
            with self._events_cond:
                while not self._events and not self._stop.is_set():
                    self._events_cond.wait()
                if self._stop.is_set():
                    return
                event = self._events.popleft()
            try:
                self.listener.on_event(event)
            except Exception:
                log.exception("event listener failed")

    def _set_connected(self, connected: bool, reason: str) -> None:
        if connected == self.connected and reason == self._reason:
            return
        self.connected = connected
        self._reason = reason
        try:
            self.listener.on_connection(connected, reason)
        except Exception:
            log.exception("connection listener failed")

    # ---- worker ---------------------------------------------------------------------------
    def _work_loop(self) -> None:
        next_reconcile = time.monotonic() + self.reconcile_interval
        while not self._stop.is_set():
            rechecked_ids: set[str] = set()
            rechecked_kinds: set[str] = set()
            with self._cond:
                while not self._stop.is_set():
                    now = time.monotonic()
                    if self._recheck_due is not None and now >= self._recheck_due:
                        rechecked_ids, self._recheck_ids = self._recheck_ids, set()
                        rechecked_kinds, self._recheck_kinds = self._recheck_kinds, set()
                        self._recheck_due = None
                        self._dirty_containers |= rechecked_ids
                        self._dirty_kinds |= rechecked_kinds
                    if self._full_pending or self._dirty_kinds or self._dirty_containers:
                        break
                    if now >= next_reconcile:
                        self._full_pending = True
                        break
                    due = next_reconcile
                    if self._recheck_due is not None:
                        due = min(due, self._recheck_due)
                    self._cond.wait(due - now)
                if self._stop.is_set():
                    return
                full = self._full_pending
                kinds = set(self.kinds) if full else set(self._dirty_kinds)
                ids = set() if full else set(self._dirty_containers)
                self._full_pending = False
                self._dirty_kinds.clear()
                self._dirty_containers.clear()
            if len(ids) > 25:  # a burst: one list is cheaper than many filtered ones
                kinds.add("container")
                ids.clear()
            try:
                # Containers first: the window's first paint waits on them, not on images.
                for kind in sorted(kinds, key=KINDS.index):
                    self._refresh_kind(kind, full)
                if ids:
                    self._refresh_containers(ids)
            except EngineError as err:
                # The engine went away mid-refresh: the reader notices and reconnects; make
                # sure we re-list everything once it is back.
                log.debug("refresh failed: %s", err)
                with self._cond:
                    self._full_pending = True
                self._stop.wait(self.retry_interval)
                continue
            except Exception:
                # A bug or an engine reply we did not expect must not end the sync thread:
                # the window would freeze on stale rows. Log it and re-list later.
                log.exception("refresh failed unexpectedly")
                with self._cond:
                    self._full_pending = True
                self._stop.wait(self.retry_interval)
                continue
            if full:
                next_reconcile = time.monotonic() + self.reconcile_interval
            else:
                self._schedule_recheck(ids - rechecked_ids, kinds - rechecked_kinds)

    def _schedule_recheck(self, ids: set[str], kinds: set[str]) -> None:
        if not (ids or kinds) or self.settle_delay <= 0:
            return
        with self._cond:
            self._recheck_ids |= ids
            self._recheck_kinds |= kinds
            if self._recheck_due is None:
                self._recheck_due = time.monotonic() + self.settle_delay

    def _lister(self, kind: str) -> Callable[[], list[Any]]:
        listers: dict[str, Callable[[], list[Any]]] = {
            "container": lambda: self.client.containers(all=True),
            "image": self.client.images,
            "volume": self.client.volumes,
            "network": self.client.networks,
        }
        return listers[kind]

    def _refresh_kind(self, kind: str, full: bool) -> None:
        fresh = self._lister(kind)()
        with self._cond:
            added, changed, removed = self.tables[kind].replace_all(fresh)
        diff = Diff(kind, tuple(added), tuple(changed), tuple(removed), full=full)
        if diff and full and self.events_seen:
            self.reconciled_without_event += len(added) + len(changed) + len(removed)
        self._emit(diff, force=full)

    def _refresh_containers(self, ids: set[str]) -> None:
        # One request for all of them (the engine ORs repeated filters).
        try:
            found = self.client.containers(all=True, filters={"id": sorted(ids)})
        except NotFound:
            found = []
        # The id filter is a prefix match: keep the exact ones.
        fresh: list[Container] = [c for c in found if c.id in ids]
        with self._cond:
            added, changed, removed = self.tables["container"].replace_some(ids, fresh)
        self._emit(Diff("container", tuple(added), tuple(changed), tuple(removed)))

    def _emit(self, diff: Diff[Any], force: bool = False) -> None:
        if not diff and not force:
            return
        try:
            self.listener.on_diff(diff)
        except Exception:
            log.exception("diff listener failed")
