"""Talk to berthd, starting it on demand.

:class:`DaemonClient` opens one connection per call (calls are rare and some are long).
If the socket does not answer, :func:`ensure_daemon` starts ``berthd`` detached (its own
session, output to ``daemon/berthd.log``) under an flock, so two clients racing to start
it leave exactly one daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vm_backend.daemon.protocol import LineReader, encode
from vm_backend.daemon.server import daemon_dir, socket_path
from vm_backend.errors import BerthError
from vm_backend.machine.paths import ensure_private_dir
from vm_backend.paths import berth_home

START_TIMEOUT = 15.0


class DaemonError(BerthError):
    """berthd answered with an error, or could not be reached."""


def _connect(path: Path, timeout: float | None = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def berthd_command() -> list[str]:
    """How to run berthd: the ``berthd`` next to a frozen bundle's executable, else -m."""
    if getattr(sys, "frozen", False):
        name = "berthd.exe" if sys.platform == "win32" else "berthd"
        return [str(Path(sys.executable).with_name(name))]
    return [sys.executable, "-m", "vm_backend.daemon.server"]


def ensure_daemon(home: Path | None = None) -> Path:
    """The daemon's socket path, starting berthd first if nothing answers there."""
    home = home or berth_home()
    path = socket_path(home)
    with contextlib.suppress(OSError):
        _connect(path, 2.0).close()
        return path
    ensure_private_dir(home)
    ensure_private_dir(daemon_dir(home))
    lock_path = daemon_dir(home) / "start.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
                start_new_session=True,
                close_fds=True,
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
    raise DaemonError("berthd did not start in time.", f"See {log_path}.")


class DaemonClient:
    def __init__(self, home: Path | None = None, autostart: bool = True) -> None:
        self.home = home or berth_home()
        self.path = ensure_daemon(self.home) if autostart else socket_path(self.home)
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
