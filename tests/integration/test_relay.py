"""The engine socket relay and GuestSSH against a real OpenSSH server and the real dockerd.

A local sshd (see sshd_fixtures) stands in for the helper VM's sshd; the "guest"
docker.sock it forwards to is the host's /var/run/docker.sock. Every relay test runs with
both channel kinds (direct-streamlocal and docker system dial-stdio).

Run: ``pytest -m engine tests/integration/test_relay.py`` as root with openssh-server,
dockerd on /var/run/docker.sock and the berth-test/busybox image (.ci/services.sh).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import paramiko
import psutil
import pytest
from docker.models.containers import Container

from tests.integration.sshd_fixtures import (
    DOCKER_SOCK,
    SshdServer,
    need_sshd,
    sshd_server,
    start_sshd,
)
from vm_backend.machine.keys import ensure_machine_keys
from vm_backend.machine.ports import pick_free_port
from vm_backend.machine.relay import (
    ENGINE_SPARE_CHANNELS,
    EngineSocketRelay,
    RelayMechanism,
)
from vm_backend.machine.ssh import GuestSSH, GuestSSHError, SSHState

__all__ = ["sshd_server"]  # re-exported fixture: pytest finds it through this module

pytestmark = pytest.mark.engine

IMAGE = "berth-test/busybox:latest"
DOCKER_CLI = "/usr/local/bin/docker"
LABEL = {"berth-test": "relay"}
# Containers run with --network none: the relay is what is under test, and the bridge is
# shared with other suites that restart dockerd on this machine.


def _engine_up() -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(DOCKER_SOCK)
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.")
    except OSError:
        return False


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module", autouse=True)
def _need_engine() -> None:
    need_sshd()
    if not _engine_up():
        pytest.skip(f"no docker engine on {DOCKER_SOCK}")


@pytest.fixture(scope="module")
def guest(sshd_server: SshdServer) -> Iterator[GuestSSH]:
    ssh = GuestSSH(
        sshd_server.port,
        sshd_server.keys.client.private_path,
        sshd_server.keys.host.public_openssh,
    )
    ssh.connect()
    try:
        yield ssh
    finally:
        ssh.close()


@pytest.fixture(scope="module", params=list(RelayMechanism), ids=lambda m: m.value)
def relay(
    request: pytest.FixtureRequest, guest: GuestSSH, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineSocketRelay]:
    path = tmp_path_factory.mktemp("relay") / "run" / "docker.sock"
    # streamlocal as berthd runs it, with spare channels; dial-stdio opens per client.
    spares = ENGINE_SPARE_CHANNELS if request.param is RelayMechanism.STREAMLOCAL else 0
    r = EngineSocketRelay(guest, path, mechanism=request.param, spare_channels=spares)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def remove_test_containers() -> None:
    api = docker.APIClient(base_url=f"unix://{DOCKER_SOCK}")
    try:
        for c in api.containers(all=True, filters={"label": "berth-test=relay"}):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(c["Id"], force=True)
    finally:
        api.close()


@pytest.fixture
def client(relay: EngineSocketRelay) -> Iterator[docker.DockerClient]:
    c = docker.DockerClient(base_url=relay.url, timeout=60)
    try:
        yield c
    finally:
        c.close()
        remove_test_containers()


def run_detached(client: docker.DockerClient, *cmd: str, **kw: object) -> Container:
    return client.containers.run(
        IMAGE, list(cmd), detach=True, labels=LABEL, name=f"berth-relay-{uuid.uuid4().hex[:8]}",
        network_mode="none", **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(autouse=True)
def _relay_drains(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test on the shared relay must leave it with no connection.

    The relay is module-scoped, so a connection one test leaves open is counted by the
    next test that checks ``active_connections``; checking after each test blames the
    test that leaked. (A leaked hijacked socket once made test_twenty_parallel_clients
    fail in full CI runs; see close_hijacked.) Runs after the test's own fixtures
    (``client``) are torn down.
    """
    yield
    if "relay" in request.fixturenames:
        relay: EngineSocketRelay = request.getfixturevalue("relay")
        wait_until(lambda: relay.active_connections == 0, what="this test's connections to end")


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Run the test with the cyclic garbage collector off.

    docker-py keeps the HTTP response of a hijacked stream (exec_start/attach_socket with
    socket=True) alive through a reference cycle (``sock._response = response``), and the
    response's file object holds the socket open. So ``raw.close()`` alone closes the
    file descriptor only when a full collection finds the cycle: within milliseconds in
    a short run, but in a long full CI run (a large heap, rare full collections) long
    after the test, with the relay rightly keeping the connection until the client
    hangs up. With the collector off that is deterministic.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def close_hijacked(sock: Any) -> None:
    """Really close a docker-py hijacked-stream socket (see ``no_gc``).

    ``sock`` is the ``socket.SocketIO`` docker-py returns; closing it drops the file
    object's reference, and closing the socket under it then closes the descriptor.
    """
    raw: socket.socket = sock._sock
    sock.close()
    raw.close()
    assert raw.fileno() == -1, "the hijacked socket is still open"


def recv_all(sock: socket.socket, timeout: float = 30.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------- docker-py


def test_ping_version_and_list(client: docker.DockerClient) -> None:
    assert client.ping()
    assert client.version()["ApiVersion"]
    assert isinstance(client.api.containers(all=True), list)
    # One call, not images.list(): that inspects every image, and other suites on this
    # engine remove theirs concurrently.
    assert any(IMAGE in (img.get("RepoTags") or []) for img in client.api.images())


def test_run_and_read_logs(client: docker.DockerClient) -> None:
    c = run_detached(client, "sh", "-c", "echo out-line; echo err-line >&2")
    assert c.wait(timeout=30)["StatusCode"] == 0
    assert c.logs(stdout=True, stderr=False) == b"out-line\n"
    assert c.logs(stdout=False, stderr=True) == b"err-line\n"


def test_exec_with_tty_over_the_raw_socket(
    client: docker.DockerClient, relay: EngineSocketRelay, no_gc: None
) -> None:
    c = run_detached(client, "sleep", "60")
    api = client.api
    exec_id = api.exec_create(c.id, ["sh"], stdin=True, tty=True)["Id"]
    sock = api.exec_start(exec_id, socket=True, tty=True)
    raw: socket.socket = sock._sock
    raw.sendall(b"echo $((6*7))\nexit\n")
    out = recv_all(raw)
    close_hijacked(sock)
    assert b"42" in out
    assert api.exec_inspect(exec_id)["ExitCode"] == 0
    # The stream's connection ends with the client's close, not at the next collection.
    client.close()  # docker-py's pooled connections, which stay open otherwise
    wait_until(lambda: relay.active_connections == 0, what="the exec stream to be released")


def test_attach_stdin_half_close_ends_cat(client: docker.DockerClient, no_gc: None) -> None:
    c = client.containers.create(
        IMAGE, ["cat"], stdin_open=True, labels=LABEL, name=f"berth-relay-{uuid.uuid4().hex[:8]}",
        network_mode="none",
    )
    sock = client.api.attach_socket(
        c.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
    )
    raw: socket.socket = sock._sock
    c.start()
    raw.sendall(b"through the relay\n")
    # The half-close is the point: cat only ends if our EOF reaches its stdin.
    raw.shutdown(socket.SHUT_WR)
    out = recv_all(raw)
    close_hijacked(sock)
    assert b"through the relay\n" in out
    assert c.wait(timeout=30)["StatusCode"] == 0


# ------------------------------------------------------------------------ docker CLI


def test_docker_cli_run_interactive_cat(relay: EngineSocketRelay) -> None:
    payload = b"".join(b"line %d\n" % i for i in range(2000))
    result = subprocess.run(
        [DOCKER_CLI, "run", "--rm", "-i", "--label", "berth-test=relay",
         "--network", "none", IMAGE, "cat"],
        input=payload,
        capture_output=True,
        env={**os.environ, "DOCKER_HOST": relay.url},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


def test_docker_cli_through_the_context(relay: EngineSocketRelay, tmp_path: Path) -> None:
    from vm_backend.machine.context import write_context

    write_context(relay.url, config_dir=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    result = subprocess.run(
        [DOCKER_CLI, "--context", "berth", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        env={**env, "DOCKER_CONFIG": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


# ---------------------------------------------------------------- load and resources


def _ping_new_connection(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        return recv_all(s)


def test_twenty_parallel_clients(relay: EngineSocketRelay) -> None:
    results: list[bytes] = []
    errors: list[OSError] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            reply = _ping_new_connection(str(relay.socket_path))
            with lock:
                results.append(reply)
        except OSError as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 20
    assert all(r.startswith(b"HTTP/1.1 200") and r.endswith(b"OK") for r in results)
    wait_until(lambda: relay.active_connections == 0, what="connections to finish")


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_clients_dying_mid_stream_leak_nothing(relay: EngineSocketRelay) -> None:
    # Set up through the engine directly, so no pooled connection of ours stays on the relay.
    direct = docker.DockerClient(base_url=f"unix://{DOCKER_SOCK}")
    try:
        _dying_clients(direct, relay)
    finally:
        remove_test_containers()
        direct.close()


def _dying_clients(direct: docker.DockerClient, relay: EngineSocketRelay) -> None:
    chatty = run_detached(direct, "sh", "-c", "while true; do echo tick; sleep 0.01; done")
    quiet = direct.containers.create(
        IMAGE, ["cat"], stdin_open=True, labels=LABEL, name=f"berth-relay-{uuid.uuid4().hex[:8]}",
        network_mode="none",
    )
    quiet.start()
    _ping_new_connection(str(relay.socket_path))  # warm up lazily created resources
    wait_until(lambda: relay.active_connections == 0, what="warm-up connection to finish")
    fds_before, threads_before = _fd_count(), threading.active_count()

    for _ in range(5):
        # A log follower that vanishes while the engine is still writing to it...
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(relay.socket_path))
        s.sendall(
            f"GET /containers/{chatty.id}/logs?follow=1&stdout=1 HTTP/1.1\r\n"
            "Host: docker\r\n\r\n".encode()
        )
        assert s.recv(4096)
        s.close()
        # ...and one attached to a silent hijacked stream: nothing will ever be written to
        # it, so only noticing the hang-up itself can free the channel.
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(relay.socket_path))
        s.sendall(
            f"POST /containers/{quiet.id}/attach?stream=1&stdout=1&stdin=1 HTTP/1.1\r\n"
            "Host: docker\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n".encode()
        )
        assert b"101" in s.recv(4096).split(b"\r\n", 1)[0]
        s.close()

    wait_until(lambda: relay.active_connections == 0, timeout=30, what="relay to drop clients")
    wait_until(lambda: threading.active_count() <= threads_before, what="pump threads to end")
    wait_until(lambda: _fd_count() <= fds_before, what="descriptors to be closed")


# --------------------------------------------------------------------- GuestSSH itself


def test_exec_quotes_every_argument(guest: GuestSSH, tmp_path: Path) -> None:
    marker = tmp_path / "must-not-exist"
    tricky = ["a b", "$(touch " + str(marker) + ")", "`id`", "'q'", '"d"', ";", "|", "\\", ""]
    rc, out, err = guest.exec(["printf", "%s\\n", *tricky])
    assert (rc, err) == (0, b"")
    assert out.decode().split("\n")[:-1] == tricky
    assert not marker.exists()


def test_exec_status_stderr_and_stdin(guest: GuestSSH) -> None:
    assert guest.exec(["sh", "-c", "echo oops >&2; exit 7"]) == (7, b"", b"oops\n")
    big = os.urandom(512 * 1024)
    rc, out, _ = guest.exec(["cat"], stdin=big)
    assert rc == 0 and out == big
    # Without stdin the command sees EOF at once instead of hanging.
    assert guest.exec(["cat"], timeout=10) == (0, b"", b"")


def test_exec_timeout_is_reported(guest: GuestSSH) -> None:
    with pytest.raises(GuestSSHError, match="did not finish"):
        guest.exec(["sleep", "5"], timeout=0.5)


def test_pty_shell_has_the_size_and_resizes(guest: GuestSSH) -> None:
    chan = guest.open_pty_shell(cols=91, rows=27)
    try:
        chan.settimeout(10)
        chan.sendall(b"stty size; echo END1\n")
        buf = b""
        while b"END1\r\n" not in buf or b"27 91" not in buf:
            buf += chan.recv(4096)
        chan.resize_pty(width=120, height=40)
        chan.sendall(b"stty size; echo END2\n")
        while b"40 120" not in buf:
            buf += chan.recv(4096)
        chan.sendall(b"exit\n")
        assert chan.recv_exit_status() == 0
    finally:
        chan.close()


def test_direct_tcpip_reaches_a_guest_port(guest: GuestSSH) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def echo_once() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(100).upper())

        t = threading.Thread(target=echo_once)
        t.start()
        chan = guest.direct_tcpip("127.0.0.1", port)
        chan.sendall(b"published port")
        chan.settimeout(10)
        assert chan.recv(100) == b"PUBLISHED PORT"
        chan.close()
        t.join(10)


def test_missing_guest_socket_is_a_clear_error(guest: GuestSSH) -> None:
    with pytest.raises(GuestSSHError, match="refused a channel"):
        guest.open_unix_socket("/nonexistent/docker.sock")


def test_reconnects_after_the_transport_drops(tmp_path: Path) -> None:
    server = start_sshd(tmp_path / "sshd")
    states: list[SSHState] = []
    ssh = GuestSSH(
        server.port,
        server.keys.client.private_path,
        server.keys.host.public_openssh,
        on_state=states.append,
        backoff_initial_s=0.05,
    )
    try:
        ssh.connect()
        assert ssh.exec(["true"]).rc == 0
        # Kill the per-connection sshd processes: the guest side of our transport dies
        # while the listener stays, like sshd restarting in the VM.
        for child in psutil.Process(server.proc.pid).children(recursive=True):
            child.kill()
        wait_until(lambda: SSHState.RECONNECTING in states, what="the drop to be noticed")
        ssh.wait_connected(timeout=20)
        assert ssh.exec(["echo", "back"]).out == b"back\n"
        assert states[-1] is SSHState.CONNECTED
    finally:
        ssh.close()
        server.stop()
    assert ssh.state is SSHState.CLOSED


def test_connect_waits_for_a_booting_guest(tmp_path: Path) -> None:
    keys = ensure_machine_keys(tmp_path / "keys", "boot")
    port = pick_free_port()
    started: list[SshdServer] = []
    # sshd appears only after a while, like the guest's sshd late in boot.
    timer = threading.Timer(1.0, lambda: started.append(start_sshd(tmp_path / "s", keys, port)))
    timer.start()
    ssh = GuestSSH(port, keys.client.private_path, keys.host.public_openssh,
                   backoff_initial_s=0.05)
    try:
        ssh.connect(retry_for_s=20)
        assert ssh.exec(["true"]).rc == 0
    finally:
        ssh.close()
        timer.join()
        for server in started:
            server.stop()


def test_relay_serves_again_after_a_reconnect(tmp_path: Path) -> None:
    server = start_sshd(tmp_path / "sshd")
    ssh = GuestSSH(
        server.port, server.keys.client.private_path, server.keys.host.public_openssh,
        backoff_initial_s=0.05,
    )
    relay = EngineSocketRelay(ssh, tmp_path / "run" / "docker.sock")
    try:
        ssh.connect()
        relay.start()
        assert _ping_new_connection(str(relay.socket_path)).endswith(b"OK")
        for child in psutil.Process(server.proc.pid).children(recursive=True):
            child.kill()
        # A client arriving while the transport is down waits for the reconnect (bounded
        # by connect_timeout_s) instead of failing.
        assert _ping_new_connection(str(relay.socket_path)).endswith(b"OK")
        assert ssh.state is SSHState.CONNECTED
        wait_until(lambda: relay.active_connections == 0, what="connections to finish")
    finally:
        relay.stop()
        ssh.close()
        server.stop()


def test_connections_beyond_the_bound_are_refused(guest: GuestSSH, tmp_path: Path) -> None:
    relay = EngineSocketRelay(guest, tmp_path / "run" / "docker.sock", max_connections=2)
    relay.start()
    held: list[socket.socket] = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(relay.socket_path))
            held.append(s)
        wait_until(lambda: relay.active_connections == 2, what="two relayed connections")
        with socket.socket(socket.AF_UNIX) as extra:
            extra.connect(str(relay.socket_path))
            extra.settimeout(10)
            assert extra.recv(100) == b""  # closed at once, no channel opened for it
        for s in held:
            s.close()
        wait_until(lambda: relay.active_connections == 0, what="slots to be released")
        assert _ping_new_connection(str(relay.socket_path)).endswith(b"OK")
    finally:
        for s in held:
            s.close()
        relay.stop()


def test_a_channel_closed_by_the_guest_releases_an_idle_client(
    guest: GuestSSH, tmp_path: Path
) -> None:
    # The guest command answers and exits: sshd sends EOF, then closes the channel. The
    # client got everything and its EOF, and keeps its socket open without writing (a
    # docker-py hijacked socket waiting for the garbage collector does just that). As
    # with OpenSSH's ssh -L, the closed channel must end the connection, not the
    # client's next write or hang-up.
    relay = EngineSocketRelay(
        guest, tmp_path / "run" / "docker.sock", mechanism=RelayMechanism.DIAL_STDIO,
        dial_stdio_argv=["echo", "bye"],
    )
    relay.start()
    try:
        threads_before = threading.active_count()
        held = socket.socket(socket.AF_UNIX)
        held.connect(str(relay.socket_path))
        assert recv_all(held) == b"bye\n"
        wait_until(lambda: relay.active_connections == 0, what="the closed channel's client")
        wait_until(lambda: threading.active_count() <= threads_before, what="pump threads")
        with pytest.raises(OSError):  # the relay closed its end: nothing can go through
            for _ in range(100):
                held.sendall(b"x" * 65536)
        held.close()
    finally:
        relay.stop()


def test_a_half_open_stream_lives_until_the_client_closes(
    guest: GuestSSH, tmp_path: Path
) -> None:
    # The other side of the same rule: a guest that only sent EOF (sshd does that for a
    # unix socket the engine shut) may still read, so the connection stays while the
    # client holds it, and ends when the client closes.
    relay = EngineSocketRelay(
        guest, tmp_path / "run" / "docker.sock", mechanism=RelayMechanism.DIAL_STDIO,
        dial_stdio_argv=["sh", "-c", "exec 1>&- 2>&-; cat > /dev/null"],
    )
    relay.start()
    try:
        held = socket.socket(socket.AF_UNIX)
        held.connect(str(relay.socket_path))
        assert recv_all(held) == b""  # stdout closed: the guest's EOF
        held.sendall(b"still accepted after the guest's EOF\n")
        time.sleep(0.5)  # not a timing assertion: only gives a wrong release a chance
        assert relay.active_connections == 1
        held.close()
        wait_until(lambda: relay.active_connections == 0, what="the client's close")
    finally:
        relay.stop()



@pytest.mark.parametrize("direct", [True, False], ids=["direct-delivery", "buffered"])
def test_bulk_both_ways_with_a_slow_reader(guest: GuestSSH, tmp_path: Path, direct: bool) -> None:
    # 16 MiB each way, well past the channel window (2 MiB). For the download the client
    # sleeps before reading, so the guest's bytes pile up: with direct delivery the
    # transport thread must fall back to buffering (it never blocks on one client), and
    # nothing may be lost or reordered on the switch.
    size = 16 * 1024 * 1024
    line = b"0123456789abcdef\n"
    down = EngineSocketRelay(
        guest, tmp_path / "down" / "docker.sock", mechanism=RelayMechanism.DIAL_STDIO,
        dial_stdio_argv=["sh", "-c", f"yes {line.decode().strip()} | head -c {size}"],
    )
    up = EngineSocketRelay(
        guest, tmp_path / "up" / "docker.sock", mechanism=RelayMechanism.DIAL_STDIO,
        dial_stdio_argv=["sha256sum"],
    )
    try:
        for relay in (down, up):
            relay.direct_delivery = direct
            relay.start()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(down.socket_path))
            time.sleep(1.0)  # let the channel window and the socket buffers fill up
            got = recv_all(s, timeout=120)
        assert len(got) == size
        assert got == (line * (size // len(line) + 1))[:size]

        payload = os.urandom(size)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(up.socket_path))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            reply = recv_all(s, timeout=120)
        assert reply.split()[0].decode() == hashlib.sha256(payload).hexdigest()
        wait_until(lambda: down.active_connections == up.active_connections == 0,
                   what="bulk connections to end")
    finally:
        down.stop()
        up.stop()


def test_direct_delivery_through_key_re_exchanges(
    sshd_server: SshdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # paramiko re-keys after 512 MiB by default; at 1 MiB, a 16 MiB download goes through
    # many key exchanges, during which the transport thread must not deliver (its window
    # adjust would wait for the exchange it runs itself) and must resume afterwards.
    from paramiko.packet import Packetizer

    monkeypatch.setattr(Packetizer, "REKEY_BYTES", 1024 * 1024)
    kex: list[int] = []
    real_kex_init = paramiko.Transport._send_kex_init

    def counting_kex_init(self: paramiko.Transport) -> None:
        kex.append(1)
        real_kex_init(self)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(paramiko.Transport, "_send_kex_init", counting_kex_init)
    ssh = GuestSSH(
        sshd_server.port, sshd_server.keys.client.private_path,
        sshd_server.keys.host.public_openssh,
    )
    size = 16 * 1024 * 1024
    line = b"0123456789abcdef\n"
    relay = EngineSocketRelay(
        ssh, tmp_path / "run" / "docker.sock", mechanism=RelayMechanism.DIAL_STDIO,
        dial_stdio_argv=["sh", "-c", f"yes {line.decode().strip()} | head -c {size}"],
    )
    try:
        ssh.connect()
        relay.start()
        kex_before = len(kex)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(relay.socket_path))
            got = recv_all(s, timeout=120)
        assert got == (line * (size // len(line) + 1))[:size]
        assert len(kex) - kex_before >= 8, "the transfer did not go through key exchanges"
        wait_until(lambda: relay.active_connections == 0, what="the connection to end")
    finally:
        relay.stop()
        ssh.close()
