"""AgentClient against the real agent's session code on socketpairs, plus scripted fakes.

The "SSH session" hands out one end of a socketpair per ``open_unix_socket``; the other end
is served by :meth:`vm_backend.guest.agent.Agent.handle` (the code that runs in the guest,
without its engine/listener/resource watchers) or by a scripted fake for edge cases.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from paramiko.channel import Channel

from vm_backend.errors import BerthError
from vm_backend.guest import agent as ga
from vm_backend.machine.agent import AgentClient, AgentSnapshot, GuestPort
from vm_backend.machine.portfwd import PortForwarder


class FakeSSH:
    """``open_unix_socket`` → a socketpair whose far end ``serve`` handles on a thread."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.serve = serve
        self.opened: list[socket.socket] = []
        self.far: list[socket.socket] = []
        self.fail = False

    def open_unix_socket(self, path: str) -> Channel:
        if self.fail:
            raise BerthError("the VM refused a channel", "test")
        near, far = socket.socketpair()
        self.opened.append(near)
        self.far.append(far)
        threading.Thread(target=self.serve, args=(far,), daemon=True).start()
        return cast(Channel, near)

    def direct_tcpip(self, host: str, port: int) -> Channel:
        raise AssertionError("not used")


@pytest.fixture
def real_agent() -> ga.Agent:
    return ga.Agent(socket_path="/nonexistent", set_clock=lambda t: None)


@pytest.fixture
def clients() -> Iterator[list[AgentClient]]:
    made: list[AgentClient] = []
    yield made
    for c in made:
        c.stop()


def make_client(clients: list[AgentClient], ssh: FakeSSH, **kw: Any) -> AgentClient:
    kw.setdefault("heartbeat_s", 0.1)
    kw.setdefault("backoff_initial_s", 0.05)
    kw.setdefault("backoff_max_s", 0.2)
    client = AgentClient(ssh, **kw)
    clients.append(client)
    client.start()
    return client


def test_hello_snapshot_and_heartbeats(real_agent: ga.Agent, clients: list[AgentClient]) -> None:
    client = make_client(clients, FakeSSH(real_agent.handle))
    assert client.wait_for(lambda s: s.connected and s.rtt_s is not None, 10), client.snapshot()
    snap = client.snapshot()
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert snap.boot_id == f.read().strip()
    assert snap.protocol == ga.PROTOCOL_VERSION and snap.agent_version == ga.AGENT_VERSION
    assert snap.kernel == os.uname().release
    assert snap.connects == 1 and snap.error == ""
    assert snap.last_heartbeat_age_s is not None and snap.last_heartbeat_age_s < 5
    assert snap.clock_offset_s is not None and abs(snap.clock_offset_s) < 1


def test_ports_and_resources_updates_reach_the_callbacks(
    real_agent: ga.Agent, clients: list[AgentClient]
) -> None:
    seen: list[tuple[GuestPort, ...]] = []
    client = AgentClient(FakeSSH(real_agent.handle), heartbeat_s=0.1)
    clients.append(client)
    client.on_ports(seen.append)
    client.start()
    assert client.wait_for(lambda s: s.connected, 10)
    port = {
        "protocol": "tcp",
        "port": 8080,
        "container_port": 80,
        "host_ip": "",
        "container_id": "c1",
        "container_name": "web",
        "source": "engine",
    }
    real_agent._set_engine_ports([port])
    assert client.wait_for(lambda s: len(s.ports) == 1, 10)
    assert seen[-1] == (GuestPort.from_json(port),)
    real_agent._set_listener_ports([{**port, "port": 9000, "source": "listener"}])
    assert client.wait_for(lambda s: len(s.ports) == 2, 10)
    real_agent._set_engine_ports([])
    assert client.wait_for(lambda s: [p.port for p in s.ports] == [9000], 10)
    with real_agent.lock:
        real_agent.resources = {
            "memory": {"total_bytes": 100, "used_bytes": 40},
            "disk": {"total_bytes": 10},
            "cpu_percent": 12.5,
        }
        real_agent.resources_version += 1
        real_agent.lock.notify_all()
    assert client.wait_for(lambda s: s.cpu_percent == 12.5, 10)
    snap = client.snapshot()
    assert (snap.memory_total_bytes, snap.memory_used_bytes, snap.disk_total_bytes) == (100, 40, 10)


def test_heartbeats_carry_the_host_clock(clients: list[AgentClient]) -> None:
    set_to: list[float] = []
    agent = ga.Agent(socket_path="/nonexistent", set_clock=set_to.append)
    # The host's clock is 5 s ahead of this "guest": the agent sets its clock forward.
    client = make_client(clients, FakeSSH(agent.handle), wall_clock=lambda: time.time() + 5)
    assert client.wait_for(lambda s: s.clock_corrections >= 2, 10), client.snapshot()
    assert set_to and all(abs(t - (time.time() + 5)) < 1 for t in set_to)
    assert client.snapshot().clock_offset_s == pytest.approx(-5, abs=1)


def test_reconnects_when_the_agent_goes_away(
    real_agent: ga.Agent, clients: list[AgentClient]
) -> None:
    ssh = FakeSSH(real_agent.handle)
    client = make_client(clients, ssh)
    assert client.wait_for(lambda s: s.connected, 10)
    threads = threading.active_count()
    for i in range(10):
        ssh.far[-1].shutdown(socket.SHUT_RDWR)  # the agent dies
        want = i + 2

        def back(s: AgentSnapshot, want: int = want) -> bool:
            return s.connected and s.connects >= want

        assert client.wait_for(back, 10), i
    assert ssh.opened and all(s.fileno() == -1 for s in ssh.opened[:-1])  # closed
    time.sleep(0.3)
    assert threading.active_count() <= threads + 1


def test_backoff_while_the_channel_cannot_open(
    real_agent: ga.Agent, clients: list[AgentClient]
) -> None:
    ssh = FakeSSH(real_agent.handle)
    ssh.fail = True
    client = make_client(clients, ssh)
    assert client.wait_for(lambda s: "refused" in s.error, 10)
    assert not client.snapshot().connected
    ssh.fail = False
    assert client.wait_for(lambda s: s.connected, 10)


def _scripted(lines: list[dict[str, Any]]) -> Callable[[socket.socket], None]:
    def serve(conn: socket.socket) -> None:
        # The client may hang up at any point (e.g. after a refused hello).
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            for line in lines:
                conn.sendall(ga.encode(line))
            conn.settimeout(5)
            while conn.recv(65536):
                pass

    return serve


def test_a_newer_protocol_is_refused_plainly(clients: list[AgentClient]) -> None:
    ssh = FakeSSH(_scripted([{"type": "hello", "protocol": 2, "agent_version": "9"}]))
    client = make_client(clients, ssh)
    assert client.wait_for(lambda s: "protocol 2" in s.error, 10), client.snapshot()
    assert not client.snapshot().connected


def test_a_silent_agent_is_dropped(clients: list[AgentClient]) -> None:
    hello = {"type": "hello", "protocol": 1, "agent_version": "1", "boot_id": "b"}
    ssh = FakeSSH(_scripted([hello, {"type": "snapshot", "ports": []}]))
    client = make_client(clients, ssh, dead_after_s=0.5)
    assert client.wait_for(lambda s: "no word" in s.error, 10), client.snapshot()
    deadline = time.monotonic() + 10
    while len(ssh.opened) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ssh.opened) >= 2  # and it tried again


def test_stop_ends_the_thread_and_closes_the_channel(
    real_agent: ga.Agent, clients: list[AgentClient]
) -> None:
    ssh = FakeSSH(real_agent.handle)
    client = make_client(clients, ssh)
    assert client.wait_for(lambda s: s.connected, 10)
    client.stop()
    assert not any(t.name == "berth-agent" for t in threading.enumerate())
    assert ssh.opened[-1].fileno() == -1
    assert not client.snapshot().connected


# ---- UDP through the agent (PortForwarder + the agent's UDP flows) ------------------------
@pytest.fixture
def udp_echo() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = threading.Event()

    def run() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except OSError:
                continue
            sock.sendto(b"echo:" + data, addr)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    sock.close()


def _udp_port(port: int) -> GuestPort:
    return GuestPort("udp", port, 53, "", "c1", "dns", "engine")


def test_udp_datagrams_round_trip_through_agent_flows(real_agent: ga.Agent, udp_echo: int) -> None:
    ssh = FakeSSH(real_agent.handle)
    offset = 1
    while True:  # a free host port next to the echo server's
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", udp_echo + offset))
                break
            except OSError:
                offset += 1
    fwd = PortForwarder(ssh, None, udp=True, host_port_offset=offset)
    fwd.start()
    try:
        fwd.set_guest_ports([_udp_port(udp_echo)])
        (row,) = fwd.table()
        assert row.state == "listening" and row.host_port == udp_echo + offset
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        for n, c in enumerate(clients):
            c.settimeout(5)
            for i in range(5):
                c.sendto(f"{n}-{i}".encode(), ("127.0.0.1", row.host_port))
                assert c.recvfrom(65535)[0] == f"echo:{n}-{i}".encode()
        big = os.urandom(65000)
        clients[0].sendto(big, ("127.0.0.1", row.host_port))
        assert clients[0].recvfrom(65535)[0] == b"echo:" + big
        assert fwd.table()[0].connections == 3  # one flow per client address
        assert len(ssh.opened) == 3
        for c in clients:
            c.close()
        fwd.set_guest_ports([])
        assert fwd.table() == []
        assert all(s.fileno() == -1 for s in ssh.opened)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", row.host_port))  # released
    finally:
        fwd.stop()


def test_udp_busy_host_port_is_a_conflict(real_agent: ga.Agent) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        fwd = PortForwarder(FakeSSH(real_agent.handle), None, udp=True)
        try:
            fwd.set_guest_ports([_udp_port(port)])
            (row,) = fwd.table()
            assert row.state.startswith("conflict:") and "in use" in row.state
        finally:
            fwd.stop()


def test_agent_fed_tcp_rows_follow_set_guest_ports(real_agent: ga.Agent) -> None:
    fwd = PortForwarder(FakeSSH(real_agent.handle), None)
    fwd.start()
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        fwd.set_guest_ports([GuestPort("tcp", port, 80, "", "", "python3", "listener")])
        (row,) = fwd.table()
        assert (row.state, row.source, row.container_name) == ("listening", "listener", "python3")
        # Without udp=True a UDP port stays a row that says so.
        fwd.set_guest_ports([_udp_port(port)])
        assert fwd.table()[0].state == "udp: not forwarded yet"
    finally:
        fwd.stop()


def test_a_freed_host_port_is_bound_on_a_later_refresh(real_agent: ga.Agent) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    fwd = PortForwarder(FakeSSH(real_agent.handle), None, retry_interval_s=0.2)
    try:
        fwd.set_guest_ports([GuestPort("tcp", port, 80, "", "c1", "web", "engine")])
        assert fwd.table()[0].state.startswith("conflict:")
        holder.close()
        fwd.refresh()  # too early: rate-limited
        assert fwd.table()[0].state.startswith("conflict:")
        time.sleep(0.3)
        fwd.refresh()
        assert fwd.table()[0].state == "listening"
    finally:
        holder.close()
        fwd.stop()


def test_one_heartbeat_in_flight_at_a_time(clients: list[AgentClient]) -> None:
    """An agent that stops answering (a paused VM) gets one heartbeat, not a backlog."""
    received: list[dict[str, Any]] = []
    hello = {"type": "hello", "protocol": 1, "agent_version": "1", "boot_id": "b"}

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            reader = ga.LineReader()
            conn.recv(65536)
            conn.sendall(ga.encode(hello) + ga.encode({"type": "snapshot", "ports": []}))
            conn.settimeout(5)
            while data := conn.recv(65536):
                received.extend(ga.decode(line) for line in reader.feed(data))

    client = make_client(clients, FakeSSH(serve), heartbeat_s=0.05)
    assert client.wait_for(lambda s: s.connected, 10)
    time.sleep(1.0)  # 20 heartbeat periods
    assert [m["type"] for m in received] == ["heartbeat"]


def test_a_restarted_agents_count_replaces_the_old_one_on_connect(
    clients: list[AgentClient],
) -> None:
    """The snapshot after hello carries the new agent process's clock count, so nothing
    compares against the dead process's count until the next heartbeat."""
    hello = {"type": "hello", "protocol": 1, "agent_version": "1", "boot_id": "b"}
    counts = iter([3, 0])

    def serve(conn: socket.socket) -> None:
        clock = {"guest_time": time.time(), "corrections": next(counts), "last_offset_s": 0}
        _scripted([hello, {"type": "snapshot", "ports": [], "clock": clock}])(conn)

    ssh = FakeSSH(serve)
    # Heartbeats far apart: only the snapshots can carry the counts.
    client = make_client(clients, ssh, heartbeat_s=60)
    assert client.wait_for(lambda s: s.connected and s.clock_corrections == 3, 10)
    ssh.far[-1].shutdown(socket.SHUT_RDWR)  # the agent dies; a new one starts
    assert client.wait_for(lambda s: s.connected and s.connects >= 2, 10), client.snapshot()
    assert client.snapshot().clock_corrections == 0
