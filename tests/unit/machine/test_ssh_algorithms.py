"""The SSH algorithms GuestSSH offers: only modern ones, the cheapest first, no downgrade.

Negotiation runs against a real SSH server on 127.0.0.1 (paramiko in server mode, whose
algorithm lists each test sets), so the client code under test runs unchanged.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import paramiko
import pytest

from vm_backend.machine import ssh as ssh_module
from vm_backend.machine.keys import MachineKeys, ensure_machine_keys
from vm_backend.machine.ssh import CIPHERS, MACS, GuestSSH, GuestSSHError

WEAK = ("cbc", "3des", "arcfour", "blowfish", "sha1", "md5", "none")


class _Server(paramiko.ServerInterface):
    def __init__(self, authorized: paramiko.PKey) -> None:
        self.authorized = authorized

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if key.asbytes() == self.authorized.asbytes():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED


class _AlgorithmServer:
    """A listening SSH server that offers only the given ciphers and MACs."""

    def __init__(self, keys: MachineKeys, ciphers: Sequence[str], macs: Sequence[str]) -> None:
        self.host_key = paramiko.Ed25519Key.from_private_key_file(str(keys.host.private_path))
        self.client = paramiko.Ed25519Key.from_private_key_file(str(keys.client.private_path))
        self.ciphers = tuple(ciphers)
        self.macs = tuple(macs)
        self.transports: list[paramiko.Transport] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            options = transport.get_security_options()
            options.ciphers = self.ciphers
            options.digests = self.macs
            transport.add_server_key(self.host_key)
            self.transports.append(transport)
            try:
                transport.start_server(server=_Server(self.client))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    def negotiated(self) -> tuple[str, str | None]:
        """(cipher, MAC) the last session agreed, as the server saw it."""
        t = self.transports[-1]
        return t.remote_cipher, t.remote_mac

    def close(self) -> None:
        self.listener.close()
        for transport in self.transports:
            transport.close()


@pytest.fixture
def keys(tmp_path: Path) -> MachineKeys:
    return ensure_machine_keys(tmp_path / "keys", "algo")


ServerFactory = Callable[[Sequence[str], Sequence[str]], _AlgorithmServer]


@pytest.fixture
def server_factory(keys: MachineKeys) -> Iterator[ServerFactory]:
    made: list[_AlgorithmServer] = []

    def make(ciphers: Sequence[str], macs: Sequence[str]) -> _AlgorithmServer:
        made.append(_AlgorithmServer(keys, ciphers, macs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _connect(port: int, keys: MachineKeys, ciphers: Sequence[str] | None = None,
             macs: Sequence[str] | None = None) -> GuestSSH:
    ssh = GuestSSH(port, keys.client.private_path, keys.host.public_openssh,
                   connect_timeout_s=10, ciphers=ciphers, macs=macs)
    ssh.connect()
    return ssh


def test_only_modern_algorithms_are_offered() -> None:
    for name in CIPHERS:
        assert name.startswith("aes") and ("gcm@openssh.com" in name or name.endswith("-ctr"))
    for name in MACS:
        assert name.startswith("hmac-sha2-")
    for weak in WEAK:
        assert not any(weak in name for name in CIPHERS + MACS), weak


def test_aes_gcm_is_preferred() -> None:
    # Measured (docs/benchmarks-relay.md): paramiko spends ~15% less CPU per relayed
    # request with AES-GCM (one AEAD call, no HMAC and no MAC comparison in Python).
    assert CIPHERS[0] == "aes128-gcm@openssh.com"
    # Where GCM is not offered, encrypt-then-MAC comes before encrypt-and-MAC.
    assert MACS[0] == "hmac-sha2-256-etm@openssh.com"


def test_a_server_offering_everything_gets_our_first_choice(
    server_factory: ServerFactory, keys: MachineKeys
) -> None:
    everything = paramiko.Transport._preferred_ciphers
    server = server_factory(everything, paramiko.Transport._preferred_macs)
    ssh = _connect(server.port, keys)
    try:
        assert server.negotiated()[0] == CIPHERS[0]
    finally:
        ssh.close()


def test_without_gcm_ctr_with_encrypt_then_mac_is_chosen(
    server_factory: ServerFactory, keys: MachineKeys
) -> None:
    server = server_factory(
        ("aes256-ctr", "aes128-ctr", "aes128-cbc"),
        ("hmac-sha1", "hmac-sha2-256", "hmac-sha2-256-etm@openssh.com"),
    )
    ssh = _connect(server.port, keys)
    try:
        assert server.negotiated() == ("aes128-ctr", "hmac-sha2-256-etm@openssh.com")
    finally:
        ssh.close()


def test_a_server_with_only_weak_algorithms_is_refused(
    server_factory: ServerFactory, keys: MachineKeys
) -> None:
    server = server_factory(("aes128-cbc", "3des-cbc"), ("hmac-sha1", "hmac-md5"))
    with pytest.raises(GuestSSHError, match="handshake"):
        _connect(server.port, keys)


def test_the_offer_can_be_narrowed_per_session(
    server_factory: ServerFactory, keys: MachineKeys
) -> None:
    server = server_factory(paramiko.Transport._preferred_ciphers,
                            paramiko.Transport._preferred_macs)
    ssh = _connect(server.port, keys, ciphers=["aes256-ctr"], macs=["hmac-sha2-512"])
    try:
        assert server.negotiated() == ("aes256-ctr", "hmac-sha2-512")
    finally:
        ssh.close()
    assert ssh_module.CIPHERS == CIPHERS  # the module default is untouched
