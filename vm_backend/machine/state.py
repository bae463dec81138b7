"""On-disk runtime state: QEMU's pid file, the run record, and clearing stale leftovers.

After a crash (of QEMU, of berthd, of the host) the pid file and sockets stay behind.
They must never block the next start (podman#16054 "Cannot lock pid file"), so every
start asks :func:`live_qemu` whether the recorded pid is *our* QEMU and, if not, clears
the leftovers. A pid is ours only if the process is alive, its command line is a QEMU
system emulator naming our pid file, and it was created no later than the pid file was
written (pids are reused; a reused pid belongs to a younger process).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from vm_backend.machine.paths import MachinePaths

# The pid file is written by QEMU a few ms after the process is created; allow for
# coarse filesystem timestamps (1-2 s on some file systems) as well.
_CREATE_TIME_SLACK_S = 2.0


@dataclass(frozen=True)
class RunRecord:
    """What the current (or last) run actually used, for status and for reattaching."""

    pid: int
    create_time: float
    accelerator: str
    accel_reason: str
    ssh_port: int
    started_at: float


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError, OSError):
        return None
    return int(text) if text.isdigit() else None


def is_our_qemu(proc: psutil.Process, paths: MachinePaths) -> bool:
    """True if ``proc`` is the QEMU started for ``paths`` (not a pid reused by something else)."""
    try:
        cmdline = proc.cmdline()
        create_time = proc.create_time()
        status = proc.status()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if status == psutil.STATUS_ZOMBIE or not cmdline:
        return False
    if "qemu-system" not in os.path.basename(cmdline[0]):
        return False
    if str(paths.pidfile) not in cmdline:
        return False
    try:
        written = paths.pidfile.stat().st_mtime
    except FileNotFoundError:
        return True  # found via the run record; the cmdline check above is specific enough
    return create_time <= written + _CREATE_TIME_SLACK_S


def live_qemu(paths: MachinePaths) -> psutil.Process | None:
    """Our running QEMU for this machine, found through the pid file or the run record."""
    candidates: list[int] = []
    pid = read_pid(paths.pidfile)
    if pid is not None:
        candidates.append(pid)
    record = load_run_record(paths)
    if record is not None and record.pid not in candidates:
        candidates.append(record.pid)
    for candidate in candidates:
        try:
            proc = psutil.Process(candidate)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if is_our_qemu(proc, paths):
            return proc
    return None


def clear_stale_runtime(paths: MachinePaths) -> list[Path]:
    """Remove the pid file and sockets of a run that is over. Returns what was removed.

    Callers must hold the machine lock and have checked :func:`live_qemu` is None.
    """
    removed: list[Path] = []
    for path in (paths.pidfile, *paths.socket_files()):
        # lexists: a dangling symlink planted in our run dir must go too.
        if os.path.lexists(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def save_run_record(paths: MachinePaths, record: RunRecord) -> None:
    tmp = paths.run_record.with_name(paths.run_record.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(asdict(record), fh)
    os.replace(tmp, paths.run_record)


def load_run_record(paths: MachinePaths) -> RunRecord | None:
    try:
        data: Any = json.loads(paths.run_record.read_text(encoding="utf-8"))
        return RunRecord(
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            accelerator=str(data["accelerator"]),
            accel_reason=str(data["accel_reason"]),
            ssh_port=int(data["ssh_port"]),
            started_at=float(data["started_at"]),
        )
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def forget_run_record(paths: MachinePaths) -> None:
    with contextlib.suppress(FileNotFoundError):
        paths.run_record.unlink()
