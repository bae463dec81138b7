"""The data disk's space: allocated size, consistency check, trim and compaction.

The data disk is a qcow2 file that grows as the guest writes. Deleting files in the guest
frees ext4 blocks but not the host's disk space; two steps give it back:

* **trim** (VM running): ``fstrim`` in the guest. The drive has ``discard=unmap``, so QEMU
  punches holes in the qcow2 file for every trimmed range; the file's allocated size
  (``st_blocks * 512``) drops at once.
* **compact** (VM stopped): ``qemu-img convert -O qcow2`` into a temporary file next to
  the disk, then an atomic rename over it. This drops unallocated and all-zero clusters
  and the fragmentation of the qcow2 metadata. QEMU must not have the file open, so it is
  refused while the VM runs.

Both report the bytes returned as the allocated size before minus after.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vm_backend.errors import BerthError

GUEST_DATA_MOUNT = "/mnt/data"
# Compaction reads and writes the whole allocated disk: minutes for tens of GiB.
COMPACT_TIMEOUT_S = 3600.0
CHECK_TIMEOUT_S = 600.0
TRIM_TIMEOUT_S = 600.0


class DiskError(BerthError):
    """A data-disk operation failed."""


class GuestShell(Protocol):
    """What trimming needs from the SSH session (``GuestSSH`` fits)."""

    def exec(
        self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float | None = 60.0
    ) -> tuple[int, bytes, bytes]: ...


@dataclass(frozen=True)
class ReclaimResult:
    """What a reclaim did: ``mode`` is ``trim`` or ``compact``; sizes are allocated bytes."""

    mode: str
    before_bytes: int
    after_bytes: int
    detail: str = ""

    @property
    def returned_bytes(self) -> int:
        return max(0, self.before_bytes - self.after_bytes)


@dataclass(frozen=True)
class DiskCheck:
    """``qemu-img check`` of a qcow2 file (only valid while QEMU does not write it)."""

    clean: bool
    corruptions: int
    leaks: int
    check_errors: int
    text: str


def allocated_bytes(path: Path) -> int:
    """Bytes the file really occupies on the host disk (holes not counted)."""
    st = path.stat()
    blocks = getattr(st, "st_blocks", None)
    return st.st_size if blocks is None else int(blocks) * 512


def _run_qemu_img(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["qemu-img", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise DiskError(
            "qemu-img is not installed.", "Install QEMU (the qemu-utils package on Debian)."
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise DiskError(f"qemu-img {args[0]} did not finish within {timeout:.0f} s.") from exc


def check_disk(path: Path) -> DiskCheck:
    """Run ``qemu-img check``; exit 0 is clean, 2 corrupt, 3 leaked clusters only."""
    result = _run_qemu_img(["check", "--output=json", "-f", "qcow2", str(path)], CHECK_TIMEOUT_S)
    if result.returncode not in (0, 2, 3):
        raise DiskError(
            f"qemu-img check could not read {path.name}: "
            f"{result.stderr.strip() or result.returncode}"
        )
    try:
        doc = json.loads(result.stdout)
    except ValueError as exc:
        raise DiskError(f"qemu-img check gave no JSON: {result.stdout[:200]!r}") from exc
    corruptions = int(doc.get("corruptions", 0))
    leaks = int(doc.get("leaks", 0))
    errors = int(doc.get("check-errors", 0))
    return DiskCheck(
        clean=result.returncode == 0 and corruptions == 0 and leaks == 0 and errors == 0,
        corruptions=corruptions,
        leaks=leaks,
        check_errors=errors,
        text=result.stdout,
    )


def compact_disk(path: Path) -> ReclaimResult:
    """Rewrite the qcow2 without its unused clusters, atomically. QEMU must be stopped.

    The copy is written to ``.<name>.compact`` in the same folder (same filesystem, so
    the rename is atomic), flushed, then renamed over the original: a crash at any point
    leaves either the old disk or the new one, never half of one.
    """
    before = allocated_bytes(path)
    tmp = path.with_name(f".{path.name}.compact")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left over from an interrupted compaction
    result = _run_qemu_img(
        ["convert", "-q", "-f", "qcow2", "-O", "qcow2", str(path), str(tmp)], COMPACT_TIMEOUT_S
    )
    try:
        if result.returncode != 0:
            raise DiskError(
                f"Compacting the data disk failed: {result.stderr.strip() or result.returncode}",
                "The original disk is untouched.",
            )
        os.chmod(tmp, 0o600)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if os.name == "posix":
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return ReclaimResult("compact", before, allocated_bytes(path))


def trim_guest(shell: GuestShell, path: Path, mount: str = GUEST_DATA_MOUNT) -> ReclaimResult:
    """``sync`` then ``fstrim -v`` in the running guest; ``path`` is the host's qcow2.

    ext4 only trims blocks freed by a committed transaction, hence the ``sync`` first.
    """
    before = allocated_bytes(path)
    rc, _out, err = shell.exec(["sync"], timeout=TRIM_TIMEOUT_S)
    if rc != 0:
        raise DiskError(f"sync in the VM failed: {err.decode(errors='replace').strip()}")
    rc, out, err = shell.exec(["fstrim", "-v", mount], timeout=TRIM_TIMEOUT_S)
    if rc != 0:
        raise DiskError(
            f"fstrim in the VM failed: {err.decode(errors='replace').strip() or rc}",
            "See berth machine logs; the disk needs discard support (QEMU discard=unmap).",
        )
    return ReclaimResult(
        "trim", before, allocated_bytes(path), out.decode(errors="replace").strip()
    )
