"""The user's terminal for ``berth machine console`` and ``berth machine ssh``, on every OS.

* :func:`raw_terminal` puts stdin in raw mode for the session and restores it after. On
  POSIX that is termios/tty (imported only there, so this module and the CLI import on
  Windows). On Windows it is the console API through ctypes: stdin loses line input, echo
  and processed input (Ctrl-C reaches the guest as a byte) and gains
  ``ENABLE_VIRTUAL_TERMINAL_INPUT`` (keys arrive as VT sequences); stdout gains
  ``ENABLE_VIRTUAL_TERMINAL_PROCESSING`` (the guest's escape sequences are drawn). The
  kernel32 object is a parameter, so a Linux test checks those flags with a fake.
* :func:`bridge` joins the terminal to a remote stream (a socket, a named-pipe
  :class:`~vm_backend.winpipe.PipeStream`, a paramiko ``Channel``): remote -> stdout in the
  calling thread, stdin -> remote in a daemon thread. No ``select()`` on stdin, which
  cannot wait on a Windows console handle.
* :func:`watch_resize` reports terminal size changes: SIGWINCH on POSIX, a cheap poll of
  the size every half second on Windows (which has no such signal).

Windows behaviour is tested on Linux with fakes only; it has never run on Windows.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, BinaryIO, Protocol, cast

from vm_backend.errors import BerthError

# GetStdHandle (processenv.h), as the DWORD values the API takes.
STD_INPUT_HANDLE = -10 & 0xFFFFFFFF
STD_OUTPUT_HANDLE = -11 & 0xFFFFFFFF
# Console input modes (consoleapi.h).
ENABLE_PROCESSED_INPUT = 0x0001
ENABLE_LINE_INPUT = 0x0002
ENABLE_ECHO_INPUT = 0x0004
ENABLE_VIRTUAL_TERMINAL_INPUT = 0x0200
# Console output modes.
ENABLE_VIRTUAL_TERMINAL_PROCESSING = 0x0004

RESIZE_POLL_S = 0.5  # Windows only: how often the size is looked at
_READ_SIZE = 65536
_STDIN_READ_SIZE = 4096


class TerminalError(BerthError):
    """The terminal could not be set up for an interactive session."""


# ------------------------------------------------------------------------ raw mode


@contextlib.contextmanager
def raw_terminal(kernel32: Any = None) -> Iterator[bool]:
    """Raw mode on stdin for the ``with`` body; yields whether stdin is a terminal.

    When stdin is not a terminal (a pipe, a file) nothing changes and it yields False.
    ``kernel32`` (Windows only) replaces the real ``ctypes.WinDLL("kernel32")``.
    """
    if sys.platform == "win32":
        with _raw_console(kernel32 if kernel32 is not None else _load_kernel32()) as raw:
            yield raw
        return
    with _raw_tty() as raw:
        yield raw


@contextlib.contextmanager
def _raw_tty() -> Iterator[bool]:
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _console_mode(kernel32: Any, handle: Any) -> int | None:
    """The handle's console mode, or None when it is not a console (redirected)."""
    mode = ctypes.c_uint32(0)
    if not kernel32.GetConsoleMode(handle, ctypes.pointer(mode)):
        return None
    return int(mode.value)


@contextlib.contextmanager
def _raw_console(kernel32: Any) -> Iterator[bool]:
    in_handle = kernel32.GetStdHandle(STD_INPUT_HANDLE)
    in_mode = _console_mode(kernel32, in_handle)
    if in_mode is None:
        yield False
        return
    out_handle = kernel32.GetStdHandle(STD_OUTPUT_HANDLE)
    out_mode = _console_mode(kernel32, out_handle)  # None: output goes to a file or pipe
    raw_in = (
        in_mode & ~(ENABLE_LINE_INPUT | ENABLE_ECHO_INPUT | ENABLE_PROCESSED_INPUT)
    ) | ENABLE_VIRTUAL_TERMINAL_INPUT
    if not kernel32.SetConsoleMode(in_handle, raw_in):
        raise TerminalError(
            "This console does not accept raw, VT-sequence input.",
            "Use Windows Terminal, or Windows 10 (1607) or later.",
        )
    try:
        if out_mode is not None and not kernel32.SetConsoleMode(
            out_handle, out_mode | ENABLE_VIRTUAL_TERMINAL_PROCESSING
        ):
            raise TerminalError(
                "This console cannot draw VT escape sequences.",
                "Use Windows Terminal, or Windows 10 (1607) or later.",
            )
        try:
            yield True
        finally:
            if out_mode is not None:
                kernel32.SetConsoleMode(out_handle, out_mode)
    finally:
        kernel32.SetConsoleMode(in_handle, in_mode)


def _load_kernel32() -> Any:
    """The real kernel32 with the prototypes :func:`_raw_console` uses (Windows only)."""
    if _load_real_kernel32 is None:
        raise TerminalError(
            "The Windows console API exists only on Windows.", "This is a bug in Berth."
        )
    return _load_real_kernel32()


_load_real_kernel32: Callable[[], Any] | None = None

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    from ctypes import wintypes

    def _real_kernel32() -> Any:
        k = ctypes.WinDLL("kernel32", use_last_error=True)
        k.GetStdHandle.argtypes = [wintypes.DWORD]
        k.GetStdHandle.restype = wintypes.HANDLE
        k.GetConsoleMode.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
        k.GetConsoleMode.restype = wintypes.BOOL
        k.SetConsoleMode.argtypes = [wintypes.HANDLE, wintypes.DWORD]
        k.SetConsoleMode.restype = wintypes.BOOL
        return k

    _load_real_kernel32 = _real_kernel32


# ------------------------------------------------------------------------ the bridge


class Remote(Protocol):
    """What :func:`bridge` needs: socket, PipeStream and paramiko Channel all have it."""

    def recv(self, bufsize: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> Any: ...

    def shutdown(self, how: int, /) -> None: ...

    def close(self) -> None: ...


class BridgeEnd(enum.Enum):
    REMOTE_EOF = "remote-eof"  # the remote end closed (or failed)
    DETACHED = "detached"  # the user pressed the detach key


def stdin_reader() -> Callable[[int], bytes]:
    """A blocking ``read(n)`` on this process's stdin that returns what is there.

    POSIX: ``os.read`` on fd 0. Windows: the raw stdin object, which for a console reads
    with ``ReadConsoleW`` and hands back UTF-8 (``os.read`` there would use the console's
    ANSI code page).
    """
    if sys.platform == "win32":
        raw = cast(Any, sys.stdin.buffer).raw
        return lambda n: bytes(raw.read(n) or b"")
    fd = sys.stdin.fileno()
    return lambda n: os.read(fd, n)


def bridge(
    remote: Remote,
    read_stdin: Callable[[int], bytes],
    stdout: BinaryIO,
    *,
    detach_key: bytes | None = None,
    on_stdin_eof: Callable[[], None] | None = None,
) -> BridgeEnd:
    """Copy remote -> ``stdout`` here and ``read_stdin`` -> remote in a daemon thread.

    ``detach_key`` (one byte, e.g. Ctrl-]): when it appears in the input, the bytes before
    it are still sent, then the remote is shut down and closed (that is what wakes this
    thread's ``recv``) and this returns :attr:`BridgeEnd.DETACHED`. At stdin EOF the reader
    stops and calls ``on_stdin_eof`` (e.g. a channel's ``shutdown_write``) if given; the
    output keeps flowing. Remote EOF (or a failed ``recv``) returns
    :attr:`BridgeEnd.REMOTE_EOF`. The reader thread may still be blocked on stdin then (it
    cannot be interrupted portably); it sends nothing more, and errors from a remote that
    closed under it are swallowed rather than printed as a thread traceback.
    """
    if detach_key is not None and len(detach_key) != 1:
        raise ValueError("detach_key must be one byte")
    stop = threading.Event()  # the session is over: the reader must send nothing more
    detached = threading.Event()

    def pump_stdin() -> None:
        try:
            while not stop.is_set():
                data = read_stdin(_STDIN_READ_SIZE)
                if stop.is_set():
                    return
                if not data:
                    if on_stdin_eof is not None:
                        on_stdin_eof()
                    return
                cut = data.find(detach_key) if detach_key is not None else -1
                if cut >= 0:
                    if cut:
                        remote.sendall(data[:cut])
                    detached.set()
                    _hang_up(remote)
                    return
                remote.sendall(data)
        except (OSError, EOFError, ValueError):
            # The remote went away under us (the calling thread sees its EOF and returns),
            # or stdin was closed; ValueError is an I/O operation on a closed file object.
            return

    reader = threading.Thread(target=pump_stdin, name="berth-terminal-stdin", daemon=True)
    reader.start()
    try:
        while True:
            try:
                data = remote.recv(_READ_SIZE)
            except (OSError, EOFError):
                data = b""
            if not data:
                return BridgeEnd.DETACHED if detached.is_set() else BridgeEnd.REMOTE_EOF
            stdout.write(data)
            stdout.flush()
    finally:
        stop.set()


def _hang_up(remote: Remote) -> None:
    """End the session from the reader thread, waking a ``recv`` blocked elsewhere.

    A socket's blocked ``recv`` wakes on ``shutdown`` (not on ``close``); a paramiko
    channel's on ``close``; a PipeStream's on either.
    """
    try:
        remote.shutdown(socket.SHUT_RDWR)
    except (OSError, EOFError):
        pass
    try:
        remote.close()
    except (OSError, EOFError):
        pass


# ------------------------------------------------------------------------ resizes


def _terminal_size() -> tuple[int, int]:
    cols, rows = shutil.get_terminal_size((80, 24))
    return cols, rows


@contextlib.contextmanager
def watch_resize(
    on_resize: Callable[[int, int], None],
    *,
    size: Callable[[], tuple[int, int]] = _terminal_size,
    use_signal: bool | None = None,
) -> Iterator[None]:
    """Call ``on_resize(cols, rows)`` from a daemon thread when the terminal's size changes.

    With SIGWINCH (POSIX, in the main thread: ``use_signal=None`` picks that when it can)
    the thread sleeps until the signal; otherwise it looks at ``size()`` every
    :data:`RESIZE_POLL_S` seconds. Errors from ``on_resize`` (OSError, EOFError) end the
    watching quietly: the session is ending.
    """
    sigwinch: signal.Signals | None = getattr(signal, "SIGWINCH", None)
    if use_signal is None:
        use_signal = sigwinch is not None and threading.current_thread() is threading.main_thread()
    if use_signal and sigwinch is None:
        raise ValueError("this system has no SIGWINCH")
    wake = threading.Event()
    stop = threading.Event()
    last = size()

    def watch() -> None:
        nonlocal last
        while not stop.is_set():
            wake.wait(None if use_signal else RESIZE_POLL_S)
            wake.clear()
            if stop.is_set():
                return
            now = size()
            if now != last:
                last = now
                try:
                    on_resize(*now)
                except (OSError, EOFError):
                    return

    def on_sigwinch(_sig: int, _frame: FrameType | None) -> None:
        wake.set()

    previous: Any = None
    if use_signal and sigwinch is not None:
        previous = signal.signal(sigwinch, on_sigwinch)
    thread = threading.Thread(target=watch, name="berth-terminal-resize", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        wake.set()
        thread.join(timeout=2.0)
        if use_signal and sigwinch is not None:
            signal.signal(sigwinch, previous)
