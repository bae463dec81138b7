"""Forwarded ports seen from another machine: a client in its own network namespace,
joined to this host by a veth pair, cannot reach a forwarded port unless the per-VM LAN
opt-in is set (issue 6), through Berth's own listener and through a QEMU hostfwd rule
(a real QEMU without a guest). Needs root and iproute2; skipped otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.unit.machine import test_portfwd_hostfwd as hostfwd_tests
from tests.unit.machine.test_portfwd import FakeSSH, added, container, wait_for
from vm_backend.engine.models import PortBinding
from vm_backend.machine.portfwd import PortForwarder
from vm_backend.machine.ports import pick_free_port
from vm_backend.machine.qmp import SyncQmp

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)

HOST_IP, PEER_IP = "10.213.77.1", "10.213.77.2"
real_qmp = hostfwd_tests.real_qmp  # the fixture: a real QEMU with user networking
guest_port = hostfwd_tests.port

# Run inside the namespace: connect to the host's veth address, send, expect the echo.
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.sendall(b"ping")
        s.shutdown(socket.SHUT_WR)
        print(s.recv(16).decode() or "empty")
except OSError as e:
    print("refused" if isinstance(e, ConnectionRefusedError) else f"error {e}")
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def peer() -> Iterator[str]:
    """A network namespace whose only link is a veth pair to this host."""
    ns = f"berth-t-{uuid.uuid4().hex[:6]}"
    host_if, peer_if = f"bh{ns[-6:]}", f"bp{ns[-6:]}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        ip("link", "set", peer_if, "netns", ns)
        ip("addr", "add", f"{HOST_IP}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{PEER_IP}/30", "dev", peer_if)
        ip("-n", ns, "link", "set", peer_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def from_peer(ns: str, port: int) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, HOST_IP, str(port)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    return out.stdout.strip() or out.stderr.strip()


def forward(expose_on_lan: bool) -> tuple[PortForwarder, int]:
    port = pick_free_port()
    fwd = PortForwarder(FakeSSH(), "unix:///nonexistent", expose_on_lan=expose_on_lan)
    fwd.on_diff(added(container("n1", (PortBinding(80, "tcp", "0.0.0.0", port),))))
    assert wait_for(lambda: any(r.host_port == port for r in fwd.table()))
    return fwd, port


def test_another_machine_cannot_reach_a_forwarded_port_by_default(peer: str) -> None:
    fwd, port = forward(expose_on_lan=False)
    try:
        assert from_peer(peer, port) == "refused"
    finally:
        fwd.stop()


def test_with_the_lan_opt_in_another_machine_can(peer: str) -> None:
    fwd, port = forward(expose_on_lan=True)
    try:
        assert from_peer(peer, port) == "ping"
    finally:
        fwd.stop()


# ---- the same with a QEMU hostfwd rule (a real QEMU's slirp binds; no guest) --------------
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("connected")
except OSError as e:
    print("refused" if isinstance(e, ConnectionRefusedError) else f"error {e}")
"""


def connect_from_peer(ns: str, port: int) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, HOST_IP, str(port)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    return out.stdout.strip() or out.stderr.strip()


@pytest.mark.parametrize("expose_on_lan", [False, True])
def test_hostfwd_rule_reaches_the_lan_only_on_the_opt_in(
    peer: str, real_qmp: tuple[SyncQmp, int], expose_on_lan: bool
) -> None:
    qmp, _pid = real_qmp
    port = pick_free_port()
    fwd = PortForwarder(FakeSSH(), None, expose_on_lan=expose_on_lan, hostfwd=qmp)
    try:
        fwd.set_guest_ports([guest_port(port)])
        (row,) = fwd.table()
        assert (row.state, row.via) == ("listening", "hostfwd"), row
        assert connect_from_peer(peer, port) == ("connected" if expose_on_lan else "refused")
    finally:
        fwd.stop()
