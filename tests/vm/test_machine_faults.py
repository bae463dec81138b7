"""Data safety under ``kill -9`` of QEMU, with the real guest image (issue 5, fault tests).

A file with random content is written inside the guest on the data disk (under
/var/lib/docker, which is where images, containers and volumes live) and fsynced; then
QEMU is killed with SIGKILL. While QEMU is down, ``qemu-img check`` of the data disk must
be clean; the next start must succeed with no manual cleanup; and every file written
before a kill must read back with the same SHA-256. One round in the default run, three in
the long one (BERTH_LONG_TESTS=1).

The data drive's cache mode is what makes this hold: QEMU's default ``writeback`` honours
the guest's flushes (an fsync in the guest reaches the host disk); ``cache=unsafe`` would
ignore them. ``test_argv.py`` pins the drive options.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm_backend.daemon.service import MachineService
from vm_backend.machine.disk import check_disk
from vm_backend.machine.hostinfo import detect_host
from vm_backend.machine.image import GuestImage
from vm_backend.machine.machine import MachineState
from vm_backend.machine.spec import MachineSpec

pytestmark = pytest.mark.vm

# Each round is a kill -9 and a full boot under TCG (~40 s quiet). The default run (CI)
# does one; the long run (BERTH_LONG_TESTS=1) three; BERTH_FAULT_ROUNDS=N sets it.
_LONG = os.environ.get("BERTH_LONG_TESTS") == "1"
ROUNDS = max(1, int(os.environ.get("BERTH_FAULT_ROUNDS", "3" if _LONG else "1")))
PAYLOAD_BYTES = 8 * 1024 * 1024
GUEST_DIR = "/var/lib/docker/berth-fault-test"


@pytest.fixture
def service(guest_image: Path) -> Iterator[MachineService]:
    # A short home: unix socket paths are limited to ~104 bytes.
    home = Path(f"/tmp/bft-{uuid.uuid4().hex[:6]}")
    home.mkdir(mode=0o700)
    host = detect_host()
    svc = MachineService(
        "faults", home=home, image=GuestImage.from_dir(guest_image), manage_context=False
    )
    svc.create(MachineSpec(name="faults", cpus=min(2, host.cpus), memory_mib=1536, disk_gib=4))
    try:
        yield svc
    finally:
        svc.machine.kill()
        svc.close()
        shutil.rmtree(home, ignore_errors=True)


def _guest(svc: MachineService, argv: list[str], stdin: bytes | None = None) -> bytes:
    assert svc.ssh is not None
    rc, out, err = svc.ssh.exec(argv, stdin=stdin, timeout=600)
    assert rc == 0, f"{shlex.join(argv)} -> {rc}: {err.decode(errors='replace')}"
    return out


def _wait_state(svc: MachineService, state: MachineState, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while svc.machine.status().state is not state:
        assert time.monotonic() < deadline, svc.machine.status()
        time.sleep(0.1)


@pytest.mark.timeout(3600)
def test_fsynced_data_survives_kill9_and_the_disk_checks_clean(service: MachineService) -> None:
    status = service.start()
    assert status.state is MachineState.RUNNING
    _guest(service, ["mkdir", "-p", GUEST_DIR])
    written: dict[str, str] = {}
    disk = service.machine.paths.data_disk
    for round_no in range(ROUNDS):
        payload = os.urandom(PAYLOAD_BYTES)
        path = f"{GUEST_DIR}/round-{round_no}.bin"
        # dd conv=fsync: the data and the file's metadata are on the disk when dd exits.
        _guest(service, ["dd", f"of={path}", "bs=1M", "iflag=fullblock", "conv=fsync",
                         "status=none"], stdin=payload)
        # The directory entry too (ext4 commits it with the fsync, but be explicit).
        _guest(service, ["sync", "-f", GUEST_DIR])
        written[path] = hashlib.sha256(payload).hexdigest()
        # The guest keeps writing (uncommitted, not fsynced) while it is killed.
        assert service.ssh is not None
        busy = service.ssh.open_stdio(
            ["dd", "if=/dev/urandom", f"of={GUEST_DIR}/unsynced.bin", "bs=64k", "count=400"]
        )

        pid = service.machine.status().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _wait_state(service, MachineState.CRASHED, timeout=30)
        busy.close()

        check = check_disk(disk)
        assert check.clean, f"round {round_no}: qemu-img check is not clean:\n{check.text}"

        started = time.monotonic()
        status = service.start()  # no cleanup of any kind in between
        assert status.state is MachineState.RUNNING
        print(f"\nround {round_no}: kill -9 -> engine ready again in "
              f"{time.monotonic() - started:.1f} s")
        sums = _guest(service, ["sha256sum", *written]).decode()
        got = {line.split()[1]: line.split()[0] for line in sums.splitlines()}
        assert got == written, f"round {round_no}: fsynced data changed after kill -9"

    # A clean stop leaves a clean disk as well.
    service.stop(timeout=60)
    assert check_disk(disk).clean
