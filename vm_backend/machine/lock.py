"""An inter-process lock on a file in the machine's state dir.

``flock`` (not ``lockf``) on POSIX: flock locks belong to the open file description, so
two threads of one process that each open the file exclude each other too, and the kernel
drops the lock when the holder dies — a crashed berthd never leaves the machine locked.
On Windows ``msvcrt.locking`` gives the same guarantee for byte 0 of the file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import TracebackType

from vm_backend.errors import BerthError


class LockTimeout(BerthError):
    """Another Berth process kept the machine busy for longer than we were willing to wait."""


class MachineLock:
    """``with MachineLock(path, timeout=...):`` — exclusive, waits up to ``timeout`` seconds."""

    def __init__(self, path: Path, timeout: float = 600.0, poll: float = 0.05) -> None:
        self._path = path
        self._timeout = timeout
        self._poll = poll
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self._timeout
        while True:
            if _try_lock(fd):
                self._fd = fd
                return
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeout(
                    f"The machine is busy: another start, stop or delete is still running "
                    f"(waited {self._timeout:.0f} s).",
                    "Wait for it to finish, then try again.",
                )
            time.sleep(self._poll)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _unlock(fd)
        os.close(fd)

    def __enter__(self) -> MachineLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
