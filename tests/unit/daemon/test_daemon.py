"""berthd's control plane without booting a VM: protocol, permissions, autostart, errors."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vm_backend.daemon.client import DaemonClient, DaemonError, ensure_daemon
from vm_backend.daemon.protocol import LineReader, ProtocolError, encode
from vm_backend.daemon.server import make_server, run_server, socket_path


@pytest.fixture
def daemon(home: Path) -> Iterator[Path]:
    """berthd served from a thread of this process."""
    server = make_server(home)
    t = threading.Thread(target=run_server, args=(server,), daemon=True)
    t.start()
    yield socket_path(home)
    server.shutdown()
    t.join(5)
    assert not socket_path(home).exists()


def test_socket_and_dirs_are_owner_only(daemon: Path, home: Path) -> None:
    st = os.stat(daemon)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700


def test_ping_and_unknown_method(daemon: Path, home: Path) -> None:
    client = DaemonClient(home)
    pong = client.call("ping")
    assert pong["protocol"] == 1
    assert pong["pid"] == os.getpid()
    with pytest.raises(DaemonError, match="Unknown method"):
        client.call("machine.fly")


def test_machine_init_status_set_rm_without_booting(daemon: Path, home: Path) -> None:
    client = DaemonClient(home)
    spec = client.call(
        "machine.init",
        {"name": "t1", "cpus": 1, "memory_mib": 512, "disk_gib": 4, "accelerator": "tcg"},
    )
    assert spec["cpus"] == 1
    assert (home / "machines" / "t1" / "data.qcow2").exists()
    status = client.call("machine.status", {"name": "t1"})
    assert status["state"] == "stopped"
    assert status["spec"]["memory_mib"] == 512
    with pytest.raises(DaemonError, match="exists already"):
        client.call("machine.init", {"name": "t1"})
    grown = client.call("machine.set", {"name": "t1", "disk_gib": 5})
    assert grown["disk_gib"] == 5
    with pytest.raises(DaemonError):
        client.call("machine.set", {"name": "t1", "disk_gib": 4})  # never shrink
    assert [m["name"] for m in client.call("machine.list")] == ["t1"]
    client.call("machine.rm", {"name": "t1"})
    assert not (home / "machines" / "t1").exists()
    with pytest.raises(DaemonError, match="no machine named"):
        client.call("machine.status", {"name": "t1"})


def test_a_new_machine_shares_the_home_folder(
    daemon: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_home = tmp_path / "users" / "ada"
    user_home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(user_home))
    client = DaemonClient(home)
    spec = client.call("machine.init", {"name": "h1", "disk_gib": 4})
    assert [(s["host_path"], s["tag"], s["read_only"]) for s in spec["shares"]] == [
        (str(user_home), "home", False)
    ]
    # An explicit empty list means no shares; root's /root is never shared by default.
    assert client.call("machine.init", {"name": "h2", "disk_gib": 4, "shares": []})[
        "shares"] == []
    monkeypatch.setenv("HOME", "/root")
    assert client.call("machine.init", {"name": "h3", "disk_gib": 4})["shares"] == []
    # A folder the guest needs itself is refused in plain words, and nothing is created.
    with pytest.raises(DaemonError, match="the VM needs /etc for itself"):
        client.call("machine.set", {"name": "h2", "shares": [
            {"host_path": "/etc", "tag": "etc", "read_only": True}]})
    assert client.call("machine.spec", {"name": "h2"})["shares"] == []


def test_bad_requests_get_errors_not_a_dead_daemon(daemon: Path, home: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(daemon))
        sock.sendall(encode({"id": 7, "method": "ping", "params": [1, 2]}))
        reply = LineReader(sock).read()
        assert reply is not None and reply["id"] == 7 and "error" in reply
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(daemon))
        sock.sendall(b"this is not json\n")
        assert sock.recv(10) == b""  # dropped, nothing else
    client = DaemonClient(home)
    assert client.call("ping")["protocol"] == 1
    with pytest.raises(DaemonError, match="not allowed"):
        client.call("machine.init", {"name": "Bad Name!"})
    with pytest.raises(DaemonError, match="CPUs"):
        client.call("machine.init", {"name": "x", "cpus": 10_000})
    assert not (home / "machines" / "x").exists()


def test_line_reader_rejects_non_objects() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"[1,2]\n")
        with pytest.raises(ProtocolError):
            LineReader(b).read()


def test_other_user_cannot_connect(daemon: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n print('EACCES')\n"
        "else:\n print('CONNECTED')\n"
    )
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            probe,
            str(daemon),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.strip() == "EACCES", result.stderr


def test_autostart_races_leave_one_daemon(home: Path) -> None:
    """Four clients start berthd at once: one daemon process serves them all."""
    try:
        with ThreadPoolExecutor(4) as pool:
            paths = list(pool.map(lambda _: ensure_daemon(home), range(4)))
        assert len(set(paths)) == 1
        pids = {DaemonClient(home).call("ping")["pid"] for _ in range(4)}
        assert len(pids) == 1
        pid = pids.pop()
        found = subprocess.run(
            ["pgrep", "-f", f"vm_backend.daemon.server --home {home}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert found == [str(pid)]
    finally:
        subprocess.run(["pkill", "-f", f"vm_backend.daemon.server --home {home}"], check=False)


def test_status_json_via_cli(home: Path) -> None:
    env = {**os.environ, "BERTH_HOME": str(home)}
    try:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "vm_backend.cli",
                "machine",
                "init",
                "--cpus",
                "1",
                "--memory",
                "1g",
                "--disk",
                "4",
                "--accel",
                "tcg",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert "Created machine default" in run.stdout
        status = subprocess.run(
            [sys.executable, "-m", "vm_backend.cli", "machine", "status", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        doc = json.loads(status.stdout)
        assert doc["schema"] == 1 and doc["state"] == "stopped"
        assert doc["spec"]["memory_mib"] == 1024
        env_cmd = subprocess.run(
            [sys.executable, "-m", "vm_backend.cli", "machine", "env"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert env_cmd.returncode == 1
        assert "not running" in env_cmd.stderr and "Traceback" not in env_cmd.stderr
    finally:
        subprocess.run(["pkill", "-f", f"vm_backend.daemon.server --home {home}"], check=False)
