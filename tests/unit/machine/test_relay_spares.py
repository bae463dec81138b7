"""EngineSocketRelay's spare channels (berthd's engine socket), with a fake SSH session.

A spare is a channel to the guest's engine socket opened before a client needs it. These
tests pin what makes that safe: a client gets a spare and its replacement is opened
meanwhile; nothing is opened while no client comes; a spare the guest closed, or one too
old, is closed unused and skipped; a session that refuses channels is not retried in a
loop; stop() closes the spares. The real session (sshd, dockerd) runs them in
tests/integration/test_relay.py, whose streamlocal relay has berthd's spares.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.unit.machine.test_relay_accounting import FakeSSH, ask, reply_and_close, wait_for
from vm_backend.machine.relay import EngineSocketRelay


class CountingSSH(FakeSSH):
    def __init__(self, guest: Callable[[socket.socket], None], **kw: Any) -> None:
        super().__init__(guest, **kw)
        self.attempts = 0

    def open_unix_socket(self, path: str) -> Any:
        self.attempts += 1
        return super().open_unix_socket(path)


def start(relays: list[EngineSocketRelay], ssh: FakeSSH, path: Path,
          **kw: Any) -> EngineSocketRelay:
    relay = EngineSocketRelay(ssh, path, spare_channels=2, **kw)
    relay.start()
    relays.append(relay)
    return relay


def test_a_client_gets_a_spare_and_its_replacement_is_opened(
    sock_path: Path, relays: list[EngineSocketRelay]
) -> None:
    ssh = CountingSSH(reply_and_close)
    relay = start(relays, ssh, sock_path)
    assert wait_for(lambda: len(ssh.channels) == 2), "two spares before any client"
    first = ssh.channels[0]
    assert ask(sock_path) == b"answer"
    assert wait_for(lambda: first.closed), "the client's channel was the oldest spare"
    assert wait_for(lambda: len(ssh.channels) == 3), "its replacement"
    assert not ssh.channels[1].closed and not ssh.channels[2].closed
    assert wait_for(lambda: relay.active_connections == 0)


def test_nothing_is_opened_while_no_client_comes(
    sock_path: Path, relays: list[EngineSocketRelay]
) -> None:
    ssh = CountingSSH(reply_and_close)
    start(relays, ssh, sock_path)
    assert wait_for(lambda: ssh.attempts == 2)
    time.sleep(0.5)
    assert ssh.attempts == 2


def test_a_spare_the_guest_closed_is_skipped_and_closed(
    sock_path: Path, relays: list[EngineSocketRelay]
) -> None:
    hung_up: list[socket.socket] = []

    def guest(sock: socket.socket) -> None:
        if len(hung_up) < 2:  # the first two channels: the guest hangs up at once
            hung_up.append(sock)
            return
        reply_and_close(sock)

    ssh = CountingSSH(guest)
    start(relays, ssh, sock_path)
    assert wait_for(lambda: len(ssh.channels) == 2)
    assert wait_for(lambda: ssh.channels[0].eof_received and ssh.channels[1].eof_received)
    assert ask(sock_path) == b"answer"  # from a fresh channel, not a dead spare
    assert ssh.channels[0].closed and ssh.channels[1].closed


def test_a_spare_too_old_is_closed_unused(
    sock_path: Path, relays: list[EngineSocketRelay]
) -> None:
    ssh = CountingSSH(reply_and_close)
    start(relays, ssh, sock_path, spare_max_age_s=0.05)
    assert wait_for(lambda: len(ssh.channels) == 2)
    time.sleep(0.2)
    old = list(ssh.channels)
    assert ask(sock_path) == b"answer"
    assert all(chan.closed for chan in old)
    assert len(ssh.channels) >= 3


def test_a_session_that_refuses_channels_is_not_retried_in_a_loop(
    sock_path: Path, relays: list[EngineSocketRelay]
) -> None:
    ssh = CountingSSH(reply_and_close, fail=True)
    relay = start(relays, ssh, sock_path)
    assert wait_for(lambda: ssh.attempts == 1)
    time.sleep(0.3)
    assert ssh.attempts == 1, "one failed attempt per round, not a spin"
    assert ask(sock_path) == b""  # the client is closed without a reply
    assert wait_for(lambda: relay.active_connections == 0)
    time.sleep(0.3)
    # the client's own attempt, a round when it found no spare, one when it ended
    assert ssh.attempts <= 4
    ssh.fail = False
    assert ask(sock_path) == b"answer"


def test_stop_closes_the_spares(sock_path: Path, relays: list[EngineSocketRelay]) -> None:
    ssh = CountingSSH(reply_and_close)
    relay = start(relays, ssh, sock_path)
    assert wait_for(lambda: len(ssh.channels) == 2)
    relay.stop()
    assert all(chan.closed for chan in ssh.channels)
    assert not sock_path.exists()


def test_a_guest_that_hangs_up_on_every_connection_is_not_a_loop(
    sock_path: Path, relays: list[EngineSocketRelay]
) -> None:
    ssh = CountingSSH(lambda sock: None)  # every connection closed by the guest at once
    start(relays, ssh, sock_path)
    assert wait_for(lambda: ssh.attempts == 2)
    time.sleep(0.3)
    assert ssh.attempts == 2
    ask(sock_path)
    time.sleep(0.3)
    # the client's own channel, a refill when it found none, one when it ended
    assert ssh.attempts <= 7
