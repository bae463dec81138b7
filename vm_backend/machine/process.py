"""The QEMU process: launch, watch, measure, kill — and always clean up.

Modelled on qemu's ``python/qemu/machine/machine.py``: a launch failure raises an error
carrying the argv and the tail of QEMU's log, and whatever happens the child is reaped.
Exit is noticed by a watcher thread blocked in ``wait()``, so crash detection costs no
polling and fires within milliseconds of the kernel reaping the process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from vm_backend.errors import BerthError

ExitCallback = Callable[[int | None], None]


class QemuLaunchError(BerthError):
    """QEMU could not be started, or exited during start-up."""

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        argv: Sequence[str] = (),
        log_tail: str = "",
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.argv = list(argv)
        self.log_tail = log_tail
        self.exit_code = exit_code

    def __str__(self) -> str:
        text = super().__str__()
        if self.log_tail:
            text += "\nQEMU said:\n" + self.log_tail
        return text


@dataclass(frozen=True)
class ProcessStats:
    """Resource use of the QEMU process."""

    rss_bytes: int
    cpu_percent: float


def rotate_log(path: Path) -> None:
    """Keep one previous generation (``.1``) so the log of a crashed run survives a restart."""
    if path.exists():
        os.replace(path, path.with_name(path.name + ".1"))


def read_tail(path: Path, max_bytes: int = 4096, max_lines: int = 20) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])


class QemuProcess:
    """A QEMU we started (``Popen``) or found running (``psutil`` only, after a reattach)."""

    def __init__(
        self,
        pid: int,
        log_path: Path,
        argv: Sequence[str] = (),
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.pid = pid
        self.log_path = log_path
        self.argv = list(argv)
        self._popen = popen
        self._psutil = psutil.Process(pid) if popen is None or popen.poll() is None else None
        self._exit_code: int | None = None
        self._exited = threading.Event()
        self._callbacks: list[ExitCallback] = []
        self._lock = threading.Lock()
        self._started_at = time.time()
        if self._psutil is not None:
            with contextlib.suppress(psutil.Error):
                self._started_at = self._psutil.create_time()
                self._psutil.cpu_percent(None)  # prime: the first call always returns 0.0
        self._watcher = threading.Thread(
            target=self._watch, name=f"qemu-watch-{pid}", daemon=True
        )
        self._watcher.start()

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def launch(
        cls, argv: Sequence[str], log_path: Path, executable: str | None = None
    ) -> QemuProcess:
        """Start QEMU with stderr/stdout appended to ``log_path``; raise QemuLaunchError.

        ``executable`` runs another program under ``argv[0]`` (tests use a fake QEMU).
        """
        rotate_log(log_path)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        kwargs: dict[str, object] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            # Own session: a Ctrl-C in berthd's terminal must not kill the VM, which
            # outlives the daemon by design.
            kwargs["start_new_session"] = True
            # QEMU creates its sockets and pid file with the umask: make them 0600.
            kwargs["umask"] = 0o077
        try:
            popen = subprocess.Popen(  # argv list, never a shell
                list(argv),
                executable=executable,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                close_fds=True,
                **kwargs,  # type: ignore[call-overload]
            )
        except OSError as exc:
            raise QemuLaunchError(
                f"QEMU could not be started: {exc.strerror or exc}.",
                "Install QEMU (qemu-system-x86 / qemu-system-arm) and check it is on PATH.",
                argv=argv,
            ) from exc
        finally:
            os.close(fd)
        return cls(popen.pid, log_path, argv, popen)

    @classmethod
    def adopt(cls, proc: psutil.Process, log_path: Path) -> QemuProcess:
        """Watch a QEMU started by an earlier berthd (we cannot reap it, only observe it)."""
        try:
            argv = proc.cmdline()
        except psutil.Error:
            argv = []
        return cls(proc.pid, log_path, argv, None)

    # -- watching -------------------------------------------------------------------------

    def _watch(self) -> None:
        code: int | None
        if self._popen is not None:
            code = self._popen.wait()
        else:
            try:
                assert self._psutil is not None
                code = self._psutil.wait()
            except psutil.NoSuchProcess:
                code = None
            except psutil.Error:
                code = None
        with self._lock:
            self._exit_code = code
            self._exited.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback(code)

    def on_exit(self, callback: ExitCallback) -> None:
        """Call ``callback(exit_code)`` once QEMU exits (at once if it already has)."""
        with self._lock:
            if not self._exited.is_set():
                self._callbacks.append(callback)
                return
            code = self._exit_code
        callback(code)

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    @property
    def started_at(self) -> float:
        return self._started_at

    def wait(self, timeout: float | None = None) -> bool:
        """True once QEMU has exited (waits up to ``timeout`` seconds)."""
        return self._exited.wait(timeout)

    def log_tail(self, max_lines: int = 20) -> str:
        return read_tail(self.log_path, max_lines=max_lines)

    def stats(self) -> ProcessStats | None:
        if self._psutil is None or self.exited:
            return None
        try:
            with self._psutil.oneshot():
                return ProcessStats(self._psutil.memory_info().rss, self._psutil.cpu_percent(None))
        except psutil.Error:
            return None

    # -- ending ---------------------------------------------------------------------------

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL (TerminateProcess on Windows) and wait for the exit to be observed."""
        if self.exited:
            return
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if self._popen is not None:
                self._popen.kill()
            elif self._psutil is not None:
                self._psutil.kill()
        self._exited.wait(timeout)

    def launch_failure(self, what: str, hint: str) -> QemuLaunchError:
        """An error describing a failed start, with argv, exit code and the log tail."""
        return QemuLaunchError(
            what,
            hint,
            argv=self.argv,
            log_tail=self.log_tail(),
            exit_code=self._exit_code,
        )
