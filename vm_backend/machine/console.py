"""The VM's serial console: read, record, parse readiness markers, fan out, type.

One reader thread owns the chardev socket. Every byte goes to a bounded ring buffer (for
"show me the last screenful" and for error reports), to ``console.log`` (bounded: rotated
to ``console.log.1`` past a size), and to each subscriber. Complete lines are scanned for
the guest's ``BERTH-STAGE <stage> <uptime>`` / ``BERTH-FAIL <stage> <reason>`` markers
and for the kernel banner. Any subscriber may write (typing reaches the guest).

Each subscriber is fed by its own thread through a bounded queue, so a slow viewer can
block only itself; marker callbacks run on the reader thread and must be quick.

On Windows the chardev is QEMU's named pipe, which serves one client and is not
owner-only: it is claimed with :func:`~vm_backend.machine.qemu_pipes.claim_qemu_pipe`
(a pipe another program holds fails at once with ``PipeTakenError``), or handed to
:meth:`SerialConsole.connect` already claimed by the machine's start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from vm_backend.errors import BerthError
from vm_backend.machine.paths import PIPE_PREFIX
from vm_backend.machine.qemu_pipes import PipeTakenError, claim_qemu_pipe
from vm_backend.winpipe import PipeError, PipeStream, connect_local

log = logging.getLogger(__name__)

DEFAULT_RING_BYTES = 256 * 1024
DEFAULT_LOG_MAX_BYTES = 2 * 1024 * 1024
DEFAULT_VIEWER_QUEUE = 1024  # chunks of up to 64 KiB each
_MAX_LINE = 4096  # a line longer than this is scanned in pieces (no unbounded buffer)

_STAGE_RE = re.compile(rb"BERTH-STAGE ([a-z_]+) ([0-9]+(?:\.[0-9]+)?)")
_FAIL_RE = re.compile(rb"BERTH-FAIL ([a-z_]+) ?(.*)")
_KERNEL_RE = re.compile(rb"Linux version \S+")


class ConsoleError(BerthError):
    """The serial console could not be reached or written."""


@dataclass(frozen=True)
class ConsoleMarker:
    """A readiness line from the guest: ``kind`` is 'kernel', 'stage' or 'fail'."""

    kind: str
    stage: str
    uptime: float | None
    reason: str
    seen_at: float


DataCallback = Callable[[bytes], None]
MarkerCallback = Callable[[ConsoleMarker], None]
ClosedCallback = Callable[[], None]


class Subscription:
    """One attached viewer, fed by its own thread through a bounded queue.

    A slow viewer (a remote client on a slow link) must never stall the console reader:
    that would delay the readiness markers and the log. When its queue is full, chunks
    are dropped for that viewer only and counted in ``dropped_bytes``.
    """

    def __init__(self, console: SerialConsole, callback: DataCallback,
                 max_chunks: int = DEFAULT_VIEWER_QUEUE) -> None:
        self._console = console
        self.callback = callback
        self.dropped_bytes = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max_chunks)
        self._thread = threading.Thread(target=self._deliver, name="berth-console-viewer",
                                        daemon=True)
        self._thread.start()

    def _offer(self, data: bytes) -> None:
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            self.dropped_bytes += len(data)

    def _deliver(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                self.callback(data)
            except Exception:  # one broken viewer must not stop the others
                log.exception("console subscriber failed")

    def write(self, data: bytes) -> None:
        self._console.write(data)

    def close(self) -> None:
        """Detach; bytes already queued are still delivered, then the thread ends."""
        self._console._unsubscribe(self)
        self._stop()

    def _stop(self) -> None:
        # Blocking put: the sentinel must not be lost to a full queue.
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)


class BoundedLog:
    """Appends to a file; past ``max_bytes`` it rotates to ``<name>.1`` (one generation)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_LOG_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fh = self._open()

    def _open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "ab")

    def write(self, data: bytes) -> None:
        if self._fh.tell() + len(data) > self.max_bytes:
            self._fh.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._fh = self._open()
        self._fh.write(data)
        # Flush per chunk: the log is what a user reads after a crash.
        self._fh.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


class SerialConsole:
    """The host end of the VM's serial console chardev socket (a named pipe on Windows)."""

    def __init__(
        self,
        address: str,
        log_path: Path | None = None,
        ring_bytes: int = DEFAULT_RING_BYTES,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
    ) -> None:
        self.address = address
        self._ring = bytearray()
        self._ring_bytes = ring_bytes
        self._log = BoundedLog(log_path, log_max_bytes) if log_path is not None else None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self._marker_callbacks: list[MarkerCallback] = []
        self._closed_callbacks: list[ClosedCallback] = []
        self._line = bytearray()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.first_byte_at: float | None = None
        self.bytes_read = 0

    # -- connection -----------------------------------------------------------------------

    def connect(self, timeout: float = 10.0, alive: Callable[[], bool] | None = None,
                pipe: PipeStream | None = None) -> None:
        """Connect to the chardev socket (retrying while QEMU creates it) and start reading.

        On Windows: read ``pipe`` if the caller claimed QEMU's pipe already, else claim it
        here; :class:`~vm_backend.machine.qemu_pipes.PipeTakenError` if another program
        holds it.
        """
        deadline = time.monotonic() + timeout
        if pipe is not None:
            sock = cast(socket.socket, pipe)
        elif self.address.startswith(PIPE_PREFIX):
            sock = self._claim(deadline, alive)
        else:
            while True:
                try:
                    sock = self._open(max(0.1, deadline - time.monotonic()))
                    break
                except OSError as exc:
                    if (alive is not None and not alive()) or time.monotonic() >= deadline:
                        raise ConsoleError(
                            f"Could not connect to the VM console at {self.address}: {exc}.",
                            "Is the VM running? See qemu.log in the machine's folder.",
                        ) from exc
                    time.sleep(0.01)
        self._sock = sock
        self._stopping = False
        self._thread = threading.Thread(target=self._read_loop, name="berth-console", daemon=True)
        self._thread.start()

    def _claim(self, deadline: float, alive: Callable[[], bool] | None) -> socket.socket:
        try:
            return cast(socket.socket, claim_qemu_pipe(self.address, deadline, alive))
        except PipeTakenError:
            raise
        except PipeError as exc:
            raise ConsoleError(
                f"Could not connect to the VM console at {self.address}: {exc.message}",
                "Is the VM running? See qemu.log in the machine's folder.",
            ) from exc

    def _open(self, timeout: float) -> socket.socket:
        """Connect once to the chardev's unix socket."""
        sock = connect_local(self.address, timeout)
        sock.settimeout(None)
        return sock

    def close(self) -> None:
        """Detach: stop the reader and close the socket and log. Subscribers are dropped."""
        self._stopping = True
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        for sub in subscribers:
            sub._stop()
        if self._log is not None:
            self._log.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None and self._thread is not None and self._thread.is_alive()

    # -- subscribers ----------------------------------------------------------------------

    def subscribe(self, callback: DataCallback, replay: bool = False) -> Subscription:
        """Attach a viewer; with ``replay`` it first receives the ring buffer's contents."""
        sub = Subscription(self, callback)
        with self._lock:
            if replay and self._ring:
                sub._offer(bytes(self._ring))
            self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> bool:
        with self._lock:
            try:
                self._subscribers.remove(sub)
            except ValueError:
                return False
            return True

    def on_marker(self, callback: MarkerCallback) -> None:
        self._marker_callbacks.append(callback)

    def on_closed(self, callback: ClosedCallback) -> None:
        """Called when the console connection ends without :meth:`close` (QEMU went away)."""
        self._closed_callbacks.append(callback)

    def write(self, data: bytes) -> None:
        """Send keystrokes to the guest."""
        sock = self._sock
        if sock is None:
            raise ConsoleError("The VM console is not connected.", "Start the VM first.")
        with self._write_lock:
            try:
                sock.sendall(data)
            except OSError as exc:
                raise ConsoleError(f"Could not write to the VM console: {exc}.") from exc

    # -- reading --------------------------------------------------------------------------

    def tail(self, max_bytes: int = 4096) -> bytes:
        with self._lock:
            return bytes(self._ring[-max_bytes:])

    def tail_text(self, max_lines: int = 30) -> str:
        text = self.tail(16384).decode("utf-8", errors="replace").replace("\r", "")
        return "\n".join(text.splitlines()[-max_lines:])

    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            self._feed(data)
        if not self._stopping:
            for callback in list(self._closed_callbacks):
                try:
                    callback()
                except Exception:
                    log.exception("console closed callback failed")

    def _feed(self, data: bytes) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
        self.bytes_read += len(data)
        with self._lock:
            self._ring += data
            if len(self._ring) > self._ring_bytes:
                del self._ring[: len(self._ring) - self._ring_bytes]
            subscribers = list(self._subscribers)
        if self._log is not None:
            try:
                self._log.write(data)
            except OSError:
                log.exception("cannot write console.log")
        for sub in subscribers:
            sub._offer(data)
        self._scan(data)

    def _scan(self, data: bytes) -> None:
        for chunk in data.splitlines(keepends=True):
            self._line += chunk
            if chunk.endswith((b"\n", b"\r")) or len(self._line) >= _MAX_LINE:
                line = bytes(self._line)
                self._line.clear()
                self._parse_line(line)

    def _parse_line(self, line: bytes) -> None:
        marker = parse_marker(line)
        if marker is None:
            return
        for callback in list(self._marker_callbacks):
            try:
                callback(marker)
            except Exception:
                log.exception("console marker callback failed")


def parse_marker(line: bytes, now: float | None = None) -> ConsoleMarker | None:
    """Recognise a readiness marker in one console line (markers may follow other text)."""
    seen = time.time() if now is None else now
    match = _STAGE_RE.search(line)
    if match is not None:
        return ConsoleMarker("stage", match.group(1).decode(), float(match.group(2)), "", seen)
    match = _FAIL_RE.search(line)
    if match is not None:
        reason = match.group(2).decode("utf-8", errors="replace").strip()
        return ConsoleMarker("fail", match.group(1).decode(), None, reason, seen)
    if _KERNEL_RE.search(line):
        return ConsoleMarker("kernel", "kernel", None, "", seen)
    return None
