"""Move bytes between a blocking byte stream and a TerminalWidget, never on the GUI thread.

One pump serves one session of any stream with ``recv``/``send_all``/``resize``/``close``
(a container's exec TTY, the helper VM's serial console through berthd, an SSH shell).
Two threads, neither the GUI thread:

* the reader opens the stream (connecting can take seconds on a loaded machine), then
  reads; output is gathered in a buffer and handed to the GUI in one call for however
  many reads happened before the GUI got to it (batched, never one signal per read);
  when the view falls far behind (its unparsed backlog or our buffer past
  :data:`MAX_PENDING`), the reader waits rather than buffering without bound, so the
  remote program is slowed down instead of the window;
* the writer sends keystrokes and resizes in the order they were made (the Op pool
  would not keep the order, and a socket write must never block the GUI).

Callbacks run on the GUI thread, and only while the optional ``owner`` QObject lives.
Output that arrives after :meth:`StreamPump.close` is dropped.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Protocol

import shiboken6
from PySide6.QtCore import QObject, QTimer

from app.bridge import call_in_gui, user_message

#: Output buffered for the GUI beyond which the reader pauses (back-pressure).
MAX_PENDING = 1 << 20
#: How soon to offer output again to a view that is still parsing the last batch.
RETRY_MS = 20
READ_SIZE = 65536


class Stream(Protocol):
    """A connected byte stream a pump can drive."""

    def recv(self, size: int) -> bytes: ...

    def send_all(self, data: bytes) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...

    def close(self) -> None: ...


class StreamPump:
    """Opens a stream off the GUI thread and moves bytes between it and the GUI.

    ``on_end(reason)`` is called once when the stream ends by itself (EOF or a read
    error, ``reason`` then says why; "" for a clean end), never after :meth:`close`.
    Subclasses may override :meth:`at_eof`, which runs on the reader thread after a
    clean end, before ``on_end`` is scheduled (e.g. to ask for an exit code).
    """

    def __init__(
        self,
        opener: Callable[[], Stream],
        on_output: Callable[[bytes], None],
        on_end: Callable[[str], None],
        *,
        owner: QObject | None = None,
        on_open: Callable[[], None] = lambda: None,
        backlog: Callable[[], int] = lambda: 0,
        name: str = "stream",
    ) -> None:
        self._opener = opener
        self._owner = owner
        self._on_open = on_open
        self._on_output = on_output
        self._on_end = on_end
        self._backlog = backlog
        self._lock = threading.Lock()
        self._stream: Stream | None = None
        self._pending = bytearray()
        self._scheduled = False
        self._drained = threading.Event()
        self._drained.set()
        self._stopped = threading.Event()
        self._outbox: queue.SimpleQueue[bytes | tuple[int, int] | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read_loop, name=f"{name}-read", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"{name}-write", daemon=True)

    def start(self) -> None:
        self._reader.start()

    @property
    def closed(self) -> bool:
        return self._stopped.is_set()

    def write(self, data: bytes) -> None:
        if data and not self._stopped.is_set():
            self._outbox.put(data)

    def resize(self, cols: int, rows: int) -> None:
        if not self._stopped.is_set():
            self._outbox.put((cols, rows))

    def close(self) -> None:
        """Hang up from any thread: the reader wakes with EOF and the writer ends."""
        self._stopped.set()
        self._drained.set()
        self._outbox.put(None)
        with self._lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def at_eof(self) -> None:
        """Reader thread, after the stream ended by itself: a hook for subclasses."""

    # ---- worker threads --------------------------------------------------------------
    def _gui(self, fn: Callable[[], None]) -> None:
        owner = self._owner

        def guarded() -> None:
            if owner is None or shiboken6.isValid(owner):
                fn()

        # At interpreter exit the GUI relay may be gone before this daemon thread.
        with contextlib.suppress(RuntimeError):
            call_in_gui(guarded)

    def _read_loop(self) -> None:
        try:
            stream = self._opener()
        except Exception as err:  # noqa: BLE001 - shown to the user as the reason
            message = user_message(err)
            self._stopped.set()
            self._gui(lambda: self._on_end(message))
            return
        with self._lock:
            self._stream = stream
        if self._stopped.is_set():  # closed while connecting
            with contextlib.suppress(Exception):
                stream.close()
            return
        self._writer.start()
        self._gui(self._opened)
        reason = ""
        while True:
            try:
                data = stream.recv(READ_SIZE)
            except Exception as err:  # noqa: BLE001 - any read error ends the session
                reason = "" if self._stopped.is_set() else user_message(err)
                break
            if not data:
                break
            with self._lock:
                self._pending += data
                schedule = not self._scheduled
                self._scheduled = True
                if len(self._pending) > MAX_PENDING:
                    self._drained.clear()
            if schedule:
                self._gui(self._flush)
            self._drained.wait()
            if self._stopped.is_set():
                break
        if not self._stopped.is_set():
            self.at_eof()
        self._outbox.put(None)
        self._gui(lambda: self._finish(reason))

    def _write_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None or self._stopped.is_set():
                return
            stream = self._stream
            if stream is None:
                return
            try:
                if isinstance(item, bytes):
                    stream.send_all(item)
                else:
                    stream.resize(*item)
            except Exception:  # noqa: BLE001 - the reader reports the end of the session
                if isinstance(item, bytes):
                    return

    # ---- GUI thread ------------------------------------------------------------------
    def _opened(self) -> None:
        if not self._stopped.is_set():
            self._on_open()

    def _flush(self, force: bool = False) -> None:
        if (self._stopped.is_set() and not force) or (
            self._owner is not None and not shiboken6.isValid(self._owner)
        ):
            return
        if not force and self._backlog() > MAX_PENDING:
            QTimer.singleShot(RETRY_MS, self._flush)
            return
        with self._lock:
            data = bytes(self._pending)
            self._pending.clear()
            self._scheduled = False
            self._drained.set()
        if data:
            self._on_output(data)

    def _finish(self, reason: str) -> None:
        if self._stopped.is_set():  # closed by us: nothing more to show or report
            return
        self._flush(force=True)
        self._stopped.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        self._on_end(reason)
