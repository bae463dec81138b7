"""EngineSocketRelay's connection accounting on failure paths, with a fake SSH session.

The relay against a real sshd and dockerd is tested in tests/integration/test_relay.py;
these cover what a real session rarely does on demand: a channel whose close raises (the
transport dying at that moment), a pump thread that cannot be started, a stop while a
channel is being opened. Every path must close the client, close the channel and leave
the count exact.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from vm_backend.machine.relay import EngineSocketRelay
from vm_backend.machine.ssh import GuestSSHError


class FakeChannel:
    """One end of a socketpair with the paramiko Channel methods the relay uses."""

    def __init__(self, sock: socket.socket, close_raises: bool = False) -> None:
        self.sock = sock
        self.closed = False
        self.close_calls = 0
        self.close_raises = close_raises

    def recv(self, n: int) -> bytes:
        try:
            return self.sock.recv(n)
        except OSError:
            return b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def recv_stderr_ready(self) -> bool:
        return False

    def _peek(self) -> bytes | None:
        """What the guest end has sent and not been read: None if nothing, b"" at EOF."""
        if self.closed:
            return None
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    @property
    def eof_received(self) -> bool:
        return self._peek() == b""

    def recv_ready(self) -> bool:
        return bool(self._peek())

    def close(self) -> None:
        self.close_calls += 1
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        if self.close_raises:
            raise EOFError("transport died while closing")


class FakeSSH:
    """open_unix_socket hands the guest end of a socketpair to ``guest`` on a thread."""

    def __init__(
        self,
        guest: Callable[[socket.socket], None],
        *,
        close_raises: bool = False,
        gate: threading.Event | None = None,
        fail: bool = False,
    ) -> None:
        self.guest = guest
        self.close_raises = close_raises
        self.gate = gate
        self.fail = fail
        self.channels: list[FakeChannel] = []

    def open_unix_socket(self, path: str) -> Any:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise GuestSSHError("the VM refused a channel", "test")
        ours, theirs = socket.socketpair()
        threading.Thread(target=self._run, args=(theirs,), daemon=True).start()
        chan = FakeChannel(ours, self.close_raises)
        self.channels.append(chan)
        return chan

    def open_stdio(self, argv: Sequence[str]) -> Any:
        raise AssertionError("not used")

    def _run(self, sock: socket.socket) -> None:
        with sock:
            self.guest(sock)


def reply_and_close(sock: socket.socket) -> None:
    try:
        sock.recv(100)
        sock.sendall(b"answer")
    except OSError:
        pass  # the relay cut the connection: what some tests want


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def start(relays: list[EngineSocketRelay], ssh: FakeSSH, path: Path) -> EngineSocketRelay:
    relay = EngineSocketRelay(ssh, path)
    relay.start()
    relays.append(relay)
    return relay


def ask(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        try:
            s.sendall(b"question")
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            # The relay cut us before we asked (its pump could not start): no answer.
            return b""
        out = b""
        try:
            while chunk := s.recv(100):
                out += chunk
        except ConnectionResetError:
            # Cut with our question unread: a unix socket reports a reset, not an EOF.
            assert out == b""
        return out


def test_a_channel_close_that_raises_still_releases_the_connection(
    relays: list[EngineSocketRelay], sock_path: Path
) -> None:
    ssh = FakeSSH(reply_and_close, close_raises=True)
    relay = start(relays, ssh, sock_path)
    for _ in range(3):
        assert ask(sock_path) == b"answer"
    assert wait_for(lambda: relay.active_connections == 0)
    assert all(chan.close_calls >= 1 for chan in ssh.channels)


def test_a_refused_channel_closes_the_client_and_frees_the_slot(
    relays: list[EngineSocketRelay], sock_path: Path
) -> None:
    ssh = FakeSSH(reply_and_close, fail=True)
    relay = start(relays, ssh, sock_path)
    assert ask(sock_path) == b""
    assert wait_for(lambda: relay.active_connections == 0)
    ssh.fail = False
    assert ask(sock_path) == b"answer"


def test_a_pump_thread_that_cannot_start_releases_the_connection(
    relays: list[EngineSocketRelay], sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssh = FakeSSH(reply_and_close)
    relay = start(relays, ssh, sock_path)
    real_start = threading.Thread.start

    def refuse_down(self: threading.Thread) -> None:
        if self.name.startswith("berth-relay-down-"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse_down)
    assert ask(sock_path) == b""  # cut, not hanging
    assert wait_for(lambda: relay.active_connections == 0)
    assert ssh.channels and ssh.channels[0].closed


def test_an_accept_thread_that_cannot_start_a_pump_releases_the_connection(
    relays: list[EngineSocketRelay], sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssh = FakeSSH(reply_and_close)
    relay = start(relays, ssh, sock_path)
    real_start = threading.Thread.start

    def refuse_up(self: threading.Thread) -> None:
        if self.name.startswith("berth-relay-up-"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse_up)
    assert ask(sock_path) == b""
    assert wait_for(lambda: relay.active_connections == 0)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert ask(sock_path) == b"answer"


def test_stop_while_a_channel_is_opening_releases_it(sock_path: Path) -> None:
    gate = threading.Event()
    ssh = FakeSSH(reply_and_close, gate=gate)
    relay = EngineSocketRelay(ssh, sock_path)
    relay.start()
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(str(sock_path))
        assert wait_for(lambda: relay.active_connections == 1)
        stopper = threading.Thread(target=relay.stop)
        stopper.start()
        time.sleep(0.1)
        gate.set()  # the channel arrives after stop() aborted the connection
        stopper.join(10)
        assert wait_for(lambda: relay.active_connections == 0)
        assert wait_for(lambda: bool(ssh.channels) and ssh.channels[0].closed)
        client.settimeout(10)
        assert client.recv(10) == b""
    finally:
        client.close()
        relay.stop()
