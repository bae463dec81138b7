"""Shared folders against the real guest under QEMU (docs/shares.md).

One VM per module with four shares: 9p read-write, 9p read-only, reverse SFTP read-write
and reverse SFTP read-only (SFTP is the Windows path; it is forced here with
``transport="sftp"``). Containers reach them with ``-v HOSTPATH:/data``, exactly as a user
does on a macOS or Windows host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vm_backend.daemon.service import MachineService
from vm_backend.errors import BerthError
from vm_backend.machine.hostinfo import Arch
from vm_backend.machine.image import GuestImage
from vm_backend.machine.spec import Accelerator, MachineSpec, Share

pytestmark = pytest.mark.vm

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
            # The serial console's tail is what explains a guest that stopped answering.
            console = service.machine.paths.console_log
            if console.exists():
                tail = console.read_text(errors="replace").splitlines()[-60:]
                print("---- console.log (tail) ----\n" + "\n".join(tail))
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def vm(guest_image: Path) -> Iterator[SharedVM]:
    yield from boot_vm_with_shares(
        guest_image,
        {
            "p9rw": (False, "auto"),
            "p9ro": (True, "auto"),
            "sftprw": (False, "sftp"),
            "sftpro": (True, "sftp"),
        },
    )


def test_status_lists_every_share_mounted(vm: SharedVM) -> None:
    rows = {r["tag"]: r for r in vm.service.status_json()["shares"]}
    assert set(rows) == {"p9rw", "p9ro", "sftprw", "sftpro"}
    for tag, row in rows.items():
        assert row["state"] == "mounted", row
        assert row["guest_path"] == row["host_path"] == str(vm.dirs[tag])
    assert rows["p9rw"]["transport"] == "9p" and rows["sftprw"]["transport"] == "sftp"
    assert rows["p9ro"]["read_only"] and not rows["p9rw"]["read_only"]


@pytest.mark.parametrize("tag", ["p9rw", "sftprw"])
def test_container_reads_host_file_and_its_writes_are_the_users(vm: SharedVM, tag: str) -> None:
    d = vm.dirs[tag]
    secret = uuid.uuid4().hex
    (d / "from-host.txt").write_text(secret + "\n")
    (d / "sub").mkdir(exist_ok=True)
    run = run_in_container(
        vm, d,
        "cat /data/from-host.txt && echo written-in-container > /data/sub/from-container.txt"
        " && mv /data/sub/from-container.txt /data/sub/renamed.txt && ls /data/sub",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == secret
    written = d / "sub" / "renamed.txt"
    assert written.read_text() == "written-in-container\n"
    # The container ran as root in the guest; on the host the file is the user's.
    assert written.stat().st_uid == os.getuid()
    # A change on the host is seen at once (no stale cache).
    (d / "from-host.txt").write_text(secret + "-changed\n")
    again = run_in_container(vm, d, "cat /data/from-host.txt")
    assert again.stdout.strip() == secret + "-changed"


@pytest.mark.parametrize("tag", ["p9ro", "sftpro"])
def test_read_only_share_refuses_writes(vm: SharedVM, tag: str) -> None:
    d = vm.dirs[tag]
    (d / "keep.txt").write_text("original\n")
    run = run_in_container(
        vm, d,
        "cat /data/keep.txt; echo changed > /data/keep.txt && echo WROTE;"
        " touch /data/new.txt && echo CREATED; rm /data/keep.txt && echo REMOVED; true",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "original"
    assert "WROTE" not in run.stdout and "CREATED" not in run.stdout
    assert "REMOVED" not in run.stdout
    assert "Read-only file system" in run.stderr, run.stderr
    assert (d / "keep.txt").read_text() == "original\n"
    assert not (d / "new.txt").exists()


def test_sftp_share_cannot_reach_outside_its_folder(vm: SharedVM) -> None:
    d = vm.dirs["sftprw"]
    outside = d.parent / "outside.txt"
    outside.write_text("host secret\n")
    (d / "escape").unlink(missing_ok=True)
    os.symlink(str(outside), d / "escape")
    try:
        run = run_in_container(vm, d, "cat /data/escape; cat /data/../outside.txt; true")
        assert "host secret" not in run.stdout
    finally:
        (d / "escape").unlink()


def test_sftp_shares_are_mounted_again_after_the_ssh_session_drops(vm: SharedVM) -> None:
    """Last in the module: it cuts berthd's SSH session to the VM, as a network hiccup or a
    host sleep does, by killing the guest's sshd process that serves it."""
    ssh = vm.service.ssh
    assert ssh is not None

    def states() -> dict[str, str]:
        return {r["tag"]: r["state"] for r in vm.service.status_json()["shares"]}

    assert states()["sftprw"] == "mounted"
    # The nearest sshd above this command serves berthd's whole session (every channel).
    kill_session = (
        'p=$PPID; while [ "$(cat /proc/$p/comm)" != sshd ]; do'
        ' set -- $(cat /proc/$p/stat); p=$4; done; kill -9 "$p"'
    )
    with contextlib.suppress(BerthError):  # this very exec goes down with the session
        ssh.exec(["sh", "-c", kill_session], timeout=20)
    deadline = time.monotonic() + 30
    while states()["sftprw"] == "mounted" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert states()["sftprw"] != "mounted", "the session did not drop"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        now = states()
        if now["sftprw"] == now["sftpro"] == "mounted":
            break
        time.sleep(0.5)
    assert states() == dict.fromkeys(vm.dirs, "mounted"), vm.service.status_json()["shares"]
    d = vm.dirs["sftprw"]
    secret = uuid.uuid4().hex
    (d / "after-drop.txt").write_text(secret + "\n")
    run = run_in_container(vm, d, "cat /data/after-drop.txt && echo back > /data/back.txt")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == secret
    assert (d / "back.txt").read_text() == "back\n"
