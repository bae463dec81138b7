"""The guest agent against the real guest under QEMU (TCG here), through MachineService.

One boot for the module; the checks share it (docs/agent.md): hello and boot id, TCP and
UDP ports on the host's 127.0.0.1, a busy host port, the agent killed 10 times, the
guest clock set an hour wrong, and a QMP stop/cont.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from vm_backend.daemon.service import MachineService
from vm_backend.machine.agent import AgentClient, AgentSnapshot
from vm_backend.machine.hostinfo import detect_host
from vm_backend.machine.image import GuestImage
from vm_backend.machine.machine import MachineState
from vm_backend.machine.spec import MachineSpec

pytestmark = pytest.mark.vm

HOST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
DOCKER = shutil.which("docker") or "docker"
LABEL = "berth.test=agent"
HTTPD = "mkdir -p /www && echo 'berth test' > /www/index.html && exec httpd -f -p 80 -h /www"
TCP_PORT = 18080
BUSY_PORT = 18081
UDP_CONTAINER_PORT = 18082
UDP_GUEST_PORT = 18083


def udp_echo(port: int) -> str:
    """A UDP echo server for the guest's own python3 (the test image's busybox has none)."""
    return (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('0.0.0.0', {port}))\n"
        "while True:\n"
        "    d, a = s.recvfrom(65535)\n"
        "    s.sendto(b'echo:' + d, a)\n"
    )


# Run in the guest, the agent finds it in the guest's socket table (the fallback path).
UDP_ECHO = udp_echo(UDP_GUEST_PORT)
# The same server in a container: the busybox image with the guest's /usr mounted read-only
# (Debian's merged /usr: /lib and /lib64 are in it), so a published UDP port has a server.
UDP_CONTAINER_RUN = (
    "-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/usr/lib64:/lib64:ro",
    HOST_IMAGE, "/usr/bin/python3", "-c", udp_echo(9999),
)  # fmt: skip


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.1) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if pred():
            return time.monotonic() - started
        time.sleep(interval)
    return None


def http_get(port: int, timeout: float = 3.0) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data
    except OSError:
        return None


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def svc(guest_image: Path) -> Iterator[MachineService]:
    home = Path(f"/tmp/bag-{uuid.uuid4().hex[:6]}")  # short: unix socket path limit
    home.mkdir(mode=0o700)
    host = detect_host()
    service = MachineService(
        "agent", home=home, image=GuestImage.from_dir(guest_image), manage_context=False
    )
    service.create(MachineSpec(name="agent", cpus=min(2, host.cpus), memory_mib=1536, disk_gib=4))
    try:
        started = time.monotonic()
        status = service.start()
        assert status.state is MachineState.RUNNING, status
        print(f"\nboot to engine-ready: {time.monotonic() - started:.1f} s")
        saved = subprocess.run([DOCKER, "save", HOST_IMAGE], capture_output=True, check=True)
        load = docker(service, "load", stdin=saved.stdout, timeout=600)
        assert load.returncode == 0, load.stderr
        yield service
    finally:
        service.machine.kill()
        service.close()
        shutil.rmtree(home, ignore_errors=True)


def docker(
    svc: MachineService, *args: str, stdin: bytes | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [DOCKER, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "DOCKER_HOST": f"unix://{svc.engine_socket}"},
    )


def guest(svc: MachineService, argv: list[str]) -> bytes:
    assert svc.ssh is not None
    rc, out, err = svc.ssh.exec(argv, timeout=120)
    assert rc == 0, err
    return out


def agent(svc: MachineService) -> AgentClient:
    client = svc.agent
    assert client is not None, "berthd did not start an agent client"
    assert client.wait_for(lambda s: s.connected, 120), client.snapshot()
    return client


def udp_round_trips(port: int, within: float = 90.0) -> bool:
    """Once the server answers (within ``within`` s: python3 starts slowly under TCG),
    datagrams to 127.0.0.1:port come back echoed (some may be lost: UDP); a 60,000-byte
    one comes back whole."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(1)
        deadline = time.monotonic() + within
        while True:
            client.sendto(b"ping up?", ("127.0.0.1", port))
            try:
                if client.recvfrom(65535)[0] == b"echo:ping up?":
                    break
            except (TimeoutError, ConnectionRefusedError):
                pass
            if time.monotonic() > deadline:
                return False
        client.settimeout(2)
        answers = []
        for i in range(20):
            client.sendto(f"ping {i}".encode(), ("127.0.0.1", port))
            try:
                answers.append(client.recvfrom(65535)[0])
            except (TimeoutError, ConnectionRefusedError):
                continue
        if not answers or not all(a.startswith(b"echo:ping ") for a in answers):
            return False
        big = os.urandom(60000)
        client.settimeout(10)
        client.sendto(big, ("127.0.0.1", port))
        # Late echoes of the small ones may come first.
        return any(client.recvfrom(65535)[0] == b"echo:" + big for _ in range(25))


def row(svc: MachineService, port: int, protocol: str) -> dict[str, object] | None:
    for r in svc.status_json()["ports"]:
        if r["host_port"] == port and r["protocol"] == protocol:
            return dict(r)
    return None


def qemu_listens(svc: MachineService, port: int) -> list[str]:
    """Addresses QEMU's own process has bound on ``port`` (TCP listen or UDP)."""
    pid = svc.machine.status().pid
    assert pid is not None
    return sorted(
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.laddr.port == port and c.status in (psutil.CONN_LISTEN, psutil.CONN_NONE)
    )


def usernet_rules(svc: MachineService, port: int) -> int:
    """QEMU's hostfwd rules on host ``port`` (HMP ``info usernet``)."""
    qmp = svc.machine.qmp
    assert qmp is not None
    return sum(
        1
        for line in qmp.usernet_info().splitlines()
        if "[HOST_FORWARD]" in line and line.split()[3] == str(port)
    )


def guest_clock_error(svc: MachineService) -> float:
    """Guest minus host wall clock, seen over SSH (the exec's latency bounds the error)."""
    before = time.time()
    out = guest(svc, ["date", "+%s.%N"])
    after = time.time()
    return float(out.decode().strip()) - (before + after) / 2


def test_hello_carries_the_boot_id_and_resources(svc: MachineService) -> None:
    client = agent(svc)
    boot_id = guest(svc, ["cat", "/proc/sys/kernel/random/boot_id"]).decode().strip()
    assert client.wait_for(lambda s: s.memory_total_bytes is not None, 60)
    snap = client.snapshot()
    assert snap.boot_id == boot_id
    assert snap.protocol == 1 and snap.agent_version
    doc = svc.status_json()["agent"]
    assert doc["connected"] is True and doc["boot_id"] == boot_id
    assert doc["memory_total_bytes"] > 1024**3  # 1536 MiB VM
    assert 0 < doc["memory_used_bytes"] < doc["memory_total_bytes"]
    assert doc["disk_total_bytes"] > 3 * 1024**3  # 4 GiB data disk
    assert doc["last_heartbeat_age_s"] is not None


def test_tcp_port_published_then_closed(svc: MachineService) -> None:
    run = docker(
        svc,
        "run",
        "-d",
        "--label",
        LABEL,
        "--name",
        "agent-httpd",
        "-p",
        f"{TCP_PORT}:80",
        HOST_IMAGE,
        "sh",
        "-c",
        HTTPD,
    )
    assert run.returncode == 0, run.stderr
    returned = time.monotonic()
    took = wait_for(lambda: b"berth test" in (http_get(TCP_PORT) or b""), 60)
    assert took is not None, svc.status_json()["ports"]
    print(f"\nfirst answer on the host {time.monotonic() - returned:.2f} s after docker run")
    r = row(svc, TCP_PORT, "tcp")
    assert r is not None and r["state"] == "listening"
    assert r["container_name"] == "agent-httpd" and r["guest_port"] == 80
    # Served by a QEMU hostfwd rule (docs/ports.md): QEMU holds 127.0.0.1, slirp lists it.
    assert r["via"] == "hostfwd", r
    assert qemu_listens(svc, TCP_PORT) == ["127.0.0.1"]
    assert usernet_rules(svc, TCP_PORT) == 1
    stop = docker(svc, "rm", "-f", "agent-httpd")
    assert stop.returncode == 0, stop.stderr
    stopped = time.monotonic()
    assert wait_for(lambda: not listening(TCP_PORT), 60) is not None
    print(f"host port closed {time.monotonic() - stopped:.2f} s after docker rm -f")
    assert row(svc, TCP_PORT, "tcp") is None
    assert usernet_rules(svc, TCP_PORT) == 0  # the rule is removed, not just unused


def test_udp_published_and_forwarded(svc: MachineService) -> None:
    assert svc.ssh is not None
    echo = svc.ssh.open_stdio(["python3", "-c", UDP_ECHO])
    run = docker(
        svc,
        "run",
        "-d",
        "--label",
        LABEL,
        "--name",
        "agent-udp",
        "-p",
        f"{UDP_CONTAINER_PORT}:9999/udp",
        *UDP_CONTAINER_RUN,
    )
    try:
        assert run.returncode == 0, run.stderr
        # A container's UDP port: a host UDP socket on 127.0.0.1 only.
        assert (
            wait_for(
                lambda: (row(svc, UDP_CONTAINER_PORT, "udp") or {}).get("state") == "listening", 60
            )
            is not None
        ), svc.status_json()["ports"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(OSError):
            probe.bind(("127.0.0.1", UDP_CONTAINER_PORT))
        # A container's port on all interfaces: a QEMU hostfwd rule, QEMU's socket.
        assert (row(svc, UDP_CONTAINER_PORT, "udp") or {}).get("via") == "hostfwd"
        assert qemu_listens(svc, UDP_CONTAINER_PORT) == ["127.0.0.1"]
        # ...and datagrams round-trip to the container through it (and dockerd's proxy).
        assert udp_round_trips(UDP_CONTAINER_PORT), "no UDP answer from the container"
        # A guest program's UDP port, found in the guest's socket table: round trips.
        assert wait_for(lambda: row(svc, UDP_GUEST_PORT, "udp") is not None, 60) is not None
        r = row(svc, UDP_GUEST_PORT, "udp")
        assert r is not None and r["source"] == "listener" and r["container_name"] == "python3"
        assert r["via"] == "ssh"  # a guest program's listener: through the agent (SSH)
        assert udp_round_trips(UDP_GUEST_PORT), "no UDP answer through the forward"
    finally:
        echo.close()
        docker(svc, "rm", "-f", "agent-udp")
    assert wait_for(lambda: row(svc, UDP_CONTAINER_PORT, "udp") is None, 60) is not None


def test_busy_host_port_is_reported(svc: MachineService) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", BUSY_PORT))
        holder.listen(1)
        run = docker(
            svc,
            "run",
            "-d",
            "--label",
            LABEL,
            "--name",
            "agent-busy",
            "-p",
            f"{BUSY_PORT}:80",
            HOST_IMAGE,
            "sh",
            "-c",
            HTTPD,
        )
        try:
            assert run.returncode == 0, run.stderr
            assert wait_for(lambda: row(svc, BUSY_PORT, "tcp") is not None, 60) is not None
            state = str((row(svc, BUSY_PORT, "tcp") or {})["state"])
            assert state.startswith("conflict:") and "in use" in state, state
            holder.close()  # freed: bound on a later heartbeat, without a restart
            assert (
                wait_for(lambda: (row(svc, BUSY_PORT, "tcp") or {}).get("state") == "listening", 60)
                is not None
            ), row(svc, BUSY_PORT, "tcp")
            assert wait_for(lambda: b"berth test" in (http_get(BUSY_PORT) or b""), 60) is not None
        finally:
            docker(svc, "rm", "-f", "agent-busy")


def _fds_and_threads() -> tuple[int, int]:
    return len(os.listdir("/proc/self/fd")), threading.active_count()


def test_agent_killed_ten_times_comes_back(svc: MachineService) -> None:
    client = agent(svc)
    run = docker(
        svc,
        "run",
        "-d",
        "--label",
        LABEL,
        "--name",
        "agent-kill",
        "-p",
        f"{TCP_PORT}:80",
        HOST_IMAGE,
        "sh",
        "-c",
        HTTPD,
    )
    assert run.returncode == 0, run.stderr
    try:
        assert wait_for(lambda: b"berth test" in (http_get(TCP_PORT) or b""), 60) is not None
        time.sleep(1)
        before = _fds_and_threads()
        first_connects = client.snapshot().connects
        for i in range(10):
            old_pid = guest(svc, ["cat", "/run/berth/agent.pid"]).decode().strip()
            guest(svc, ["kill", "-9", old_pid])
            want = first_connects + i + 1

            def back(s: AgentSnapshot, want: int = want) -> bool:
                return s.connected and s.connects >= want

            assert client.wait_for(back, 120), (i, client.snapshot())
            new_pid = guest(svc, ["cat", "/run/berth/agent.pid"]).decode().strip()
            assert new_pid != old_pid
        assert wait_for(lambda: b"berth test" in (http_get(TCP_PORT) or b""), 30) is not None
        assert row(svc, TCP_PORT, "tcp") is not None

        # Give closed channels' threads a moment to end, then compare.
        def settled_back() -> bool:
            fds, threads = _fds_and_threads()
            return fds <= before[0] + 2 and threads <= before[1] + 1

        settled = wait_for(settled_back, 30)
        after = _fds_and_threads()
        print(f"\nfds/threads before {before}, after 10 kills {after}")
        assert settled is not None, (before, after, [t.name for t in threading.enumerate()])
    finally:
        docker(svc, "rm", "-f", "agent-kill")


def test_clock_an_hour_wrong_is_corrected(svc: MachineService) -> None:
    client = agent(svc)
    corrections = client.snapshot().clock_corrections
    wrong = int(time.time()) - 3600
    # date prints the time it set (+%s): proof the clock really went an hour back.
    assert guest(svc, ["date", "-s", f"@{wrong}", "+%s"]).decode().strip() == str(wrong)
    set_at = time.monotonic()
    took = wait_for(lambda: abs(guest_clock_error(svc)) < 1.0, 60, interval=0.5)
    assert took is not None, guest_clock_error(svc)
    print(f"\nclock an hour behind: right again {time.monotonic() - set_at:.1f} s after")
    assert took < 15
    assert client.wait_for(lambda s: s.clock_corrections > corrections, 30), client.snapshot()


def test_clock_after_qmp_stop_and_cont(svc: MachineService) -> None:
    client = agent(svc)
    assert wait_for(lambda: abs(guest_clock_error(svc)) < 1.0, 60, interval=0.5) is not None
    corrections = client.snapshot().clock_corrections
    svc.machine.pause()
    time.sleep(10)
    svc.machine.resume()
    resumed = time.monotonic()
    took = wait_for(lambda: abs(guest_clock_error(svc)) < 1.0, 60, interval=0.5)
    assert took is not None, guest_clock_error(svc)
    snap = client.snapshot()
    print(
        f"\nafter 10 s paused: clock right {time.monotonic() - resumed:.1f} s after cont;"
        f" corrections {corrections} -> {snap.clock_corrections}, connects {snap.connects}"
    )
    log = guest(svc, ["tail", "-n", "12", "/var/log/berth/agent.log"]).decode(errors="replace")
    print(f"agent log:\n{log}")
    assert took < 15
