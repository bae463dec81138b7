"""The engine socket relay on Windows (an owner-only named pipe), run on Linux: the pipe
is the in-memory fake of tests/unit/winpipe_fake.py, the guest a socketpair behind the
fake SSH session of test_relay_accounting.py."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.unit.machine.test_relay_accounting import FakeSSH, reply_and_close, wait_for
from tests.unit.winpipe_fake import FakeApi
from vm_backend import winpipe
from vm_backend.machine.paths import MachinePaths
from vm_backend.machine.relay import EngineSocketRelay

PIPE = MachinePaths.for_machine("dev", Path("/nonexistent"), windows_pipes=True).engine_pipe
assert PIPE is not None


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(winpipe, "default_api", lambda: fake)
    return fake


def start(relays: list[EngineSocketRelay], ssh: FakeSSH, tmp_path: Path,
          **kw: object) -> EngineSocketRelay:
    relay = EngineSocketRelay(ssh, tmp_path / "docker.sock", pipe_name=PIPE, **kw)  # type: ignore[arg-type]
    relay.start()
    relays.append(relay)
    return relay


def read_all(stream: winpipe.PipeStream) -> bytes:
    out = b""
    while chunk := stream.recv(100):
        out += chunk
    return out


def test_the_relay_serves_the_pipe_and_gives_the_npipe_url(
    api: FakeApi, relays: list[EngineSocketRelay], tmp_path: Path
) -> None:
    relay = start(relays, FakeSSH(reply_and_close), tmp_path)
    assert relay.url == "npipe:////./pipe/" + PIPE.split("\\")[-1]  # berth-<user>-<hash>-dev-docker
    assert not (tmp_path / "docker.sock").exists()  # no unix socket on this path
    first = next(c for c in api.calls if c[0] == "create_named_pipe")
    assert first[1] == PIPE
    assert first[2] & winpipe.FILE_FLAG_FIRST_PIPE_INSTANCE
    assert first[3] & winpipe.PIPE_REJECT_REMOTE_CLIENTS
    for _ in range(3):
        client = winpipe.connect_pipe(PIPE, 5)
        client.sendall(b"question")
        client.shutdown(socket.SHUT_WR)  # go-winio's CloseWrite: the channel's EOF
        assert read_all(client) == b"answer"  # the guest's EOF: a zero-length message
        client.close()
    assert wait_for(lambda: relay.active_connections == 0)


def test_a_half_closed_client_still_gets_a_late_answer(
    api: FakeApi, relays: list[EngineSocketRelay], tmp_path: Path
) -> None:
    def attach_like(sock: socket.socket) -> None:  # docker attach: stdin ends, output goes on
        while sock.recv(100):
            pass
        time.sleep(1.5)  # past the hangup wait's 1 s check
        sock.sendall(b"late output")

    relay = start(relays, FakeSSH(attach_like), tmp_path)
    client = winpipe.connect_pipe(PIPE, 5)
    client.sendall(b"stdin")
    client.shutdown(socket.SHUT_WR)
    assert read_all(client) == b"late output"
    client.close()
    assert wait_for(lambda: relay.active_connections == 0)


def test_a_client_that_hangs_up_ends_a_quiet_stream(
    api: FakeApi, relays: list[EngineSocketRelay], tmp_path: Path
) -> None:
    def quiet(sock: socket.socket) -> None:  # a container that never writes
        while sock.recv(100):
            pass
        sock.recv(100)  # waits until the relay closes the channel

    ssh = FakeSSH(quiet)
    relay = start(relays, ssh, tmp_path)
    client = winpipe.connect_pipe(PIPE, 5)
    client.sendall(b"stdin")
    client.shutdown(socket.SHUT_WR)
    assert wait_for(lambda: relay.active_connections == 1)
    client.close()  # the pipe breaks: the relay's wait sees it and cuts the channel
    assert wait_for(lambda: relay.active_connections == 0, 5)
    assert ssh.channels and all(chan.closed for chan in ssh.channels)


def test_stop_wakes_the_accept_and_cuts_connections(
    api: FakeApi, relays: list[EngineSocketRelay], tmp_path: Path
) -> None:
    def slow(sock: socket.socket) -> None:
        sock.recv(100)

    relay = EngineSocketRelay(FakeSSH(slow), tmp_path / "docker.sock", pipe_name=PIPE)
    relay.start()
    client = winpipe.connect_pipe(PIPE, 5)
    client.sendall(b"hello")
    assert wait_for(lambda: relay.active_connections == 1)
    started = time.monotonic()
    relay.stop()
    assert time.monotonic() - started < 3
    assert relay.active_connections == 0
    assert client.recv(100) == b""
    client.close()
    assert api.open_handles() == set()


def test_a_pipe_name_taken_by_another_program_is_refused(
    api: FakeApi, tmp_path: Path
) -> None:
    api.squat(PIPE)
    relay = EngineSocketRelay(FakeSSH(reply_and_close), tmp_path / "docker.sock", pipe_name=PIPE)
    with pytest.raises(winpipe.PipeError, match="exists already"):
        relay.start()
    relay.stop()  # nothing started: a no-op
