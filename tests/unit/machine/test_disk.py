"""disk.py with the real qemu-img/qemu-io on real qcow2 files (no VM needed).

The guest side (fstrim through the drive's discard=unmap) is in tests/vm/test_resources.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vm_backend.machine.disk import DiskError, allocated_bytes, check_disk, compact_disk, trim_guest

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="QEMU's qemu-img/qemu-io are not installed",
)
MIB = 1024 * 1024


def qemu_io(disk: Path, *commands: str) -> str:
    argv = ["qemu-io", "-f", "qcow2"]
    for c in commands:
        argv += ["-c", c]
    result = subprocess.run([*argv, str(disk)], capture_output=True, text=True, check=True)
    assert "failed" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    path.chmod(0o600)
    return path


def test_compaction_drops_zeroed_clusters_and_keeps_the_data(disk: Path) -> None:
    qemu_io(disk, "write -P 0xab 0 32M", "write -P 0xcd 64M 4M")
    # Zeroed without unmap: the clusters stay allocated in the file, as after a guest
    # that wrote zeros without discarding.
    qemu_io(disk, "write -z 0 32M")
    before = allocated_bytes(disk)
    assert before >= 36 * MIB

    result = compact_disk(disk)

    assert result.mode == "compact"
    assert result.before_bytes == before
    assert result.after_bytes == allocated_bytes(disk) < 8 * MIB
    assert result.returned_bytes == before - result.after_bytes
    assert disk.stat().st_mode & 0o777 == 0o600
    assert not any(p.name.endswith(".compact") for p in disk.parent.iterdir())
    qemu_io(disk, "read -P 0xcd 64M 4M", "read -P 0 0 32M")
    assert check_disk(disk).clean


def test_a_failed_compaction_leaves_the_disk_untouched(disk: Path, tmp_path: Path) -> None:
    qemu_io(disk, "write -P 0x11 0 1M")
    broken = tmp_path / "broken.qcow2"
    broken.write_bytes(b"QFI\xfb" + b"\xff" * 100)  # a qcow2 magic with garbage after it
    with pytest.raises(DiskError):
        compact_disk(broken)
    assert broken.read_bytes().startswith(b"QFI\xfb")
    assert not any(p.name.endswith(".compact") for p in tmp_path.iterdir())


def test_check_reports_a_clean_disk(disk: Path) -> None:
    qemu_io(disk, "write -P 0x22 0 2M")
    check = check_disk(disk)
    assert check.clean and check.corruptions == 0 and check.leaks == 0


class FakeShell:
    """Stands in for GuestSSH: records argv, answers like the guest's sync/fstrim."""

    def __init__(self, fstrim_rc: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.fstrim_rc = fstrim_rc

    def exec(
        self, argv: object, *, stdin: bytes | None = None, timeout: float | None = 60.0
    ) -> tuple[int, bytes, bytes]:
        assert isinstance(argv, list)
        self.calls.append(argv)
        if argv[0] == "fstrim":
            if self.fstrim_rc:
                err = b"fstrim: /mnt/data: the discard operation is not supported"
                return self.fstrim_rc, b"", err
            return 0, b"/mnt/data: 1 GiB (1073741824 bytes) trimmed\n", b""
        return 0, b"", b""


def test_trim_syncs_first_and_reports_sizes(disk: Path) -> None:
    shell = FakeShell()
    result = trim_guest(shell, disk)
    assert shell.calls == [["sync"], ["fstrim", "-v", "/mnt/data"]]
    assert result.mode == "trim" and "trimmed" in result.detail
    assert result.before_bytes == result.after_bytes == allocated_bytes(disk)


def test_trim_failure_is_reported_with_the_guest_error(disk: Path) -> None:
    with pytest.raises(DiskError, match="not supported"):
        trim_guest(FakeShell(fstrim_rc=1), disk)
