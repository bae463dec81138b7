"""Talk to berthd, starting it on demand.

:class:`DaemonClient` opens one connection per call (calls are rare and some are long).
If the socket does not answer, :func:`ensure_daemon` starts ``berthd`` detached (its own
session, output to ``daemon/berthd.log``) under a lock on ``daemon/start.lock`` (flock;
``msvcrt.locking`` on Windows, via :class:`MachineLock`), so two clients racing to start
it leave exactly one daemon. On Windows the address is berthd's named pipe
(:func:`vm_backend.winpipe.connect_local`) instead of the unix socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vm_backend.daemon.protocol import LineReader, encode
from vm_backend.daemon.server import daemon_address, daemon_dir
from vm_backend.errors import BerthError
from vm_backend.machine.lock import LockTimeout, MachineLock
from vm_backend.machine.paths import PIPE_PREFIX, ensure_private_dir
from vm_backend.paths import berth_home
from vm_backend.winpipe import connect_local

START_TIMEOUT = 15.0
# Windows process creation flags (winbase.h): berthd outlives the console that started it.
_DETACHED_PROCESS = 0x00000008
_CREATE_NEW_PROCESS_GROUP = 0x00000200
_CREATE_NO_WINDOW = 0x08000000


class DaemonError(BerthError):
    """berthd answered with an error, or could not be reached."""


def _connect(address: str | Path, timeout: float | None = 5.0) -> socket.socket:
    """A connection to berthd: its unix socket, or its named pipe on Windows."""
    return connect_local(str(address), timeout)


def daemon_answers(home: Path | None = None, timeout: float = 1.0) -> bool:
    """Whether berthd accepts a connection now (the window's and tray's probe)."""
    try:
        _connect(daemon_address(home), timeout).close()
    except OSError:
        return False
    return True


def berthd_command() -> list[str]:
    """How to run berthd: the ``berthd`` next to a frozen bundle's executable, else -m."""
    if getattr(sys, "frozen", False):
        name = "berthd.exe" if sys.platform == "win32" else "berthd"
        return [str(Path(sys.executable).with_name(name))]
    return [sys.executable, "-m", "vm_backend.daemon.server"]


def _detach_options() -> dict[str, Any]:
    if sys.platform == "win32":
        return {"creationflags": _DETACHED_PROCESS | _CREATE_NEW_PROCESS_GROUP | _CREATE_NO_WINDOW}
    return {"start_new_session": True}


def ensure_daemon(home: Path | None = None) -> Path | str:
    """The daemon's address (socket path, or pipe name on Windows), starting berthd first
    if nothing answers there."""
    home = home or berth_home()
    address = daemon_address(home)
    path: Path | str = address if address.startswith(PIPE_PREFIX) else Path(address)
    with contextlib.suppress(OSError):
        _connect(path, 2.0).close()
        return path
    ensure_private_dir(home)
    ensure_private_dir(daemon_dir(home))
    lock_path = daemon_dir(home) / "start.lock"
    try:
        lock = MachineLock(lock_path, timeout=4 * START_TIMEOUT)
        lock.acquire()
    except LockTimeout as err:
        raise DaemonError(
            "Another berth command has been starting berthd for too long.",
            f"See {daemon_dir(home) / 'berthd.log'}.",
        ) from err
    try:
        with contextlib.suppress(OSError):
            _connect(path, 2.0).close()
            return path  # someone else started it while we waited for the lock
        log_path = daemon_dir(home) / "berthd.log"
        with open(log_path, "ab") as log:
            os.chmod(log_path, 0o600)
            proc = subprocess.Popen(
                [*berthd_command(), "--home", str(home)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                **_detach_options(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DaemonError(
                    f"berthd exited at start (code {proc.returncode}).",
                    f"See {log_path}.",
                )
            with contextlib.suppress(OSError):
                _connect(path, 1.0).close()
                return path
            time.sleep(0.05)
    finally:
        lock.release()
    raise DaemonError("berthd did not start in time.", f"See {log_path}.")


class DaemonClient:
    def __init__(self, home: Path | None = None, autostart: bool = True) -> None:
        self.home = home or berth_home()
        self.path: Path | str = (
            ensure_daemon(self.home) if autostart else daemon_address(self.home)
        )
        self._next_id = 0

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = 900.0,
    ) -> Any:
        self._next_id += 1
        req_id = self._next_id
        try:
            sock = _connect(self.path, timeout)
        except OSError as err:
            raise DaemonError(
                f"Cannot reach berthd at {self.path}: {err.strerror or err}.",
                "It may have stopped; run the command again to restart it.",
            ) from err
        with sock:
            sock.sendall(encode({"id": req_id, "method": method, "params": params or {}}))
            reader = LineReader(sock)
            while True:
                try:
                    message = reader.read()
                except OSError as err:
                    raise DaemonError(f"berthd connection failed: {err}.", "") from err
                if message is None:
                    raise DaemonError("berthd closed the connection.", "See its log.")
                if "progress" in message:
                    if on_progress is not None:
                        on_progress(message["progress"])
                    continue
                if "error" in message:
                    err_doc = message["error"] or {}
                    raise DaemonError(str(err_doc.get("message")), str(err_doc.get("hint") or ""))
                return message.get("result")

    @contextlib.contextmanager
    def console(self, name: str = "default", replay: bool = True) -> Iterator[socket.socket]:
        """A raw, bidirectional connection to the VM's serial console."""
        sock = _connect(self.path, None)
        try:
            sock.sendall(
                encode(
                    {
                        "id": 1,
                        "method": "machine.console",
                        "params": {"name": name, "replay": replay},
                    }
                )
            )
            reader = LineReader(sock)
            message = reader.read()
            if message is None or "error" in message:
                err_doc = (message or {}).get("error") or {}
                raise DaemonError(
                    str(err_doc.get("message") or "console refused"), str(err_doc.get("hint") or "")
                )
            if reader.buffer:
                # Console bytes that arrived with the reply; hand them back first.
                sock = _Prefixed(sock, reader.buffer)  # type: ignore[assignment]
            yield sock
        finally:
            sock.close()


class _Prefixed:
    """A socket whose first recv() returns bytes already read."""

    def __init__(self, sock: socket.socket, prefix: bytes) -> None:
        self._sock = sock
        self._prefix = prefix

    def recv(self, n: int) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return self._sock.recv(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
