"""QMP's wire format for the test fakes: a stream of JSON documents, not lines.

qemu.qmp sends commands without a newline, so the fakes of QEMU (over a unix socket, over
the fake Windows pipe, and the asyncio server of test_qmp.py) decode documents as their
bytes arrive, keeping an incomplete one for the next chunk.
"""

from __future__ import annotations

import json
from typing import Any


class QmpStreamDecoder:
    def __init__(self) -> None:
        self._decoder = json.JSONDecoder()
        self._buf = ""

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """The documents completed by ``chunk``, in order."""
        self._buf += chunk.decode()
        out: list[dict[str, Any]] = []
        while self._buf.strip():
            try:
                msg, end = self._decoder.raw_decode(self._buf.lstrip())
            except json.JSONDecodeError:
                break  # incomplete: wait for more bytes
            self._buf = self._buf.lstrip()[end:]
            out.append(msg)
        return out
