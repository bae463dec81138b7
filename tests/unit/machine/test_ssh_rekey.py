"""A channel closed by the guest just as a key re-exchange starts must not kill the session.

paramiko's reader thread answers the guest's CHANNEL_CLOSE itself; during a re-key that
answer used to wait for the re-key, which only that same thread can finish: the transport
froze (30 s by default) and died with every channel on it. The server here is a real SSH
server (paramiko in server mode) that closes the channel the moment it sees our KEXINIT,
before sending its own, so the CLOSE reaches us inside the re-key every time.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from tests.unit.machine.test_ssh_algorithms import _Server
from vm_backend.machine.keys import MachineKeys, ensure_machine_keys
from vm_backend.machine.ssh import GuestSSH


class _ClosingServerTransport(paramiko.Transport):
    """Closes ``close_on_rekey`` (its side of a channel) when the client starts a re-key."""

    close_on_rekey: Any = None
    rekeys_seen = 0

    def _negotiate_keys(self, m: paramiko.Message) -> None:
        if self.initial_kex_done:
            self.rekeys_seen += 1
            if self.close_on_rekey is not None:
                self.close_on_rekey.close()  # CHANNEL_CLOSE goes out before our KEXINIT
        base: Any = super()
        base._negotiate_keys(m)


@pytest.fixture
def keys(tmp_path: Path) -> MachineKeys:
    return ensure_machine_keys(tmp_path / "keys", "rekey")


@pytest.fixture
def server(keys: MachineKeys) -> Iterator[tuple[int, list[_ClosingServerTransport]]]:
    host_key = paramiko.Ed25519Key.from_private_key_file(str(keys.host.private_path))
    client = paramiko.Ed25519Key.from_private_key_file(str(keys.client.private_path))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    transports: list[_ClosingServerTransport] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            transport = _ClosingServerTransport(conn)
            transport.add_server_key(host_key)
            transports.append(transport)
            try:
                transport.start_server(server=_SessionServer(client))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], transports
    finally:
        listener.close()
        for transport in transports:
            transport.close()


class _SessionServer(_Server):
    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


def test_a_channel_closed_during_a_re_key_leaves_the_session_alive(
    server: tuple[int, list[_ClosingServerTransport]], keys: MachineKeys
) -> None:
    port, transports = server
    ssh = GuestSSH(port, keys.client.private_path, keys.host.public_openssh, probe_interval_s=60)
    ssh.connect()
    try:
        transport: Any = ssh._active_transport(5)
        # Fail in seconds, not paramiko's 30, if the reader thread waits for itself.
        transport.clear_to_send_timeout = 5.0
        for _ in range(3):
            chan = transport.open_session(timeout=10)
            server_side = transports[-1].accept(10)
            assert server_side is not None
            transports[-1].close_on_rekey = server_side
            seen = transports[-1].rekeys_seen
            transport.renegotiate_keys()  # returns when the re-key is complete
            assert transports[-1].rekeys_seen == seen + 1
            assert transport.is_active(), "the re-key killed the transport"
            # Our CLOSE answer was held during the re-key and sent after it.
            deadline = time.monotonic() + 10
            while not chan.closed and time.monotonic() < deadline:
                time.sleep(0.01)
            assert chan.closed
        # The same transport still carries new channels.
        again = transport.open_session(timeout=10)
        again.close()
        assert transport is ssh._active_transport(5)
    finally:
        ssh.close()
