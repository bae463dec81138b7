"""PortForwarder end to end without a VM: real OpenSSH, the real local dockerd.

The sshd stand-in (sshd_fixtures) plays the guest's sshd; the local dockerd plays the
guest's. A busybox httpd container publishes ``-p P:80`` on a user-defined bridge network
(this CI's default bridge has no docker0), so dockerd's proxy holds P on this host, as it
would in the guest. The forwarder therefore listens on ``P + offset``
(``host_port_offset``, the test-only knob) and relays each connection over
``direct-tcpip`` to ``127.0.0.1:P`` through sshd: the same path as in the VM.

The 256 MiB transfer also runs through OpenSSH's ``ssh -N -L`` to the same sshd and port
and prints both rates (recorded in docs/benchmarks-ports.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.berth_cli import run_berth
from tests.integration.sshd_fixtures import *  # noqa: F403 - the sshd_server fixture
from tests.integration.sshd_fixtures import DOCKER_SOCK, SshdServer, need_sshd
from tests.openssh_reference import pinned_known_hosts, ssh_base, ssh_forward
from vm_backend.daemon.client import DaemonClient
from vm_backend.daemon.service import find_guest_image
from vm_backend.engine.client import EngineClient
from vm_backend.engine.run import RunRequest
from vm_backend.engine.specs import PortSpec
from vm_backend.errors import BerthError
from vm_backend.machine.hostinfo import Arch
from vm_backend.machine.portfwd import STATE_LISTENING, PortForwarder
from vm_backend.machine.ports import is_port_listening, pick_free_port
from vm_backend.machine.ssh import GuestSSH

pytestmark = pytest.mark.engine

TEST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
LABEL = ("berth.test", "ports")
OFFSET = 1
BIG = 256 * 1024 * 1024
# How fast the host follows the engine; the brief's bound, measured from the engine's
# answer to start/stop.
FOLLOW_S = 2.0
HTTPD = "mkdir -p /www && echo 'berth test' > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineClient]:
    need_sshd()
    try:
        client = EngineClient(f"unix://{DOCKER_SOCK}")
        client.inspect_image(TEST_IMAGE)
    except Exception as err:  # noqa: BLE001 - any failure means: not usable here
        pytest.skip(f"docker engine or {TEST_IMAGE} not available: {err}")
    yield client
    with contextlib.suppress(Exception):
        for c in client.api.containers(all=True, filters={"label": "=".join(LABEL)}):
            with contextlib.suppress(Exception):
                client.api.remove_container(c["Id"], force=True, v=True)
    client.close()


@pytest.fixture(scope="module")
def network(engine: EngineClient) -> Iterator[str]:
    name = f"berth-ports-{uuid.uuid4().hex[:8]}"
    engine.api.create_network(name, driver="bridge", labels=dict([LABEL]))
    yield name
    with contextlib.suppress(Exception):
        for c in engine.api.containers(all=True, filters={"label": "=".join(LABEL)}):
            with contextlib.suppress(Exception):
                engine.api.remove_container(c["Id"], force=True, v=True)
    with contextlib.suppress(Exception):
        engine.api.remove_network(name)


@pytest.fixture(scope="module")
def guest(sshd_server: SshdServer) -> Iterator[GuestSSH]:
    ssh = GuestSSH(
        sshd_server.port,
        sshd_server.keys.client.private_path,
        sshd_server.keys.host.public_openssh,
    )
    ssh.connect()
    yield ssh
    ssh.close()


@pytest.fixture
def forwarder(guest: GuestSSH) -> Iterator[PortForwarder]:
    fwd = PortForwarder(guest, f"unix://{DOCKER_SOCK}", host_port_offset=OFFSET)
    fwd.start()
    yield fwd
    fwd.stop()


def free_pair() -> int:
    """A port P with P and P + OFFSET both free (dockerd takes P, the forwarder P+OFFSET)."""
    for _ in range(50):
        port = pick_free_port()
        if not is_port_listening(port + OFFSET):
            return port
    raise RuntimeError("no two free neighbouring ports")


def run_httpd(engine: EngineClient, network: str, port: int, script: str = HTTPD) -> str:
    req = RunRequest(
        image=TEST_IMAGE,
        name=f"berth-ports-{uuid.uuid4().hex[:8]}",
        command=("sh", "-c", script),
        network=network,
        ports=(PortSpec(80, "tcp", "", port),),
        labels=(LABEL,),
    )
    return engine.run(req)


def get(url: str, timeout: float = 1.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body
    except OSError:
        return None


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    """Seconds until ``pred()`` held, or None if it did not within ``timeout``."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


def test_follows_a_container_start_and_stop(
    engine: EngineClient, network: str, forwarder: PortForwarder
) -> None:
    port = free_pair()
    url = f"http://127.0.0.1:{port + OFFSET}/"
    cid = run_httpd(engine, network, port)
    # httpd may need a moment after the engine reports the container started.
    assert wait_for(lambda: get(f"http://127.0.0.1:{port}/") == b"berth test\n", 10)
    up = wait_for(lambda: get(url) == b"berth test\n", FOLLOW_S)
    assert up is not None, f"no answer through the forward: {forwarder.table()}"
    (row,) = [r for r in forwarder.table() if r.container_id == cid]
    assert (row.state, row.host_address, row.host_port, row.guest_port) == (
        STATE_LISTENING,
        "127.0.0.1",
        port + OFFSET,
        80,
    )

    engine.api.stop(cid, timeout=1)
    down = wait_for(lambda: not is_port_listening(port + OFFSET), FOLLOW_S)
    assert down is not None, "the listener outlived the container by more than 2 s"
    assert get(url) is None
    assert all(r.container_id != cid for r in forwarder.table())
    print(f"\nforward up {up * 1000:.0f} ms after start; down {down * 1000:.0f} ms after stop")


def test_container_removed_while_a_client_is_connected(
    engine: EngineClient, network: str, forwarder: PortForwarder
) -> None:
    port = free_pair()
    cid = run_httpd(engine, network, port)
    assert wait_for(lambda: get(f"http://127.0.0.1:{port + OFFSET}/") is not None, 10)
    with socket.create_connection(("127.0.0.1", port + OFFSET), timeout=5) as idle:
        assert wait_for(lambda: sum(r.connections for r in forwarder.table()) >= 1, 2)
        engine.api.remove_container(cid, force=True)
        assert wait_for(lambda: not is_port_listening(port + OFFSET), FOLLOW_S) is not None
        idle.settimeout(5)
        # The forwarded connection is cut, not left hanging.
        with contextlib.suppress(ConnectionResetError):
            assert idle.recv(1) == b""


def _download(url: str) -> tuple[str, float]:
    """sha256 and seconds of a GET, read by curl in its own process.

    A client in this process would share the GIL with the forwarder's pump threads; in
    real use the client (a browser, curl) is another process, as here. The digest, checked
    against the container's own sha256sum, also proves the length.
    """
    t0 = time.monotonic()
    curl = subprocess.Popen(["curl", "-sSf", "--max-time", "300", url], stdout=subprocess.PIPE)
    assert curl.stdout is not None
    summer = subprocess.run(["sha256sum"], stdin=curl.stdout, capture_output=True, check=True)
    curl.stdout.close()
    assert curl.wait() == 0
    return summer.stdout.split()[0].decode(), time.monotonic() - t0


@contextlib.contextmanager
def ssh_tunnel(server: SshdServer, workdir: Path, local: int, remote: int) -> Iterator[None]:
    """OpenSSH's own TCP forward to the same sshd and port, pinned like ours."""
    known = pinned_known_hosts(workdir, server.port, server.keys.host.public_openssh)
    base = ssh_base(server.port, server.keys.client.private_path, known)
    forward = f"127.0.0.1:{local}:127.0.0.1:{remote}"
    with ssh_forward(base, forward, lambda: is_port_listening(local), timeout=15):
        yield


def test_256_mib_with_sha256_and_ssh_L_reference(
    engine: EngineClient,
    network: str,
    forwarder: PortForwarder,
    sshd_server: SshdServer,
    tmp_path: Path,
) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("needs the OpenSSH client for the reference figure")
    port = free_pair()
    script = (
        f"mkdir -p /www && head -c {BIG} /dev/urandom > /www/big"
        " && sha256sum /www/big > /www/big.sha256 && exec httpd -f -p 80 -h /www"
    )
    run_httpd(engine, network, port, script)
    direct = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: get(f"{direct}/big.sha256") is not None, 120), "file not ready"
    expected = (get(f"{direct}/big.sha256") or b"").split()[0].decode()

    via_berth = f"http://127.0.0.1:{port + OFFSET}"
    assert wait_for(lambda: get(f"{via_berth}/big.sha256") is not None, FOLLOW_S)
    results: dict[str, list[float]] = {"berth": [], "ssh -L": [], "direct": []}
    local = pick_free_port()
    with ssh_tunnel(sshd_server, tmp_path, local, port):
        urls = {
            "berth": f"{via_berth}/big",
            "ssh -L": f"http://127.0.0.1:{local}/big",
            "direct": f"{direct}/big",
        }
        for _ in range(3):  # interleaved, so load changes hit both alike
            for name, url in urls.items():
                digest, secs = _download(url)
                assert digest == expected, name
                results[name].append(BIG / secs / 1e6)
    line = "  ".join(f"{k}: {' / '.join(f'{v:.1f}' for v in vs)} MB/s" for k, vs in results.items())
    print(f"\n256 MiB, sha256 checked: {line}; load {os.getloadavg()[0]:.1f}")


# ---- through the real VM (optional; boots the guest under QEMU) ---------------------------




def _listening_addresses(pid: int, port: int) -> list[str]:
    return sorted(
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    )


@pytest.mark.vm
def test_published_port_through_the_vm() -> None:
    try:
        find_guest_image(Arch.AMD64)
    except BerthError as err:
        pytest.skip(f"no guest image: {err}")
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("needs the docker CLI to copy the test image into the VM")
    home = Path(f"/tmp/bpf-{uuid.uuid4().hex[:6]}")  # short: socket paths are limited
    home.mkdir(mode=0o700)
    daemon_pid: int | None = None
    try:
        init = run_berth(home, "machine", "init", "--cpus", "2", "--memory", "1536", "--disk", "8")
        assert init.returncode == 0, init.stderr
        t0 = time.monotonic()
        start = run_berth(home, "machine", "start")
        assert start.returncode == 0, start.stdout + start.stderr
        print(f"\nboot to engine-ready: {time.monotonic() - t0:.1f} s")
        daemon_pid = int(DaemonClient(home, autostart=False).call("ping")["pid"])
        host = run_berth(home, "machine", "env").stdout.strip().split("=", 1)[1]
        vm = {**os.environ, "DOCKER_HOST": host}
        saved = subprocess.run([docker, "save", TEST_IMAGE], capture_output=True, check=True)
        subprocess.run(
            [docker, "load"], input=saved.stdout, env=vm, capture_output=True, check=True,
            timeout=300,
        )  # fmt: skip
        port = pick_free_port()
        run = subprocess.run(
            [docker, "run", "-d", "--label", "=".join(LABEL), "-p", f"{port}:80",
             TEST_IMAGE, "sh", "-c", HTTPD],
            env=vm, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        cid = run.stdout.strip()
        # Under TCG the guest's httpd and proxy are slow to come up; the forward itself
        # follows the engine within milliseconds (the no-VM test bounds that at 2 s).
        t_run = time.monotonic()
        up = wait_for(lambda: get(f"http://127.0.0.1:{port}/", 5) == b"berth test\n", 60, 0.2)
        assert up is not None, run_berth(home, "machine", "status", "--json").stdout
        print(f"first answer on the host {time.monotonic() - t_run:.1f} s after docker run")
        status = json.loads(run_berth(home, "machine", "status", "--json").stdout)
        rows = [p for p in status["ports"] if p["container_id"] == cid]
        assert rows and rows[0]["state"] == STATE_LISTENING, status["ports"]
        assert (rows[0]["host_address"], rows[0]["host_port"]) == ("127.0.0.1", port)
        # A QEMU hostfwd rule (docs/ports.md): QEMU holds 127.0.0.1 only, berthd at most
        # the [::1] side.
        assert rows[0]["via"] == "hostfwd", rows
        assert _listening_addresses(int(status["pid"]), port) == ["127.0.0.1"]
        assert set(_listening_addresses(daemon_pid, port)) <= {"::1"}

        stop = subprocess.run(
            [docker, "stop", "-t", "1", cid], env=vm, capture_output=True, timeout=120,
            check=False,
        )  # fmt: skip
        assert stop.returncode == 0, stop.stderr
        down = wait_for(lambda: not is_port_listening(port), FOLLOW_S)
        assert down is not None, "the host listener outlived the container by more than 2 s"
        print(f"listener gone {down * 1000:.0f} ms after docker stop returned")
    finally:
        run_berth(home, "machine", "stop", "--timeout", "20")
        if daemon_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon_pid, signal.SIGTERM)
        shutil.rmtree(home, ignore_errors=True)
