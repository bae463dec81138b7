"""The VM with shared folders that test_diagnose.py and test_shares.py use, one boot for both.

``boot_vm_with_shares`` boots a MachineService with one fresh host folder per share and
loads the test image into its engine; ``SHARES`` is the set the ``shares_vm`` fixture
(tests/vm/conftest.py) boots with: 9p read-write and read-only, reverse SFTP read-write and
read-only (SFTP is the Windows path; it is forced here with ``transport="sftp"``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vm_backend.daemon.service import MachineService
from vm_backend.machine.hostinfo import Arch
from vm_backend.machine.image import GuestImage
from vm_backend.machine.spec import Accelerator, MachineSpec, Share

HOST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
DOCKER = shutil.which("docker") or "docker"
LABEL = "berth.test=shares"


@dataclass
class SharedVM:
    service: MachineService
    docker_host: str
    dirs: dict[str, Path]


def docker(host: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "DOCKER_HOST": host},
    )


def run_in_container(vm: SharedVM, host_dir: Path, script: str) -> subprocess.CompletedProcess[str]:
    return docker(
        vm.docker_host, "run", "--rm", "--label", LABEL, "-v", f"{host_dir}:/data",
        HOST_IMAGE, "sh", "-c", script,
    )


def boot_vm_with_shares(
    guest_image: Path, shares: dict[str, tuple[bool, str]]
) -> Iterator[SharedVM]:
    """Boot a VM sharing one fresh host folder per entry: tag → (read_only, transport)."""
    root = Path(f"/tmp/bsh-{uuid.uuid4().hex[:6]}")  # short: unix socket paths are limited
    root.mkdir(mode=0o700)
    dirs = {}
    for tag in shares:
        d = root / "data" / tag
        d.mkdir(parents=True)
        dirs[tag] = d
    service = MachineService(
        "shares",
        home=root / "home",
        image=GuestImage.from_dir(guest_image, Arch.AMD64),
        manage_context=False,
    )
    try:
        service.create(
            MachineSpec(
                name="shares", cpus=2, memory_mib=1536, disk_gib=8,
                accelerator=Accelerator.AUTO,
                shares=tuple(
                    Share(str(dirs[t]), t, read_only=ro, transport=tr)
                    for t, (ro, tr) in shares.items()
                ),
            )
        )
        service.start()
        host = f"unix://{service.engine_socket}"
        saved = subprocess.run([DOCKER, "save", HOST_IMAGE], capture_output=True, check=True)
        load = subprocess.run(
            [DOCKER, "load"], input=saved.stdout, capture_output=True, timeout=600,
            env={**os.environ, "DOCKER_HOST": host}, check=False,
        )
        assert load.returncode == 0, load.stderr
        yield SharedVM(service, host, dirs)
    finally:
        try:
            service.stop(timeout=30)
        finally:
            service.close()
            shutil.rmtree(root, ignore_errors=True)


# tag → (read_only, transport)
SHARES: dict[str, tuple[bool, str]] = {
    "p9rw": (False, "auto"),
    "p9ro": (True, "auto"),
    "sftprw": (False, "sftp"),
    "sftpro": (True, "sftp"),
}
