"""Loopback TCP port helpers: pick a free port for a QEMU forward, check whether one is busy.

Everything here binds ``127.0.0.1`` only: Berth never listens on the LAN unless the user
asks (see DESIGN.md section 7), and the helpers must not be the exception.

Picking a port is inherently racy (another process may take it between our check and
QEMU's bind). Callers that need certainty must treat a later "address in use" from QEMU as
"pick again"; :func:`pick_free_port` only makes a collision unlikely.
"""

from __future__ import annotations

import errno
import socket

from vm_backend.errors import BerthError, InputError

LOOPBACK = "127.0.0.1"


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise InputError(f"{port} is not a TCP port number", "use a number from 1 to 65535")


def pick_free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The kernel chooses it (bind to port 0), so it comes from the ephemeral range and is
    not in use at the time of the call.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            raise BerthError(
                f"could not find a free TCP port on {host}: {exc.strerror}",
                "check that the loopback interface is up",
            ) from exc
        port: int = sock.getsockname()[1]
        return port


def is_port_busy(port: int, host: str = LOOPBACK) -> bool:
    """True if binding ``host:port`` fails because something already uses it.

    SO_REUSEADDR is set, like QEMU and most servers do, so a port that only has
    connections lingering in TIME_WAIT counts as free: it is free for them too.
    """
    _check_port(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise BerthError(
                f"could not check TCP port {host}:{port}: {exc.strerror}",
                "check that the address is a local one",
            ) from exc
        return False


def is_port_listening(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` is accepted (someone listens there)."""
    _check_port(port)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
