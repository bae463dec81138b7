"""Shared folders against the real guest under QEMU (docs/shares.md).

One VM with four shares: 9p read-write, 9p read-only, reverse SFTP read-write and
reverse SFTP read-only (SFTP is the Windows path; it is forced here with
``transport="sftp"``). It is the ``shares_vm`` fixture (tests/vm/conftest.py), which
test_diagnose.py uses just before. Containers reach them with ``-v HOSTPATH:/data``,
exactly as a user does on a macOS or Windows host.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid

import pytest

from tests.vm.shares_vm import SharedVM, run_in_container
from vm_backend.errors import BerthError

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def vm(shares_vm: SharedVM) -> SharedVM:
    return shares_vm


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
