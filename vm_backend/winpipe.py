"""Owner-only Windows named pipes: a listener, a socket-like stream, and a client connect.

On Windows, Berth's local endpoints are named pipes instead of unix sockets: berthd's
control API (``\\\\.\\pipe\\berth-<user>-<home hash>-berthd``), the engine socket
(``\\\\.\\pipe\\berth-<user>-<home hash>-<machine>-docker``; ``DOCKER_HOST=npipe:////./
pipe/...``) and the clients of QEMU's QMP and console pipes. This module has the pieces they share:

* :class:`PipeListener` creates pipe instances with an owner-only DACL (only the current
  user, by SID, gets any access; built with ``ConvertStringSecurityDescriptorToSecurity
  DescriptorW``), ``PIPE_REJECT_REMOTE_CLIENTS`` (never reachable over the network) and
  ``FILE_FLAG_FIRST_PIPE_INSTANCE`` on the first one: a program that created the name
  before us makes :class:`PipeListener` fail with :class:`PipeError` rather than serve
  next to it. Instances are ``PIPE_TYPE_MESSAGE | PIPE_READMODE_BYTE``, as Docker's own
  pipe (go-winio ``MessageMode``): a zero-length message is a half-close.
* :class:`PipeStream` is socket-like enough for Berth's pumps: ``recv``, ``sendall``,
  ``shutdown(how)``, ``close``, ``settimeout``. All I/O is overlapped, so one thread can
  block in ``recv`` while another writes (synchronous I/O on one pipe handle serialises
  and would deadlock a bidirectional pump). ``shutdown(SHUT_WR)`` writes a zero-length
  message (go-winio's ``win32MessageBytePipe.CloseWrite``, what the docker CLI sends),
  and ``recv`` returns ``b""`` for a zero-length message or a broken pipe.
* :func:`connect_pipe` opens a client end (``CreateFile``, ``WaitNamedPipe`` while all
  instances are busy), with ``SECURITY_IDENTIFICATION`` so a server cannot act as us.

Every Windows call goes through a small "api" object (the stdlib's ``_winapi`` on
Windows; ctypes only for the security descriptor, which ``_winapi`` cannot build, and for
``GetNamedPipeServerProcessId``, which it does not wrap), so the
logic here is unit-tested on Linux with an in-memory fake (tests/unit/test_winpipe.py).
It has never been run on Windows.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from typing import Any, Protocol, cast

from vm_backend.errors import BerthError
from vm_backend.machine.paths import PIPE_PREFIX

# Win32 error codes (winerror.h).
ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_BROKEN_PIPE = 109
ERROR_SEM_TIMEOUT = 121
ERROR_PIPE_BUSY = 231
ERROR_NO_DATA = 232
ERROR_MORE_DATA = 234
ERROR_PIPE_CONNECTED = 535
ERROR_OPERATION_ABORTED = 995
ERROR_IO_PENDING = 997

# CreateNamedPipe / CreateFile flags (winbase.h, fileapi.h).
PIPE_ACCESS_DUPLEX = 0x00000003
FILE_FLAG_OVERLAPPED = 0x40000000
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
PIPE_TYPE_MESSAGE = 0x00000004
PIPE_READMODE_BYTE = 0x00000000
PIPE_WAIT = 0x00000000
PIPE_REJECT_REMOTE_CLIENTS = 0x00000008
PIPE_UNLIMITED_INSTANCES = 255
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
OPEN_EXISTING = 3
SECURITY_SQOS_PRESENT = 0x00100000
SECURITY_IDENTIFICATION = 0x00010000
NMPWAIT_WAIT_FOREVER = 0xFFFFFFFF
INFINITE = 0xFFFFFFFF

LISTEN_OPEN_MODE = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED
LISTEN_PIPE_MODE = PIPE_TYPE_MESSAGE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS
CLIENT_ACCESS = GENERIC_READ | GENERIC_WRITE
CLIENT_FLAGS = FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION
BUFFER_SIZE = 65536
_READ_SIZE = 65536

_SID_RE = re.compile(r"S-1-[0-9]+(-[0-9]+)+")


class PipeError(BerthError):
    """A named pipe could not be created or reached."""


class ListenerClosed(OSError):
    """:meth:`PipeListener.accept` was interrupted by :meth:`PipeListener.close`."""


def winerror(exc: BaseException) -> int | None:
    """The Win32 error code of an ``OSError`` raised by ``_winapi`` (None otherwise)."""
    code = getattr(exc, "winerror", None)
    return code if isinstance(code, int) else None


def owner_only_sddl(user_sid: str) -> str:
    """The SDDL of a descriptor owned by ``user_sid`` granting GENERIC_ALL to it alone.

    ``D:P`` makes the DACL protected (nothing inherited), so no other account — not even
    Administrators or SYSTEM — gets an ACE; an empty set of other ACEs means no access.
    """
    if not _SID_RE.fullmatch(user_sid):
        raise PipeError(
            f"{user_sid!r} is not a Windows security identifier.",
            "Report this: Berth could not read your account's SID.",
        )
    return f"O:{user_sid}D:P(A;;GA;;;{user_sid})"


def pipe_url(name: str) -> str:
    """``\\\\.\\pipe\\x`` -> ``npipe:////./pipe/x``, the DOCKER_HOST form of a pipe name."""
    return "npipe://" + name.replace("\\", "/")


# ------------------------------------------------------------------------ the api seam


class Overlapped(Protocol):
    """An overlapped operation, as ``_winapi`` returns it."""

    def GetOverlappedResult(self, wait: bool) -> tuple[int, int]: ...

    def cancel(self) -> None: ...

    def getbuffer(self) -> bytes | None: ...


class SecurityAttributes(Protocol):
    """A SECURITY_ATTRIBUTES kept alive while pipes are created with it."""

    @property
    def pointer(self) -> int: ...

    def free(self) -> None: ...


class PipeApi(Protocol):
    """The Windows calls this module makes; :class:`WinApi` on Windows, a fake in tests."""

    def create_named_pipe(
        self, name: str, open_mode: int, pipe_mode: int, max_instances: int,
        out_size: int, in_size: int, timeout_ms: int, security_attributes: int,
    ) -> int: ...

    def connect_named_pipe(self, handle: int) -> Overlapped: ...

    def read_file(self, handle: int, size: int) -> tuple[Overlapped, int]: ...

    def write_file(self, handle: int, data: bytes) -> tuple[Overlapped, int]: ...

    def wait(self, ov: Overlapped, timeout_ms: int) -> bool: ...

    def create_file(self, name: str, access: int, flags: int) -> int: ...

    def wait_named_pipe(self, name: str, timeout_ms: int) -> None: ...

    def get_named_pipe_server_process_id(self, handle: int) -> int:
        """The pid of the process that created the server end of the pipe a client
        ``handle`` is connected to; ``OSError`` (with ``winerror``) if Windows cannot say."""
        ...

    def close_handle(self, handle: int) -> None: ...

    def owner_only_attributes(self) -> SecurityAttributes: ...


def default_api() -> PipeApi:
    """The real Windows API; elsewhere a clear error (tests pass a fake instead)."""
    if _WinApi is None:
        raise PipeError(
            "Named pipes exist only on Windows.", "Use the unix socket on this system."
        )
    api: PipeApi = _WinApi()
    return api


_WinApi: Any = None

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import _winapi
    import ctypes
    from ctypes import wintypes

    WAIT_OBJECT_0 = 0
    TOKEN_QUERY = 0x0008
    TOKEN_USER_CLASS = 1
    SDDL_REVISION_1 = 1

    class _SECURITY_ATTRIBUTES(ctypes.Structure):
        _fields_ = [
            ("nLength", wintypes.DWORD),
            ("lpSecurityDescriptor", ctypes.c_void_p),
            ("bInheritHandle", wintypes.BOOL),
        ]

    def _libs() -> tuple[Any, Any]:
        advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        advapi32.OpenProcessToken.argtypes = [
            wintypes.HANDLE, wintypes.DWORD, ctypes.POINTER(wintypes.HANDLE)]
        advapi32.OpenProcessToken.restype = wintypes.BOOL
        advapi32.GetTokenInformation.argtypes = [
            wintypes.HANDLE, ctypes.c_int, ctypes.c_void_p, wintypes.DWORD,
            ctypes.POINTER(wintypes.DWORD)]
        advapi32.GetTokenInformation.restype = wintypes.BOOL
        advapi32.ConvertSidToStringSidW.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(wintypes.LPWSTR)]
        advapi32.ConvertSidToStringSidW.restype = wintypes.BOOL
        advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW.argtypes = [
            wintypes.LPCWSTR, wintypes.DWORD, ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(wintypes.ULONG)]
        advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW.restype = wintypes.BOOL
        kernel32.GetCurrentProcess.argtypes = []
        kernel32.GetCurrentProcess.restype = wintypes.HANDLE
        kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
        kernel32.CloseHandle.restype = wintypes.BOOL
        kernel32.LocalFree.argtypes = [ctypes.c_void_p]
        kernel32.LocalFree.restype = ctypes.c_void_p
        kernel32.GetNamedPipeServerProcessId.argtypes = [
            wintypes.HANDLE, ctypes.POINTER(wintypes.ULONG)]
        kernel32.GetNamedPipeServerProcessId.restype = wintypes.BOOL
        return advapi32, kernel32

    def current_user_sid() -> str:
        """The SID of the process token's user, as a string (``S-1-5-21-...``)."""
        advapi32, kernel32 = _libs()
        token = wintypes.HANDLE()
        if not advapi32.OpenProcessToken(
            kernel32.GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)
        ):
            raise ctypes.WinError(ctypes.get_last_error())
        try:
            size = wintypes.DWORD(0)
            advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            if not advapi32.GetTokenInformation(
                token, TOKEN_USER_CLASS, buf, size, ctypes.byref(size)
            ):
                raise ctypes.WinError(ctypes.get_last_error())
            # TOKEN_USER starts with SID_AND_ATTRIBUTES, whose first member is the PSID.
            psid = ctypes.cast(buf, ctypes.POINTER(ctypes.c_void_p))[0]
            text = wintypes.LPWSTR()
            if not advapi32.ConvertSidToStringSidW(psid, ctypes.byref(text)):
                raise ctypes.WinError(ctypes.get_last_error())
            try:
                return str(text.value)
            finally:
                kernel32.LocalFree(ctypes.cast(text, ctypes.c_void_p))
        finally:
            kernel32.CloseHandle(token)

    class _OwnerOnlyAttributes:
        def __init__(self) -> None:
            advapi32, self._kernel32 = _libs()
            sddl = owner_only_sddl(current_user_sid())
            self._psd = ctypes.c_void_p()
            if not advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl, SDDL_REVISION_1, ctypes.byref(self._psd), None
            ):
                raise ctypes.WinError(ctypes.get_last_error())
            self._sa = _SECURITY_ATTRIBUTES(
                ctypes.sizeof(_SECURITY_ATTRIBUTES), self._psd, False
            )

        @property
        def pointer(self) -> int:
            return ctypes.addressof(self._sa)

        def free(self) -> None:
            if self._psd:
                self._kernel32.LocalFree(self._psd)
                self._psd = ctypes.c_void_p()

    class _RealWinApi:
        def create_named_pipe(
            self, name: str, open_mode: int, pipe_mode: int, max_instances: int,
            out_size: int, in_size: int, timeout_ms: int, security_attributes: int,
        ) -> int:
            return int(_winapi.CreateNamedPipe(
                name, open_mode, pipe_mode, max_instances, out_size, in_size, timeout_ms,
                security_attributes,
            ))

        def connect_named_pipe(self, handle: int) -> Overlapped:
            # _winapi turns ERROR_PIPE_CONNECTED (a client came first) into a signalled
            # event, and raises for anything but ERROR_IO_PENDING.
            return _winapi.ConnectNamedPipe(handle, overlapped=True)

        def read_file(self, handle: int, size: int) -> tuple[Overlapped, int]:
            return _winapi.ReadFile(handle, size, overlapped=True)

        def write_file(self, handle: int, data: bytes) -> tuple[Overlapped, int]:
            return _winapi.WriteFile(handle, data, overlapped=True)

        def wait(self, ov: Overlapped, timeout_ms: int) -> bool:
            event = ov.event  # type: ignore[attr-defined]
            return bool(_winapi.WaitForSingleObject(event, timeout_ms) == WAIT_OBJECT_0)

        def create_file(self, name: str, access: int, flags: int) -> int:
            return int(_winapi.CreateFile(
                name, access, 0, _winapi.NULL, OPEN_EXISTING, flags, _winapi.NULL
            ))

        def wait_named_pipe(self, name: str, timeout_ms: int) -> None:
            _winapi.WaitNamedPipe(name, timeout_ms)

        def get_named_pipe_server_process_id(self, handle: int) -> int:
            _, kernel32 = _libs()
            pid = wintypes.ULONG(0)
            if not kernel32.GetNamedPipeServerProcessId(handle, ctypes.byref(pid)):
                raise ctypes.WinError(ctypes.get_last_error())
            return int(pid.value)

        def close_handle(self, handle: int) -> None:
            _winapi.CloseHandle(handle)

        def owner_only_attributes(self) -> SecurityAttributes:
            return _OwnerOnlyAttributes()

    _WinApi = _RealWinApi


def _cancel(ov: Overlapped) -> None:
    """CancelIoEx on one operation. It may have completed (and its handle been closed by
    the thread that owned it) meanwhile; _winapi then raises, which is harmless here."""
    try:
        ov.cancel()
    except OSError:
        pass


def _ms(timeout: float | None) -> int:
    if timeout is None:
        return INFINITE
    return max(0, min(int(timeout * 1000), INFINITE - 1))


# ------------------------------------------------------------------------ the stream


class PipeStream:
    """One connected pipe end (server instance or client), socket-like.

    Reads and writes may run on two threads at once. :meth:`close` (or
    ``shutdown(SHUT_RDWR)``) from a third thread cancels a blocked ``recv``/``sendall``,
    which then return ``b""`` / raise ``OSError``; the handle is closed once no
    operation uses it any more.
    """

    family = socket.AF_UNSPEC  # not AF_INET: the relay sets TCP options on those only

    def __init__(self, handle: int, api: PipeApi, name: str = "") -> None:
        self.handle = handle
        self.name = name
        self._api = api
        self._lock = threading.Lock()
        self._pending: dict[Any, str] = {}  # started operation -> "read" / "write"
        self._busy = 0
        self._closing = False
        self._closed_handle = False
        self._read_eof = False
        self._read_shut = False  # shutdown(SHUT_RD/RDWR) or close(): reads end now
        self._write_shut = False  # shutdown_write() sent the zero-length message
        self._write_dead = False  # shutdown(SHUT_RDWR): writes end now
        self._write_lock = threading.Lock()
        self._timeout: float | None = None

    # -- socket-like settings -------------------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def fileno(self) -> int:
        return self.handle

    # -- I/O ------------------------------------------------------------------------------

    def _begin(self) -> None:
        with self._lock:
            if self._closing:
                raise OSError(9, "the pipe is closed")
            self._busy += 1

    def _end(self, ov: Any | None) -> None:
        with self._lock:
            if ov is not None:
                self._pending.pop(ov, None)
            self._busy -= 1
            close_now = self._closing and self._busy == 0 and not self._closed_handle
            if close_now:
                self._closed_handle = True
        if close_now:
            self._api.close_handle(self.handle)

    def _track(self, ov: Overlapped, kind: str) -> bool:
        """Register a started operation; False if close() or a shutdown that ends this
        kind of operation came meanwhile (the caller then cancels it)."""
        with self._lock:
            self._pending[ov] = kind
            ended = self._read_shut if kind == "read" else self._write_dead
            return not (self._closing or ended)

    def _complete(self, ov: Overlapped) -> tuple[int, int, bool]:
        """Wait for ``ov`` (bounded by the timeout): (transferred, error, timed out)."""
        timed_out = False
        if not self._api.wait(ov, _ms(self._timeout)):
            timed_out = True
            _cancel(ov)
        # After a cancel this waits for the cancellation to land (it may have completed
        # first, with data that must not be lost).
        n, err = ov.GetOverlappedResult(True)
        return n, err, timed_out and err == ERROR_OPERATION_ABORTED

    def recv(self, bufsize: int = _READ_SIZE) -> bytes:
        """Up to ``bufsize`` bytes; ``b""`` at EOF (zero-length message, broken pipe, our
        own shutdown/close). Raises ``TimeoutError`` after :meth:`settimeout` seconds."""
        if self._read_eof:
            return b""
        try:
            self._begin()
        except OSError:
            return b""
        ov: Any = None
        try:
            try:
                ov, err = self._api.read_file(self.handle, max(1, bufsize))
            except OSError as exc:
                if winerror(exc) in (ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_OPERATION_ABORTED):
                    self._read_eof = True
                    return b""
                raise
            if not self._track(ov, "read"):
                _cancel(ov)
            try:
                n, err, timed_out = self._complete(ov)
            except OSError as exc:
                if winerror(exc) in (ERROR_BROKEN_PIPE, ERROR_NO_DATA):
                    self._read_eof = True
                    return b""
                raise
            if timed_out:
                raise TimeoutError("timed out reading the pipe")
            if err == ERROR_OPERATION_ABORTED:
                self._read_eof = True  # our close()/shutdown(SHUT_RD) cancelled it
                return b""
            data = bytes(ov.getbuffer() or b"")[:n]
            if not data:
                # A zero-length message: the peer's CloseWrite (go-winio convention).
                self._read_eof = True
            return data
        finally:
            self._end(ov)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Write everything (one message per call); ``OSError`` if the peer is gone."""
        view = memoryview(data).cast("B")
        if not view:
            return  # a zero-length write would be a half-close: only shutdown() sends one
        with self._write_lock:
            if self._write_shut or self._write_dead:
                raise BrokenPipeError(32, "the pipe's write side is shut down")
            self._write(bytes(view))

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """Like ``sendall``; a non-blocking flag cannot be honoured, so it is refused."""
        if flags:
            raise BlockingIOError(11, "a pipe write cannot be non-blocking")
        view = memoryview(data).cast("B")
        self.sendall(view)
        return len(view)

    def _write(self, data: bytes) -> None:
        self._begin()
        ov: Any = None
        try:
            ov, err = self._api.write_file(self.handle, data)
            if not self._track(ov, "write"):
                _cancel(ov)
            n, err, timed_out = self._complete(ov)
            if timed_out:
                raise TimeoutError("timed out writing the pipe")
            if err == ERROR_OPERATION_ABORTED:
                raise BrokenPipeError(32, "the pipe was closed during a write")
            if n != len(data):
                raise OSError(5, f"short write to the pipe ({n} of {len(data)} bytes)")
        finally:
            self._end(ov)

    def wait_peer_gone(self, timeout: float) -> bool:
        """After the peer's half-close: True once it has closed its end (or we shut our
        reading side / closed), False after ``timeout`` s. A pipe's ``poll(POLLHUP)``.

        It reads: a broken pipe is the peer's close. Bytes a peer sends after its
        half-close break the protocol and are dropped.
        """
        try:
            self._begin()
        except OSError:
            return True
        ov: Any = None
        try:
            try:
                ov, _ = self._api.read_file(self.handle, _READ_SIZE)
            except OSError:
                return True  # broken pipe (or the handle is unusable): gone either way
            if not self._track(ov, "read"):
                _cancel(ov)
            finished = self._api.wait(ov, _ms(timeout))
            if not finished:
                _cancel(ov)
            try:
                _, err = ov.GetOverlappedResult(True)
            except OSError:
                return True
            if err == ERROR_OPERATION_ABORTED:
                return self._read_shut  # our close/shutdown, not the timeout
            return False
        finally:
            self._end(ov)

    def shutdown_write(self) -> None:
        """Half-close: a zero-length message, which the peer reads as EOF (once)."""
        with self._write_lock:
            if self._write_shut or self._write_dead:
                return
            self._write_shut = True
            self._write(b"")

    def shutdown(self, how: int) -> None:
        """``SHUT_WR``: :meth:`shutdown_write` (the peer reads EOF).

        ``SHUT_RD``: reading ends now; a blocked ``recv`` returns ``b""``. ``SHUT_RDWR``:
        writing ends too; a blocked ``sendall`` raises. It never blocks: no zero-length
        message is written (it could wait on a peer that reads nothing), so the peer sees
        the end when the handle is closed (a broken pipe), which callers do next.
        """
        if how == socket.SHUT_WR:
            self.shutdown_write()
            return
        with self._lock:
            self._read_eof = True
            self._read_shut = True
            if how == socket.SHUT_RDWR:
                self._write_dead = True
            pending = [ov for ov, kind in self._pending.items()
                       if kind == "read" or self._write_dead]
        for ov in pending:
            _cancel(ov)

    def close(self) -> None:
        """Cancel pending I/O and close the handle (at once, or when the last one ends)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._read_eof = True
            self._read_shut = True
            pending = list(self._pending)
            close_now = self._busy == 0 and not self._closed_handle
            if close_now:
                self._closed_handle = True
        for ov in pending:
            _cancel(ov)
        if close_now:
            self._api.close_handle(self.handle)

    @property
    def closed(self) -> bool:
        return self._closing

    def __enter__(self) -> PipeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------ the listener


class PipeListener:
    """Serve a pipe name: ``accept()`` returns one :class:`PipeStream` per client.

    One spare instance always exists (the next is created before a connected one is
    handed out), so the name never lapses for another program to take. ``close()``
    wakes a blocked ``accept()``, which then raises :class:`ListenerClosed`.
    """

    def __init__(self, name: str, *, api: PipeApi | None = None,
                 buffer_size: int = BUFFER_SIZE) -> None:
        self.name = name
        self._api = api if api is not None else default_api()
        self._buffer_size = buffer_size
        self._lock = threading.Lock()
        self._closed = False
        self._pending: Overlapped | None = None
        self._accepting = False
        try:
            self._attrs = self._api.owner_only_attributes()
        except OSError as exc:
            raise PipeError(
                f"Cannot build the owner-only security descriptor for {name}: {exc}.",
                "Report this; Berth will not serve a pipe other accounts could open.",
            ) from exc
        try:
            self._spare: int | None = self._create(first=True)
        except BaseException:
            self._attrs.free()
            raise

    def _create(self, first: bool) -> int:
        open_mode = LISTEN_OPEN_MODE | (FILE_FLAG_FIRST_PIPE_INSTANCE if first else 0)
        try:
            return self._api.create_named_pipe(
                self.name, open_mode, LISTEN_PIPE_MODE, PIPE_UNLIMITED_INSTANCES,
                self._buffer_size, self._buffer_size, 0, self._attrs.pointer,
            )
        except OSError as exc:
            if winerror(exc) == ERROR_ACCESS_DENIED:
                raise PipeError(
                    f"The pipe {self.name} exists already: another program created it.",
                    "Quit the program that holds it (or an older Berth still running); "
                    "Berth will not serve next to it.",
                ) from exc
            raise PipeError(f"Cannot create the pipe {self.name}: {exc}.", "") from exc

    def accept(self, timeout: float | None = None) -> PipeStream:
        """Wait for a client; ``TimeoutError`` after ``timeout`` s (the instance stays)."""
        with self._lock:
            if self._closed:
                raise ListenerClosed(9, f"the pipe listener {self.name} is closed")
            if self._accepting:
                raise RuntimeError("PipeListener.accept() is not re-entrant")
            self._accepting = True
        try:
            return self._accept(timeout)
        finally:
            with self._lock:
                self._accepting = False
                spare = None
                if self._closed:
                    spare, self._spare = self._spare, None
            if spare is not None:
                self._api.close_handle(spare)

    def _accept(self, timeout: float | None) -> PipeStream:
        while True:
            with self._lock:
                if self._closed:
                    raise ListenerClosed(9, f"the pipe listener {self.name} is closed")
                if self._spare is None:
                    self._spare = self._create(first=False)
                handle = self._spare
            try:
                ov = self._api.connect_named_pipe(handle)
            except OSError as exc:
                if winerror(exc) == ERROR_NO_DATA:
                    # A client connected and left before we got to it: drop the instance.
                    self._drop_spare(handle)
                    continue
                if winerror(exc) == ERROR_PIPE_CONNECTED:
                    return self._hand_out(handle)
                raise
            with self._lock:
                self._pending = ov
                closed = self._closed
            if closed:
                _cancel(ov)
            timed_out = not self._api.wait(ov, _ms(timeout))
            if timed_out:
                _cancel(ov)
            try:
                _, err = ov.GetOverlappedResult(True)
            except OSError as exc:
                if winerror(exc) == ERROR_NO_DATA:
                    self._drop_spare(handle)
                    continue
                raise
            finally:
                with self._lock:
                    self._pending = None
            if err == ERROR_OPERATION_ABORTED:
                with self._lock:
                    closed = self._closed
                if closed:
                    raise ListenerClosed(9, f"the pipe listener {self.name} is closed")
                if timed_out:
                    raise TimeoutError(f"no client on {self.name}")
                continue
            return self._hand_out(handle)

    def _drop_spare(self, handle: int) -> None:
        with self._lock:
            if self._spare == handle:
                self._spare = None
        self._api.close_handle(handle)

    def _hand_out(self, handle: int) -> PipeStream:
        with self._lock:
            self._spare = None
            closed = self._closed
        stream = PipeStream(handle, self._api, self.name)
        if closed:
            stream.close()
            raise ListenerClosed(9, f"the pipe listener {self.name} is closed")
        try:
            with self._lock:
                if not self._closed:
                    self._spare = self._create(first=False)
        except PipeError:
            # The connected client is still served; the next accept() tries again.
            pass
        return stream

    def close(self) -> None:
        """Stop listening: wake a blocked accept() (CancelIoEx on its ConnectNamedPipe);
        the spare instance is closed here, or by accept() on its way out."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = self._pending
            spare = None
            if not self._accepting:
                spare, self._spare = self._spare, None
        if pending is not None:
            _cancel(pending)
        if spare is not None:
            self._api.close_handle(spare)
        # Instances are only created under the lock with _closed unset, so none is being
        # created with these attributes any more.
        self._attrs.free()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> PipeListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_pipe(name: str, timeout: float | None = 5.0, *,
                 api: PipeApi | None = None) -> PipeStream:
    """Open the client end of ``name``, waiting (up to ``timeout``) while it is busy.

    A missing pipe raises ``OSError`` at once (``FileNotFoundError`` on Windows), like a
    unix socket nobody listens on; callers retry as they do for sockets.
    """
    api = api if api is not None else default_api()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            handle = api.create_file(name, CLIENT_ACCESS, CLIENT_FLAGS)
        except OSError as exc:
            if winerror(exc) != ERROR_PIPE_BUSY:
                raise
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"every instance of {name} stayed busy") from exc
            try:
                api.wait_named_pipe(
                    name, NMPWAIT_WAIT_FOREVER if remaining is None else max(1, _ms(remaining))
                )
            except OSError as wait_exc:
                # ERROR_SEM_TIMEOUT: still busy; a vanished pipe: the next CreateFile says.
                if winerror(wait_exc) not in (ERROR_SEM_TIMEOUT, ERROR_FILE_NOT_FOUND):
                    raise
            continue
        stream = PipeStream(handle, api, name)
        stream.settimeout(timeout)
        return stream


def connect_local(address: str, timeout: float | None = 5.0) -> socket.socket:
    """A connection to a local endpoint: a unix socket path, or a named pipe's full name
    (``\\\\.\\pipe\\...``, Windows). The one place that chooses between the two for
    berthd's clients, its probes, the engine ping and the console attach.

    A pipe comes back as a :class:`PipeStream`, which has the socket calls those callers
    make (recv, sendall, shutdown, close, settimeout). Nobody listening raises ``OSError``
    either way.
    """
    if address.startswith(PIPE_PREFIX):
        return cast(socket.socket, connect_pipe(address, timeout))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock
