"""PortForwarder with QEMU hostfwd rules: the bookkeeping, against a fake QEMU.

The fake's ``hostfwd_add`` binds the host address itself (a listening TCP socket, or a UDP
socket), as slirp does, and refuses a rule it cannot bind with QEMU's own words; so the
conflict path, the stale-rule path and "no rule, listener or fd leaks" are checked on real
sockets. The real QEMU side is tests/vm/test_agent.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.unit.machine.test_portfwd import FakeSSH, listening, wait_for
from vm_backend.machine.agent import GuestPort
from vm_backend.machine.loopthread import EventLoopThread
from vm_backend.machine.portfwd import (
    STATE_LISTENING,
    VIA_HOSTFWD,
    VIA_SSH,
    PortForwarder,
    parse_usernet_connections,
)
from vm_backend.machine.ports import pick_free_port
from vm_backend.machine.qmp import QmpError, SyncQmp

USERNET = """\
Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  15               * 23459       10.0.2.15    81     0     0
  TCP[ESTABLISHED]   12       127.0.0.1 23456       10.0.2.15    80     0     0
  TCP[SYN_SENT]      16       127.0.0.1 23456       10.0.2.15    80     0     0
  TCP[TIME_WAIT]     19       127.0.0.1 23456       10.0.2.15    80     0     0
  TCP[ESTABLISHED]   17     192.168.1.9 23459       10.0.2.15    81     0     0
  TCP[ESTABLISHED]   18        10.0.2.2 23459       10.0.2.15 40000     0     0
  TCP[HOST_FORWARD]  11       127.0.0.1 23456       10.0.2.15    80     0     0
  UDP[HOST_FORWARD]  14       127.0.0.1 23457       10.0.2.15    53     0     0
"""


class FakeQemu:
    """hostfwd_add/remove and ``info usernet`` with real bound sockets, like slirp's."""

    def __init__(self) -> None:
        self.rules: dict[tuple[str, str, int], tuple[socket.socket, int]] = {}
        self.added: list[tuple[str, str, int, int]] = []
        self.removed: list[tuple[str, str, int]] = []
        self.usernet = ""
        self.fail_next_add = ""
        self.lock = threading.Lock()

    def hostfwd_add(self, proto: str, host_addr: str, host_port: int, guest_port: int) -> None:
        rule = f"{proto}:{host_addr}:{host_port}-:{guest_port}"
        with self.lock:
            if self.fail_next_add:
                text, self.fail_next_add = self.fail_next_add, ""
                raise QmpError(f"QEMU could not add the forward {rule}: {text}")
            kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host_addr, host_port))
                if proto == "tcp":
                    sock.listen(8)
            except OSError:
                sock.close()
                raise QmpError(
                    f"QEMU could not add the forward {rule}: "
                    f"Could not set up host forwarding rule '{rule}'"
                ) from None
            self.rules[(proto, host_addr, host_port)] = (sock, guest_port)
            self.added.append((proto, host_addr, host_port, guest_port))

    def hostfwd_remove(self, proto: str, host_addr: str, host_port: int) -> None:
        with self.lock:
            entry = self.rules.pop((proto, host_addr, host_port), None)
            if entry is None:
                raise QmpError(
                    f"QEMU could not remove the forward {proto}:{host_addr}:{host_port}: "
                    f"host forwarding rule for {proto}:{host_addr}:{host_port} not found"
                )
            entry[0].close()
            self.removed.append((proto, host_addr, host_port))

    def usernet_info(self) -> str:
        return self.usernet

    def close(self) -> None:
        for sock, _ in self.rules.values():
            sock.close()
        self.rules.clear()


def port(
    p: int, *, protocol: str = "tcp", host_ip: str = "", source: str = "engine", cid: str = "c1"
) -> GuestPort:
    return GuestPort(
        protocol=protocol,
        port=p,
        container_port=80,
        host_ip=host_ip,
        container_id=cid,
        container_name=f"name-{cid}",
        source=source,
    )


@pytest.fixture
def qemu() -> Iterator[FakeQemu]:
    q = FakeQemu()
    yield q
    q.close()


@pytest.fixture
def fwd(qemu: FakeQemu) -> Iterator[PortForwarder]:
    f = PortForwarder(FakeSSH(), None, udp=True, hostfwd=qemu, reserved_ports=(2222,))
    yield f
    f.stop()


def test_usernet_counts_accepted_connections_per_host_address() -> None:
    counts = parse_usernet_connections(USERNET)
    assert counts == {("127.0.0.1", 23456): 2, ("192.168.1.9", 23459): 1}


def test_engine_port_on_all_interfaces_is_a_qemu_rule(
    qemu: FakeQemu, fwd: PortForwarder
) -> None:
    p = pick_free_port()
    fwd.set_guest_ports([port(p)])
    assert qemu.added == [("tcp", "127.0.0.1", p, p)]  # to the guest's published port
    (row,) = fwd.table()
    assert (row.state, row.via, row.host_address) == (STATE_LISTENING, VIA_HOSTFWD, "127.0.0.1")
    # One socket on 127.0.0.1, the (fake) QEMU's; ours only on [::1] (hostfwd takes IPv4
    # only), when the host has IPv6 loopback.
    assert listening(p).count("127.0.0.1") == 1
    assert set(listening(p)) <= {"127.0.0.1", "::1"}
    fwd.set_guest_ports([])
    assert qemu.removed == [("tcp", "127.0.0.1", p)] and qemu.rules == {}
    assert fwd.table() == [] and listening(p) == []


def test_connections_come_from_info_usernet(qemu: FakeQemu, fwd: PortForwarder) -> None:
    p = pick_free_port()
    fwd.set_guest_ports([port(p), port(p, protocol="udp")])
    qemu.usernet = USERNET.replace("23456", str(p))
    rows = {r.protocol: r for r in fwd.table()}
    assert rows["tcp"].connections == 2
    assert rows["udp"].connections is None  # slirp keeps no per-client UDP flow: unknown
    qemu.usernet = ""
    assert {r.protocol: r.connections for r in fwd.table()} == {"tcp": 0, "udp": None}


def test_loopback_and_listener_ports_stay_on_ssh(qemu: FakeQemu, fwd: PortForwarder) -> None:
    a, b = pick_free_port(), pick_free_port()
    fwd.set_guest_ports([port(a, host_ip="127.0.0.1"), port(b, source="listener", cid="")])
    assert qemu.added == []
    assert {r.via for r in fwd.table()} == {VIA_SSH}
    assert "127.0.0.1" in listening(a) and "127.0.0.1" in listening(b)


def test_udp_rule_without_the_agents_udp_path(qemu: FakeQemu) -> None:
    f = PortForwarder(FakeSSH(), None, udp=False, hostfwd=qemu)
    try:
        p = pick_free_port()
        f.set_guest_ports([port(p, protocol="udp")])
        assert qemu.added == [("udp", "127.0.0.1", p, p)]
        assert f.table()[0].state == STATE_LISTENING
    finally:
        f.stop()
    assert qemu.rules == {}


def test_expose_on_lan_rule_binds_all_interfaces(qemu: FakeQemu) -> None:
    f = PortForwarder(FakeSSH(), None, expose_on_lan=True, hostfwd=qemu)
    try:
        p = pick_free_port()
        f.set_guest_ports([port(p)])
        assert qemu.added == [("tcp", "0.0.0.0", p, p)]
        assert f.table()[0].host_address == "0.0.0.0"
    finally:
        f.stop()


def test_busy_port_is_a_plain_conflict_then_retried(qemu: FakeQemu, fwd: PortForwarder) -> None:
    p = pick_free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", p))
    holder.listen(1)
    try:
        fwd.set_guest_ports([port(p)])
        (row,) = fwd.table()
        assert row.state == f"conflict: 127.0.0.1:{p} is in use by another program"
        assert qemu.added == [] and qemu.removed == []  # "not found": not ours to remove
    finally:
        holder.close()
    fwd.refresh()
    assert fwd.table()[0].state == STATE_LISTENING and qemu.added


def test_udp_port_taken_with_so_reuseaddr_is_still_a_conflict(
    qemu: FakeQemu, fwd: PortForwarder
) -> None:
    # Slirp binds with SO_REUSEADDR, which on Linux would share a UDP port silently with
    # another SO_REUSEADDR socket; our own check binds without it.
    p = pick_free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", p))
        fwd.set_guest_ports([port(p, protocol="udp")])
        assert fwd.table()[0].state.startswith("conflict:")
        assert qemu.added == []


def test_qemu_refusing_the_rule_is_a_conflict_with_its_words(
    qemu: FakeQemu, fwd: PortForwarder
) -> None:
    p = pick_free_port()
    qemu.fail_next_add = f"Could not set up host forwarding rule 'tcp:127.0.0.1:{p}-:{p}'"
    fwd.set_guest_ports([port(p)])
    (row,) = fwd.table()
    assert row.state.startswith(f"conflict: 127.0.0.1:{p}: QEMU could not add the forward")
    assert "Could not set up host forwarding rule" in row.state
    assert listening(p) == []  # nothing of ours left bound (not even [::1])
    fwd.refresh()
    assert fwd.table()[0].state == STATE_LISTENING


def test_stale_rule_from_a_previous_berthd_is_replaced(qemu: FakeQemu) -> None:
    p = pick_free_port()
    qemu.hostfwd_add("tcp", "127.0.0.1", p, p)  # left by a berthd that was killed
    f = PortForwarder(FakeSSH(), None, hostfwd=qemu)
    try:
        f.set_guest_ports([port(p)])
        assert f.table()[0].state == STATE_LISTENING
        assert qemu.removed == [("tcp", "127.0.0.1", p)]
        assert list(qemu.rules) == [("tcp", "127.0.0.1", p)]
    finally:
        f.stop()


def test_the_ssh_forward_rule_is_never_removed(qemu: FakeQemu) -> None:
    p = pick_free_port()
    qemu.hostfwd_add("tcp", "127.0.0.1", p, 22)  # the VM's SSH forward
    f = PortForwarder(FakeSSH(), None, hostfwd=qemu, reserved_ports=(p,))
    try:
        f.set_guest_ports([port(p)])
        assert f.table()[0].state.startswith("conflict:")
        assert qemu.removed == [] and ("tcp", "127.0.0.1", p) in qemu.rules
    finally:
        f.stop()


def test_stop_removes_every_rule_and_survives_a_gone_qemu(qemu: FakeQemu) -> None:
    f = PortForwarder(FakeSSH(), None, udp=True, hostfwd=qemu)
    a, b = pick_free_port(), pick_free_port()
    f.set_guest_ports([port(a), port(b, protocol="udp")])
    assert len(qemu.rules) == 2
    f.stop()
    assert qemu.rules == {} and f.table() == []
    # QEMU gone: removal errors are swallowed, the forwarder still stops cleanly.
    g = PortForwarder(FakeSSH(), None, hostfwd=qemu)
    g.set_guest_ports([port(a)])
    qemu.close()
    g.stop()
    assert g.table() == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_twenty_publish_cycles_leak_no_rule_listener_or_fd(qemu: FakeQemu) -> None:
    f = PortForwarder(FakeSSH(), None, udp=True, hostfwd=qemu)
    p = pick_free_port()

    def cycle() -> None:
        f.set_guest_ports([port(p), port(p, protocol="udp")])
        assert len(qemu.rules) == 2
        f.set_guest_ports([])

    cycle()
    base_fds, base_threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    for _ in range(20):
        cycle()
    assert qemu.rules == {}
    assert len(qemu.added) == len(qemu.removed) == 42
    assert wait_for(lambda: threading.active_count() <= base_threads)
    assert wait_for(lambda: len(os.listdir("/proc/self/fd")) <= base_fds)
    assert listening(p) == []
    f.stop()


# ---- the same against a real QEMU (user networking, no guest: QEMU's slirp binds) ---------
QEMU = shutil.which("qemu-system-x86_64")


@pytest.fixture
def real_qmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SyncQmp, int]]:
    """A QEMU with ``-machine none`` and a user-net ``net0``; yields (QMP, QEMU's pid)."""
    if QEMU is None:
        pytest.skip("needs qemu-system-x86_64")
    folder = Path(tempfile.mkdtemp(prefix="bq-", dir="/tmp"))  # short: unix socket path
    qmp_path = folder / "qmp"
    proc = subprocess.Popen(
        [QEMU, "-machine", "none", "-nodefaults", "-display", "none",
         "-netdev", "user,id=net0,ipv6=off", "-qmp", f"unix:{qmp_path},server=on,wait=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    loop = EventLoopThread("test-hostfwd")
    qmp = SyncQmp(loop)
    try:
        qmp.connect(str(qmp_path), timeout=30, alive=lambda: proc.poll() is None)
        yield qmp, proc.pid
    finally:
        qmp.close()
        loop.stop()
        proc.kill()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def qemu_listens(pid: int, port: int) -> list[str]:
    return sorted(
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.laddr.port == port and c.status in (psutil.CONN_LISTEN, psutil.CONN_NONE)
    )


def test_real_qemu_rules_follow_the_ports(real_qmp: tuple[SyncQmp, int]) -> None:
    qmp, pid = real_qmp
    f = PortForwarder(FakeSSH(), None, udp=True, hostfwd=qmp)
    try:
        p, u = pick_free_port(), pick_free_port()
        f.set_guest_ports([port(p), port(u, protocol="udp")])
        rows = {r.protocol: r for r in f.table()}
        assert rows["tcp"].state == rows["udp"].state == STATE_LISTENING, rows
        assert qemu_listens(pid, p) == ["127.0.0.1"] and qemu_listens(pid, u) == ["127.0.0.1"]
        # A client accepted by slirp (no guest answers it) is a connection in info usernet.
        with socket.create_connection(("127.0.0.1", p), timeout=5):
            assert wait_for(lambda: {r.protocol: r.connections for r in f.table()}
                            == {"tcp": 1, "udp": None}, 30), f.table()
        f.set_guest_ports([port(u, protocol="udp")])
        assert qemu_listens(pid, p) == []
        assert "HOST_FORWARD" in qmp.usernet_info()  # the UDP rule only
    finally:
        f.stop()
    assert "HOST_FORWARD" not in qmp.usernet_info()


def test_real_qemu_busy_port_and_cycles(real_qmp: tuple[SyncQmp, int]) -> None:
    qmp, pid = real_qmp
    f = PortForwarder(FakeSSH(), None, hostfwd=qmp)
    p = pick_free_port()
    try:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", p))
            holder.listen(1)
            f.set_guest_ports([port(p)])
            assert f.table()[0].state == f"conflict: 127.0.0.1:{p} is in use by another program"
        f.refresh()
        assert f.table()[0].state == STATE_LISTENING
        for _ in range(20):
            f.set_guest_ports([])
            f.set_guest_ports([port(p)])
        assert qmp.usernet_info().count("HOST_FORWARD") == 1
        f.set_guest_ports([])
        assert qemu_listens(pid, p) == [] and "HOST_FORWARD" not in qmp.usernet_info()
        # A rule on this port already in QEMU that the forwarder did not make and may not
        # remove (the VM's SSH forward): a conflict, and the rule stays.
        qmp.hostfwd_add("tcp", "127.0.0.1", p, 22)
        g = PortForwarder(FakeSSH(), None, hostfwd=qmp, reserved_ports=(p,))
        g.set_guest_ports([port(p)])
        assert g.table()[0].state.startswith("conflict:")
        g.stop()
        assert qemu_listens(pid, p) == ["127.0.0.1"]  # left alone
    finally:
        f.stop()


def test_qmp_gone_is_an_error_not_a_conflict(qemu: FakeQemu, fwd: PortForwarder) -> None:
    p = pick_free_port()
    qemu.fail_next_add = "QMP is not connected (cannot run human-monitor-command)."
    fwd.set_guest_ports([port(p)])
    assert fwd.table()[0].state.startswith(f"error: 127.0.0.1:{p}: QEMU could not add")
    fwd.refresh()
    assert fwd.table()[0].state == STATE_LISTENING
