"""Claiming QEMU's own Windows pipes (QMP and the serial console) before anyone else can.

On Windows QEMU's ``-chardev pipe`` creates ``\\\\.\\pipe\\<name>`` itself
(``chardev/char-win.c``): with the default security of a named pipe (its creator, SYSTEM
and Administrators get full control, Everyone can read) and a single instance
(``MAXCONNECT 1``), and QEMU's start-up waits in ``ConnectNamedPipe`` until a client
comes, one chardev after the other in command-line order: the console's pipe exists only
once a client holds QMP's. Berth cannot give these pipes its owner-only DACL, so another
local user who connects first would read the console (or QMP's replies) and lock berthd
out.

The guard: right after QEMU starts, berthd claims both pipes (:func:`claim_vm_pipes`). A
pipe that does not exist yet is retried until the deadline (QEMU makes it a moment after
it starts); a pipe that is busy (``ERROR_PIPE_BUSY``: someone else holds the one
instance) or refuses us (``ERROR_ACCESS_DENIED``) is not retried: it raises
:class:`PipeTakenError`, and the caller kills QEMU. A pipe we could open is then checked
to be QEMU's: ``GetNamedPipeServerProcessId`` must name QEMU's pid, else another program
created the name before QEMU did and serves it in QEMU's place (QEMU's own
``CreateNamedPipe`` then fails or waits); that, or Windows failing to say, closes our
handle and raises :class:`PipeTakenError` too. A squatter thus turns into a failed start,
never into a VM someone else watches or answers for. Clients open with
``SECURITY_IDENTIFICATION`` (:data:`vm_backend.winpipe.CLIENT_FLAGS`), so whoever serves
the pipe cannot act as us.

QMP then runs over the claimed pipe through :class:`StreamTransport`, an asyncio
transport that reads and writes a :class:`~vm_backend.winpipe.PipeStream` from two threads
(asyncio's own pipe transport opens the pipe itself, waiting while it is busy, which is
exactly what the guard must not do).

Unit-tested on Linux over the in-memory fake of the pipe API; never run on Windows.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from vm_backend import winpipe
from vm_backend.winpipe import PipeApi, PipeError, PipeStream

_RETRY_INTERVAL = 0.01
_READ_SIZE = 65536
_HIGH_WATER = 64 * 1024


class PipeTakenError(PipeError):
    """Another program holds (or refuses us) one of QEMU's single-instance pipes."""


def claim_qemu_pipe(
    name: str,
    deadline: float,
    alive: Callable[[], bool] | None = None,
    *,
    server_pid: int | None = None,
    api: PipeApi | None = None,
    retry_interval: float = _RETRY_INTERVAL,
) -> PipeStream:
    """Open the client end of QEMU's pipe ``name`` as soon as it exists (blocking I/O).

    "Not found" is retried until ``deadline`` (``time.monotonic()``) while ``alive()``
    holds; busy or access denied raise :class:`PipeTakenError` at once; anything else,
    or the deadline, raises :class:`PipeError`. With ``server_pid`` (QEMU's pid) the
    opened pipe must be served by that process, else :class:`PipeTakenError`
    (:func:`claim_vm_pipes` always passes it; without it the server is not checked).
    """
    api = api if api is not None else winpipe.default_api()
    while True:
        try:
            handle = api.create_file(name, winpipe.CLIENT_ACCESS, winpipe.CLIENT_FLAGS)
        except OSError as exc:
            code = winpipe.winerror(exc)
            if code in (winpipe.ERROR_PIPE_BUSY, winpipe.ERROR_ACCESS_DENIED):
                who = ("Another program connected to" if code == winpipe.ERROR_PIPE_BUSY
                       else "Another program owns")
                raise PipeTakenError(
                    f"{who} the VM's pipe {name} before Berth: it could read the VM's "
                    "console or control QEMU.",
                    "QEMU's pipes serve a single client and cannot be made owner-only. Quit "
                    "the program that opens Berth's pipes (another user's session, a "
                    "debugger, an older Berth), then start the VM again.",
                ) from exc
            if code != winpipe.ERROR_FILE_NOT_FOUND:
                raise PipeError(f"Cannot open QEMU's pipe {name}: {exc}.",
                                "See qemu.log in the machine's folder.") from exc
            if alive is not None and not alive():
                raise PipeError(f"QEMU exited before it created its pipe {name}.",
                                "See qemu.log in the machine's folder.") from exc
            if time.monotonic() >= deadline:
                raise PipeError(f"QEMU did not create its pipe {name} in time.",
                                "See qemu.log in the machine's folder.") from exc
            time.sleep(retry_interval)
            continue
        if server_pid is not None:
            _check_server(api, handle, name, server_pid)
        stream = PipeStream(handle, api, name)
        stream.settimeout(None)
        return stream


def _check_server(api: PipeApi, handle: int, name: str, server_pid: int) -> None:
    """Keep ``handle`` only if process ``server_pid`` serves it; else close it and raise
    :class:`PipeTakenError` (also when Windows cannot tell: that is no proof of QEMU)."""
    try:
        pid = api.get_named_pipe_server_process_id(handle)
    except OSError as exc:
        api.close_handle(handle)
        raise PipeTakenError(
            f"Berth could not check which program serves the VM's pipe {name} ({exc}), "
            "so it did not use it: another program may have created it before QEMU.",
            "Start the VM again. If this repeats, report it with qemu.log from the "
            "machine's folder.",
        ) from exc
    if pid != server_pid:
        api.close_handle(handle)
        raise PipeTakenError(
            f"Another program (process {pid}) created the VM's pipe {name} before QEMU "
            f"(process {server_pid}) did: it could read the VM's console or answer in "
            "QEMU's place.",
            f"Quit process {pid} (Task Manager, Details, PID column; another user's "
            "session, an older Berth), then start the VM again.",
        )


def claim_vm_pipes(
    qmp_name: str,
    console_name: str,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    *,
    server_pid: int,
    api: PipeApi | None = None,
) -> tuple[PipeStream, PipeStream]:
    """Claim QMP's pipe, then the console's (QEMU creates the second once the first has
    its client), within ``timeout`` s in all; both must be served by QEMU, process
    ``server_pid``. Nothing stays open if either fails."""
    deadline = time.monotonic() + timeout
    qmp = claim_qemu_pipe(qmp_name, deadline, alive, server_pid=server_pid, api=api)
    try:
        console = claim_qemu_pipe(console_name, deadline, alive, server_pid=server_pid,
                                  api=api)
    except BaseException:
        qmp.close()
        raise
    return qmp, console


class StreamTransport(asyncio.Transport):
    """An asyncio transport over a blocking socket-like stream (a claimed pipe).

    One thread reads into the protocol, one writes what :meth:`write` queued, so the event
    loop never waits on the pipe (a :class:`PipeStream` allows a read and a write at once).
    Flow control is asyncio's: the protocol is paused above the high-water mark and
    resumed at the low one, so ``drain()`` waits for the pipe. :meth:`close` sends what is
    queued, then closes the stream; :meth:`abort` closes it at once. Either way the
    protocol's ``connection_lost`` comes once, on the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: Any,
                 protocol: asyncio.BaseProtocol, name: str) -> None:
        super().__init__(extra={"addr": name, "peername": name})
        self._loop = loop
        self._stream = stream
        self._protocol: Any = protocol
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._buffered = 0
        self._high = _HIGH_WATER
        self._low = _HIGH_WATER // 4
        self._writing_paused = False
        self._reading = threading.Event()
        self._reading.set()
        self._closing = False
        self._lost = False
        protocol.connection_made(self)
        self._threads = [
            threading.Thread(target=self._read_loop, name=f"qemu-pipe-read {name}",
                             daemon=True),
            threading.Thread(target=self._write_loop, name=f"qemu-pipe-write {name}",
                             daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- loop side ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return  # like asyncio's transports: writes after close are dropped
        chunk = bytes(data)
        self._buffered += len(chunk)
        self._outbox.put(chunk)
        self._maybe_pause()

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause()

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading.is_set() and not self._lost

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._outbox.put(None)  # the writer sends what is queued, then closes the stream

    def abort(self) -> None:
        self._shut_down(None)

    def _shut_down(self, exc: BaseException | None) -> None:
        self._closing = True
        self._stream.close()  # wakes both threads: pending reads and writes are cancelled
        self._outbox.put(None)
        self._loop.call_soon(self._connection_lost, exc)

    def _maybe_pause(self) -> None:
        if not self._writing_paused and self._buffered > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _sent(self, n: int) -> None:
        self._buffered -= n
        if self._writing_paused and self._buffered <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()

    def _data(self, data: bytes) -> None:
        if not self._lost:
            self._protocol.data_received(data)

    def _eof(self) -> None:
        if self._closing or self._lost:
            return  # our own close ended the read
        if not self._protocol.eof_received():
            self.close()

    def _failed(self, exc: OSError) -> None:
        if not self._closing and not self._lost:
            self._shut_down(exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._buffered = 0
        self._reading.set()
        self._protocol.connection_lost(exc)

    # -- threads -----------------------------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is left to tell

    def _read_loop(self) -> None:
        while True:
            self._reading.wait()
            if self._lost:
                return
            try:
                data = self._stream.recv(_READ_SIZE)
            except OSError as exc:
                self._call(self._failed, exc)
                return
            if not data:
                self._call(self._eof)
                return
            self._call(self._data, data)

    def _write_loop(self) -> None:
        while (chunk := self._outbox.get()) is not None:
            try:
                self._stream.sendall(chunk)
            except OSError as exc:
                self._call(self._failed, exc)
                return
            self._call(self._sent, len(chunk))
        self._stream.close()
        self._call(self._connection_lost, None)


def open_stream_connection(
    stream: Any, name: str, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over an open stream (``asyncio.open_connection`` for a claimed
    pipe); call it on the loop that will use them."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = StreamTransport(loop, stream, protocol, name)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
