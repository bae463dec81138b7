"""berthd's control protocol: JSON lines over an owner-only unix socket.

A client sends one request per line: ``{"id": 1, "method": "machine.start",
"params": {...}}``. The daemon answers with zero or more progress lines
``{"id": 1, "progress": {...}}`` and exactly one final line, ``{"id": 1, "result": ...}``
or ``{"id": 1, "error": {"message": ..., "hint": ...}}``. Requests on one connection are
answered in order. ``machine.console`` is special: after its result line the connection
carries raw console bytes both ways until either side closes. See docs/daemon.md.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from vm_backend.errors import BerthError

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20


class ProtocolError(BerthError):
    """The other side sent something that is not a protocol message."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class LineReader:
    """Reads newline-terminated JSON messages from a socket, keeping any extra bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def read(self) -> dict[str, Any] | None:
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise ProtocolError("A control message is too long.", "")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError as err:
            raise ProtocolError(f"Not a control message: {err}.", "") from err
        if not isinstance(message, dict):
            raise ProtocolError("A control message must be a JSON object.", "")
        return message
