"""Background work whose result comes back to the GUI thread through one signal.

``Op(fn, *args).success(cb).failure(cb).run(parent)`` runs ``fn`` on a worker thread and
calls ``cb`` on the GUI thread. Failures arrive as exceptions; ``BerthError`` carries a
message and a hint fit for the user. Nothing here blocks the GUI thread. Callbacks whose
``parent`` QObject was deleted meanwhile are dropped.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import shiboken6
from PySide6.QtCore import QCoreApplication, QObject, Qt, Signal, Slot

from vm_backend.errors import BerthError

log = logging.getLogger(__name__)

_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="berth-op")


class _Relay(QObject):
    """Lives on the GUI thread; runs the thunks emitted from any thread there."""

    done = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        app = QCoreApplication.instance()
        if app is not None and self.thread() is not app.thread():
            # First used from a worker: hand the object to the GUI thread, or the queued
            # calls below would run on that worker (or never).
            self.moveToThread(app.thread())
        self.done.connect(self._run, Qt.ConnectionType.QueuedConnection)

    @Slot(object)
    def _run(self, thunk: Callable[[], None]) -> None:
        thunk()


_relay: _Relay | None = None
_relay_lock = threading.Lock()


def _get_relay() -> _Relay:
    global _relay
    with _relay_lock:
        if _relay is None:
            _relay = _Relay()
        return _relay


def call_in_gui(fn: Callable[[], None]) -> None:
    """Run ``fn`` on the GUI thread (safe to call from any thread)."""
    _get_relay().done.emit(fn)


def user_message(err: BaseException) -> str:
    """Plain words for an error, without a traceback."""
    if isinstance(err, BerthError):
        return str(err)
    return f"{type(err).__name__}: {err}"


class Op:
    """A fluent background operation."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._on_success: Callable[[Any], None] | None = None
        self._on_failure: Callable[[BaseException], None] | None = None
        self._on_finally: Callable[[], None] | None = None

    def success(self, cb: Callable[[Any], None]) -> Op:
        self._on_success = cb
        return self

    def failure(self, cb: Callable[[BaseException], None]) -> Op:
        self._on_failure = cb
        return self

    def finally_(self, cb: Callable[[], None]) -> Op:
        self._on_finally = cb
        return self

    def run(self, parent: QObject | None = None) -> None:
        relay = _get_relay()

        def alive() -> bool:
            return parent is None or shiboken6.isValid(parent)

        def work() -> None:
            try:
                result = self._fn(*self._args, **self._kwargs)
            except BaseException as err:  # noqa: BLE001 - delivered to the failure callback
                if not isinstance(err, BerthError):
                    log.debug("op failed: %s", "".join(traceback.format_exception(err)))
                error = err

                def fail() -> None:
                    if not alive():
                        return
                    try:
                        if self._on_failure is not None:
                            self._on_failure(error)
                        else:
                            log.warning("background operation failed: %s", user_message(error))
                    finally:
                        if self._on_finally is not None:
                            self._on_finally()

                relay.done.emit(fail)
                return

            def ok() -> None:
                if not alive():
                    return
                try:
                    if self._on_success is not None:
                        self._on_success(result)
                finally:
                    if self._on_finally is not None:
                        self._on_finally()

            relay.done.emit(ok)

        _POOL.submit(work)


def submit(fn: Callable[..., Any], *args: Any) -> None:
    """Fire-and-forget work on the pool (its own errors are logged)."""
    Op(fn, *args).run()
