"""The serial console against a fake chardev socket (a plain unix socket server)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm_backend.machine.console import (
    BoundedLog,
    ConsoleError,
    ConsoleMarker,
    SerialConsole,
    parse_marker,
)


def test_parse_markers() -> None:
    stage = parse_marker(b"BERTH-STAGE sshd 3.25\r\n", now=5.0)
    assert stage == ConsoleMarker("stage", "sshd", 3.25, "", 5.0)
    fail = parse_marker(b"[  2.0] BERTH-FAIL datadisk mkfs failed: no space\n", now=1.0)
    assert fail == ConsoleMarker("fail", "datadisk", None, "mkfs failed: no space", 1.0)
    kernel = parse_marker(b"[    0.000000] Linux version 6.1.0-56-amd64 (debian...)\n")
    assert kernel is not None and kernel.kind == "kernel"
    assert parse_marker(b"BERTH-STAGE\n") is None
    assert parse_marker(b"hello\n") is None


class FakeChardev:
    """The QEMU side: accepts one connection, records what it receives."""

    def __init__(self, path: str) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(path)
        self.server.listen(1)
        self.conn: socket.socket | None = None
        self.received = bytearray()
        self._accepted = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        # close() may close the sockets between two recv() calls (EBADF): that is the end.
        with contextlib.suppress(OSError):
            self.conn, _ = self.server.accept()
            self._accepted.set()
            while True:
                data = self.conn.recv(4096)
                if not data:
                    return
                self.received += data

    def send(self, data: bytes) -> None:
        assert self._accepted.wait(5)
        assert self.conn is not None
        self.conn.sendall(data)

    def close(self) -> None:
        if self.conn is not None:
            # shutdown first: close() alone does not end a recv() blocked in another thread,
            # so the peer would never see EOF.
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)
            self.conn.close()
        self.server.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are short; pytest's tmp_path can be too long.
    d = Path(tempfile.mkdtemp(prefix="bc-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def wait_until(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met")


def test_console_reads_records_parses_and_writes(short_dir: Path) -> None:
    path = str(short_dir / "c.sock")
    fake = FakeChardev(path)
    console = SerialConsole(path, short_dir / "console.log", ring_bytes=64)
    markers: list[ConsoleMarker] = []
    console.on_marker(markers.append)
    console.connect(timeout=2)
    seen_a: list[bytes] = []
    seen_b: list[bytes] = []
    sub_a = console.subscribe(seen_a.append)
    sub_b = console.subscribe(seen_b.append)
    # A marker split across reads must still be recognised.
    fake.send(b"[ 0.0] Linux version 6.1\nBERTH-STA")
    time.sleep(0.05)
    fake.send(b"GE init 0.91\nBERTH-FAIL engine dockerd died\n")
    wait_until(lambda: len(markers) == 3)
    assert [m.kind for m in markers] == ["kernel", "stage", "fail"]
    assert markers[1].stage == "init" and markers[1].uptime == 0.91
    assert markers[2].reason == "dockerd died"
    wait_until(lambda: len(b"".join(seen_b)) == console.bytes_read)
    assert b"".join(seen_a) == b"".join(seen_b)
    sub_b.close()
    sub_a.write(b"ls\n")
    wait_until(lambda: bytes(fake.received) == b"ls\n")
    fake.send(b"x" * 100)
    wait_until(lambda: console.bytes_read >= 150)
    assert console.tail() == b"x" * 64  # the ring buffer stays bounded
    assert len(b"".join(seen_b)) < console.bytes_read
    console.close()
    assert b"BERTH-FAIL engine dockerd died" in (short_dir / "console.log").read_bytes()
    with pytest.raises(ConsoleError):
        console.write(b"late")
    fake.close()


def test_console_reports_qemu_going_away(short_dir: Path) -> None:
    path = str(short_dir / "c.sock")
    fake = FakeChardev(path)
    console = SerialConsole(path)
    closed = threading.Event()
    console.on_closed(closed.set)
    console.connect(timeout=2)
    fake.send(b"hi")
    fake.close()
    assert closed.wait(2)
    console.close()


def test_console_connect_fails_with_words(short_dir: Path) -> None:
    console = SerialConsole(str(short_dir / "missing.sock"))
    with pytest.raises(ConsoleError, match="Could not connect"):
        console.connect(timeout=0.1)
    with pytest.raises(ConsoleError):
        console.connect(timeout=5, alive=lambda: False)


def test_replay_gives_a_new_viewer_the_recent_output(short_dir: Path) -> None:
    path = str(short_dir / "c.sock")
    fake = FakeChardev(path)
    console = SerialConsole(path)
    console.connect(timeout=2)
    fake.send(b"earlier output\n")
    wait_until(lambda: console.bytes_read == 15)
    got: list[bytes] = []
    console.subscribe(got.append, replay=True)
    wait_until(lambda: got == [b"earlier output\n"])
    console.close()
    fake.close()


def test_a_slow_viewer_does_not_stall_the_console(short_dir: Path) -> None:
    path = str(short_dir / "c.sock")
    fake = FakeChardev(path)
    console = SerialConsole(path)
    markers: list[ConsoleMarker] = []
    console.on_marker(markers.append)
    console.connect(timeout=2)
    release = threading.Event()
    slow_got: list[bytes] = []

    def slow(data: bytes) -> None:
        release.wait(10)  # a client that stopped reading
        slow_got.append(data)

    fast_got: list[bytes] = []
    slow_sub = console.subscribe(slow)
    console.subscribe(fast_got.append)
    for i in range(3):
        fake.send(f"BERTH-STAGE init 0.{i}\n".encode())
        time.sleep(0.02)
    wait_until(lambda: len(markers) == 3, timeout=2)
    wait_until(lambda: b"0.2" in b"".join(fast_got), timeout=2)
    release.set()
    wait_until(lambda: b"0.2" in b"".join(slow_got), timeout=2)
    assert slow_sub.dropped_bytes == 0
    console.close()
    fake.close()


def test_a_full_viewer_queue_drops_for_that_viewer_only(short_dir: Path) -> None:
    console = SerialConsole(str(short_dir / "unused.sock"))
    block = threading.Event()
    sub = console.subscribe(lambda data: block.wait(10))
    sub._queue.maxsize = 2  # tiny queue for the test
    for _ in range(10):
        sub._offer(b"12345")
    assert sub.dropped_bytes > 0
    block.set()
    sub.close()


def test_bounded_log_rotates(tmp_path: Path) -> None:
    log = BoundedLog(tmp_path / "console.log", max_bytes=100)
    for _ in range(5):
        log.write(b"y" * 40)
    log.close()
    assert (tmp_path / "console.log").stat().st_size <= 100
    assert (tmp_path / "console.log.1").stat().st_size <= 100
    assert (tmp_path / "console.log").stat().st_mode & 0o777 == 0o600
