"""PortForwarder without a VM: a fake SSH session (socketpairs) and diffs fed by hand."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from vm_backend.engine.models import Container, ContainerState, Health, PortBinding
from vm_backend.engine.monitor import Diff
from vm_backend.machine.portfwd import STATE_LISTENING, STATE_UDP, PortForwarder
from vm_backend.machine.ports import pick_free_port

Handler = Callable[[socket.socket], None]


class FakeChannel:
    """One end of a socketpair with the paramiko Channel methods the pump uses."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False

    def recv(self, n: int) -> bytes:
        try:
            return self.sock.recv(n)
        except OSError:
            return b""  # paramiko returns b"" on a closed channel

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def recv_stderr_ready(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


class FakeSSH:
    """direct_tcpip hands the guest end of a socketpair to ``handler`` on a thread."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler or echo
        self.opened: list[tuple[str, int]] = []
        self.fail = False
        self.threads: list[threading.Thread] = []

    def direct_tcpip(self, host: str, port: int) -> FakeChannel:
        self.opened.append((host, port))
        if self.fail:
            raise OSError("channel open refused")
        ours, guest = socket.socketpair()
        t = threading.Thread(target=self._run, args=(guest,), daemon=True)
        self.threads.append(t)
        t.start()
        return FakeChannel(ours)

    def _run(self, guest: socket.socket) -> None:
        with guest:
            self.handler(guest)


def echo(sock: socket.socket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def container(
    cid: str,
    ports: tuple[PortBinding, ...],
    state: ContainerState = ContainerState.RUNNING,
    name: str = "",
) -> Container:
    return Container(
        id=cid,
        name=name or f"c-{cid}",
        image="busybox",
        image_id="sha256:0",
        command="httpd",
        state=state,
        status="Up",
        health=Health.NONE,
        created=1.0,
        ports=ports,
    )


def added(*cs: Container) -> Diff[Container]:
    return Diff("container", added=cs)


def changed(*cs: Container) -> Diff[Container]:
    return Diff("container", changed=cs)


def removed(*ids: str) -> Diff[Container]:
    return Diff("container", removed=ids)


def listening(port: int) -> list[str]:
    """Addresses this process listens on at ``port`` (from the kernel's table)."""
    return sorted(
        c.laddr.ip
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    )


def connects(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(pred: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


@pytest.fixture
def fwd() -> Iterator[PortForwarder]:
    f = PortForwarder(FakeSSH(), "unix:///nonexistent")
    yield f
    f.stop()


def test_listener_appears_and_disappears(fwd: PortForwarder) -> None:
    port = pick_free_port()
    fwd.on_diff(added(container("a1", (PortBinding(80, "tcp", "0.0.0.0", port),))))
    (row,) = fwd.table()
    assert (row.container_id, row.container_name, row.protocol) == ("a1", "c-a1", "tcp")
    assert (row.guest_port, row.host_address, row.host_port) == (80, "127.0.0.1", port)
    assert row.state == STATE_LISTENING
    assert connects(port)

    t0 = time.monotonic()
    fwd.on_diff(removed("a1"))
    assert not connects(port)
    assert time.monotonic() - t0 < 2.0
    assert fwd.table() == []
    assert listening(port) == []


def test_stopped_container_closes_its_listener(fwd: PortForwarder) -> None:
    port = pick_free_port()
    c = container("s1", (PortBinding(80, "tcp", "", port),))
    fwd.on_diff(added(c))
    assert connects(port)
    exited = container("s1", (PortBinding(80, "tcp", "", port),), ContainerState.EXITED)
    fwd.on_diff(changed(exited))
    assert fwd.table() == []
    assert not connects(port)


def test_unpublished_and_created_ports_get_no_listener(fwd: PortForwarder) -> None:
    port = pick_free_port()
    fwd.on_diff(added(container("u1", (PortBinding(80, "tcp"),))))
    fwd.on_diff(added(container("u2", (PortBinding(80, "tcp", "", port),), ContainerState.CREATED)))
    assert fwd.table() == []
    assert listening(port) == []


def test_bytes_reach_the_guest_port_and_back() -> None:
    ssh = FakeSSH()
    fwd = PortForwarder(ssh, "unix:///nonexistent")
    port = pick_free_port()
    try:
        fwd.on_diff(added(container("e1", (PortBinding(80, "tcp", "", port),))))
        payload = os.urandom(3 * 1024 * 1024)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            got = bytearray()
            sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(1)))
            sender.start()
            while chunk := s.recv(65536):
                got += chunk
            sender.join()
        assert bytes(got) == payload
        # The channel goes to dockerd's proxy in the guest: its loopback, the host port.
        assert ssh.opened == [("127.0.0.1", port)]
    finally:
        fwd.stop()


def test_half_close_both_ways() -> None:
    seen: dict[str, bytes] = {}

    def guest(sock: socket.socket) -> None:
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        seen["request"] = data  # the client's EOF arrived as our EOF
        sock.sendall(b"reply after your EOF")
        sock.shutdown(socket.SHUT_WR)

    fwd = PortForwarder(FakeSSH(guest), "unix:///nonexistent")
    port = pick_free_port()
    try:
        fwd.on_diff(added(container("h1", (PortBinding(80, "tcp", "", port),))))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"request")
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(4096):
                got += chunk
        assert seen["request"] == b"request"
        assert got == b"reply after your EOF"
    finally:
        fwd.stop()


def test_connections_are_counted(fwd: PortForwarder) -> None:
    port = pick_free_port()
    fwd.on_diff(added(container("n1", (PortBinding(80, "tcp", "", port),))))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        assert fwd.table()[0].connections == 1
    assert wait_for(lambda: fwd.table()[0].connections == 0)


def test_busy_port_is_a_conflict_then_retried(fwd: PortForwarder) -> None:
    port = pick_free_port()
    other = socket.socket()
    other.bind(("127.0.0.1", port))
    other.listen()
    c = container("b1", (PortBinding(80, "tcp", "", port),))
    try:
        t0 = time.monotonic()
        fwd.on_diff(added(c))
        assert time.monotonic() - t0 < 1.0
        (row,) = fwd.table()
        assert row.state == f"conflict: 127.0.0.1:{port} is in use by another program"
    finally:
        other.close()
    # Any later diff (the monitor re-lists at least every 30 s) tries again.
    fwd.on_diff(Diff("container", full=True))
    assert fwd.table()[0].state == STATE_LISTENING
    assert connects(port)


def test_failed_channel_closes_the_client_only() -> None:
    ssh = FakeSSH()
    fwd = PortForwarder(ssh, "unix:///nonexistent")
    port = pick_free_port()
    try:
        fwd.on_diff(added(container("f1", (PortBinding(80, "tcp", "", port),))))
        ssh.fail = True
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(1) == b""  # closed, not hanging
        ssh.fail = False
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"ok")
            assert s.recv(2) == b"ok"
    finally:
        fwd.stop()


def test_loopback_only_by_default(fwd: PortForwarder) -> None:
    port = pick_free_port()
    fwd.on_diff(added(container("l1", (PortBinding(80, "tcp", "0.0.0.0", port),))))
    addrs = listening(port)
    assert "127.0.0.1" in addrs
    assert set(addrs) <= {"127.0.0.1", "::1"}
    assert "0.0.0.0" not in addrs and "::" not in addrs


def test_expose_on_lan_binds_all_interfaces_only_when_asked() -> None:
    fwd = PortForwarder(FakeSSH(), "unix:///nonexistent", expose_on_lan=True)
    p_all, p_lo, p_v6 = pick_free_port(), pick_free_port(), pick_free_port()
    try:
        fwd.on_diff(
            added(
                container("x1", (PortBinding(80, "tcp", "", p_all),)),
                container("x2", (PortBinding(80, "tcp", "127.0.0.1", p_lo),)),
                container("x3", (PortBinding(80, "tcp", "::", p_v6),)),
            )
        )
        assert listening(p_all) == ["0.0.0.0"]
        assert "0.0.0.0" not in listening(p_lo) and "127.0.0.1" in listening(p_lo)
        assert listening(p_v6) == ["0.0.0.0"]
        by_port = {r.host_port: r.host_address for r in fwd.table()}
        assert by_port == {p_all: "0.0.0.0", p_lo: "127.0.0.1", p_v6: "0.0.0.0"}
    finally:
        fwd.stop()


def test_dual_stack_listing_is_one_listener(fwd: PortForwarder) -> None:
    port = pick_free_port()
    ports = (PortBinding(80, "tcp", "0.0.0.0", port), PortBinding(80, "tcp", "::", port))
    fwd.on_diff(added(container("d1", ports)))
    assert len(fwd.table()) == 1
    assert listening(port).count("127.0.0.1") == 1


def test_udp_is_listed_not_forwarded(fwd: PortForwarder) -> None:
    port = pick_free_port()
    fwd.on_diff(added(container("p1", (PortBinding(53, "udp", "", port),))))
    (row,) = fwd.table()
    assert (row.protocol, row.state) == ("udp", STATE_UDP)


def test_host_port_offset_moves_only_the_host_side() -> None:
    ssh = FakeSSH()
    fwd = PortForwarder(ssh, "unix:///nonexistent", host_port_offset=1)
    port = pick_free_port()
    while connects(port + 1):
        port = pick_free_port()
    try:
        fwd.on_diff(added(container("o1", (PortBinding(80, "tcp", "", port),))))
        assert fwd.table()[0].host_port == port + 1
        with socket.create_connection(("127.0.0.1", port + 1)) as s:
            s.sendall(b"y")
            assert s.recv(1) == b"y"
        assert ssh.opened == [("127.0.0.1", port)]
    finally:
        fwd.stop()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_publish_unpublish_cycles_leak_nothing() -> None:
    ssh = FakeSSH()
    fwd = PortForwarder(ssh, "unix:///nonexistent")
    port = pick_free_port()
    c = container("z1", (PortBinding(80, "tcp", "", port),))

    def cycle() -> None:
        fwd.on_diff(added(c))
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        fwd.on_diff(removed("z1"))

    cycle()  # warm up: lazily created module state is not a leak
    for t in ssh.threads:
        t.join(2)
    base_fds, base_threads = _fds(), threading.active_count()
    for _ in range(20):
        cycle()
    for t in ssh.threads:
        t.join(2)
    assert wait_for(lambda: threading.active_count() <= base_threads)
    assert wait_for(lambda: _fds() <= base_fds), (base_fds, _fds())
    assert listening(port) == []
    fwd.stop()


def test_offset_past_the_last_port_is_an_error_row() -> None:
    fwd = PortForwarder(FakeSSH(), "unix:///nonexistent", host_port_offset=70000)
    try:
        fwd.on_diff(added(container("v1", (PortBinding(80, "tcp", "", 8080),))))
        (row,) = fwd.table()
        assert row.state == "error: 127.0.0.1:78080 is not a TCP port"
    finally:
        fwd.stop()
