"""Shares: the pure plan, and the SFTP server's confinement and read-only rule.

The SFTP tests use the same topology as the real reverse mount: berthd's side is an SSH
*client* whose session channel is served by :func:`serve_sftp`; the other side (sshfs in
the guest) is played by paramiko's ``SFTPClient`` on the server's end of that channel.
Both transports run over a socketpair.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest
from paramiko.common import (
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from vm_backend.machine.hostinfo import HostOS
from vm_backend.machine.shares import (
    ShareTransport,
    fw_cfg_shares,
    guest_path_for,
    parse_guest_status,
    plan_shares,
    reserved_guest_path,
    serve_sftp,
    sshfs_argv,
)
from vm_backend.machine.spec import MachineSpec, Share

HOST_KEY = paramiko.RSAKey.generate(2048)


# ---- pure part -------------------------------------------------------------------------------
def test_guest_path_is_the_host_path_and_windows_drives_become_a_folder() -> None:
    assert guest_path_for("/Users/ann/src", HostOS.DARWIN) == "/Users/ann/src"
    assert guest_path_for("/home/ann/", HostOS.LINUX) == "/home/ann"
    assert guest_path_for("C:\\Users\\Ann\\src", HostOS.WINDOWS) == "/c/Users/Ann/src"
    assert guest_path_for("D:/data", HostOS.WINDOWS) == "/d/data"


def test_system_folders_of_the_guest_are_reserved() -> None:
    for path in ("/", "/root", "/etc/x", "/var/lib/docker", "/tmp", "/run/berth", "/usr"):
        assert reserved_guest_path(path), path
    for path in ("/home/ann", "/Users/ann", "/tmp/x", "/var/folders/x", "/srv", "/c/Users"):
        assert not reserved_guest_path(path), path


def test_transport_and_fw_cfg_list() -> None:
    spec = MachineSpec(
        shares=(
            Share("/Users/ann", "home"),
            Share("/srv/ro data", "ro", read_only=True),
            Share("/srv/s", "s", transport="sftp"),
            Share("/root", "bad"),
        )
    )
    plans = {p.tag: p for p in plan_shares(spec, HostOS.DARWIN)}
    assert plans["home"].transport is ShareTransport.NINEP
    assert plans["s"].transport is ShareTransport.SFTP
    assert plans["bad"].problem
    # Only mountable 9p shares reach the guest; spaces survive (tab-separated fields).
    assert fw_cfg_shares(spec, HostOS.DARWIN) == "home\trw\t/Users/ann\nro\tro\t/srv/ro data\n"
    win = replace(spec, shares=(Share("C:\\Users\\Ann", "home"),))
    assert plan_shares(win, HostOS.WINDOWS)[0].transport is ShareTransport.SFTP
    assert fw_cfg_shares(win, HostOS.WINDOWS) == ""


def test_guest_status_parsing_and_sshfs_argv() -> None:
    assert parse_guest_status("home\tok\t/Users/ann\nx\tfailed\tmount-failed:/x\njunk\n") == {
        "home": (True, "/Users/ann"),
        "x": (False, "mount-failed:/x"),
    }
    plan = plan_shares(
        MachineSpec(shares=(Share("/a b", "t", read_only=True, transport="sftp"),)), HostOS.LINUX
    )[0]
    argv = sshfs_argv(plan)
    assert argv[0] == "sshfs" and argv[-1] == "/a b" and argv[-2] == "berth-host:/"
    assert "passive" in argv[3] and argv[3].endswith(",ro")


# ---- SFTP server over a real SSH pair --------------------------------------------------------
class _GuestSide(paramiko.ServerInterface):
    """Plays the VM's sshd: accepts the exec berthd sends (sshfs) and nothing else."""

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.exec_seen = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.commands.append(command)
        self.exec_seen.set()
        return True


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    (root / "dir").mkdir()
    (tmp_path / "secret.txt").write_text("outside\n")
    os.symlink(tmp_path / "secret.txt", root / "escape-file")
    os.symlink(tmp_path, root / "escape-dir")
    os.symlink("hello.txt", root / "inside-link")
    return root


def _connect(root: Path, read_only: bool) -> Iterator[paramiko.SFTPClient]:
    a, b = socket.socketpair()
    server_t = paramiko.Transport(a)
    server_t.add_server_key(HOST_KEY)
    guest = _GuestSide()
    server_t.start_server(event=threading.Event(), server=guest)
    client_t = paramiko.Transport(b)
    client_t.connect()
    client_t.auth_none("root")
    chan = client_t.open_session()
    chan.exec_command("sshfs -o passive berth-host:/ /mnt")
    served = threading.Thread(target=serve_sftp, args=(chan, str(root), read_only), daemon=True)
    served.start()
    guest_chan = server_t.accept(10)
    assert guest_chan is not None and guest.exec_seen.wait(10)
    sftp = paramiko.SFTPClient(guest_chan)
    try:
        yield sftp
    finally:
        sftp.close()
        served.join(timeout=10)
        assert not served.is_alive(), "the SFTP server did not end when the guest closed"
        client_t.close()
        server_t.close()


@pytest.fixture
def rw(tree: Path) -> Iterator[paramiko.SFTPClient]:
    yield from _connect(tree, read_only=False)


@pytest.fixture
def ro(tree: Path) -> Iterator[paramiko.SFTPClient]:
    yield from _connect(tree, read_only=True)


def _errno_of(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)  # type: ignore[operator]
    return int(info.value.errno or 0)


def test_reads_writes_renames_inside_the_share(rw: paramiko.SFTPClient, tree: Path) -> None:
    assert rw.open("/hello.txt").read() == b"hello\n"
    assert rw.normalize("/../../dir/..") == "/"
    assert sorted(rw.listdir("/")) == sorted(os.listdir(tree))
    with rw.open("/dir/new.txt", "w") as f:
        f.write(b"from guest")
    assert (tree / "dir" / "new.txt").read_bytes() == b"from guest"
    with rw.open("/dir/new.txt", "a") as f:
        f.write(b"!")
    assert (tree / "dir" / "new.txt").read_bytes() == b"from guest!"
    rw.posix_rename("/dir/new.txt", "/dir/moved.txt")
    rw.mkdir("/dir/sub")
    rw.chmod("/dir/moved.txt", 0o600)
    assert (tree / "dir" / "moved.txt").stat().st_mode & 0o777 == 0o600
    rw.truncate("/dir/moved.txt", 4)
    assert (tree / "dir" / "moved.txt").read_bytes() == b"from"
    assert rw.stat("/dir/moved.txt").st_size == 4
    rw.remove("/dir/moved.txt")
    rw.rmdir("/dir/sub")
    assert os.listdir(tree / "dir") == []
    # A symlink inside the share works, and readlink shows it as the guest sees it.
    assert rw.open("/inside-link").read() == b"hello\n"
    assert rw.readlink("/inside-link") == "hello.txt"


def test_no_path_escapes_the_share(rw: paramiko.SFTPClient, tree: Path) -> None:
    # `..` cannot climb above the share's root: it lands on the root itself.
    assert rw.open("/../hello.txt").read() == b"hello\n"
    assert _errno_of(rw.open, "/../secret.txt") == errno.ENOENT
    # Symlinks pointing outside are refused, for reads, listings, stat and writes.
    assert _errno_of(rw.open, "/escape-file") == errno.EACCES
    assert _errno_of(rw.listdir, "/escape-dir") == errno.EACCES
    assert _errno_of(rw.stat, "/escape-dir/secret.txt") == errno.EACCES
    assert _errno_of(rw.open, "/escape-dir/secret.txt", "w") == errno.EACCES
    assert _errno_of(rw.mkdir, "/escape-dir/made") == errno.EACCES
    assert _errno_of(rw.remove, "/escape-dir/secret.txt") == errno.EACCES
    assert _errno_of(rw.rename, "/hello.txt", "/escape-dir/stolen.txt") == errno.EACCES
    # lstat of the link itself is fine (it is inside); following it is not.
    assert rw.lstat("/escape-file").st_size is not None
    # A link the guest creates pointing outside cannot be followed either.
    rw.symlink("/etc/passwd", "/made-link")
    assert _errno_of(rw.open, "/made-link") == errno.EACCES
    assert (tree.parent / "secret.txt").read_text() == "outside\n"
    assert not (tree.parent / "made").exists() and not (tree.parent / "stolen.txt").exists()
    # The share's folder itself cannot be removed or renamed away.
    assert _errno_of(rw.rmdir, "/") == errno.EACCES
    assert tree.is_dir()


def test_read_only_share_refuses_every_change(ro: paramiko.SFTPClient, tree: Path) -> None:
    before = sorted(os.listdir(tree))
    assert ro.open("/hello.txt").read() == b"hello\n"
    assert ro.stat("/hello.txt").st_size == 6
    for call in (
        lambda: ro.open("/hello.txt", "w"),
        lambda: ro.open("/hello.txt", "a"),
        lambda: ro.open("/hello.txt", "r+"),
        lambda: ro.open("/new.txt", "w"),
        lambda: ro.remove("/hello.txt"),
        lambda: ro.rename("/hello.txt", "/x.txt"),
        lambda: ro.posix_rename("/hello.txt", "/x.txt"),
        lambda: ro.mkdir("/d2"),
        lambda: ro.rmdir("/dir"),
        lambda: ro.chmod("/hello.txt", 0o777),
        lambda: ro.truncate("/hello.txt", 0),
        lambda: ro.symlink("/hello.txt", "/l2"),
        lambda: ro.utime("/hello.txt", (1, 1)),
    ):
        assert _errno_of(call) == errno.EACCES
    assert sorted(os.listdir(tree)) == before
    assert (tree / "hello.txt").read_text() == "hello\n"


def test_cli_share_options_build_the_share_list() -> None:
    import argparse

    from vm_backend.daemon.cli_machine import _shares_param, add_machine_parser

    parser = argparse.ArgumentParser()
    add_machine_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["machine", "init", "--share", "/srv/a b", "--share-ro", "/x/a b",
         "--share-transport", "sftp"]
    )
    assert _shares_param(args) == [
        {"host_path": "/srv/a b", "tag": "a-b", "read_only": False, "transport": "sftp"},
        {"host_path": "/x/a b", "tag": "a-b-2", "read_only": True, "transport": "sftp"},
    ]
    assert _shares_param(parser.parse_args(["machine", "set"])) is None
    assert _shares_param(parser.parse_args(["machine", "set", "--no-shares"])) == []
