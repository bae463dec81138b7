"""berthd's Windows transport (an owner-only named pipe) run on Linux over the in-memory
fake of the pipe API (tests/unit/winpipe_fake.py): the same request handling as the
unix socket, the client's autodetection of a running daemon, and a clean shutdown."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.winpipe_fake import FakeApi
from vm_backend import winpipe
from vm_backend.daemon import server as server_mod
from vm_backend.daemon.client import DaemonClient, DaemonError, daemon_answers, ensure_daemon
from vm_backend.daemon.server import daemon_address, make_server, run_server
from vm_backend.errors import BerthError
from vm_backend.machine.paths import PIPE_PREFIX, daemon_pipe_name


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(winpipe, "default_api", lambda: fake)
    monkeypatch.setattr(server_mod, "use_pipes", lambda: True)
    return fake


@pytest.fixture
def daemon(api: FakeApi, home: Path) -> Iterator[str]:
    server = make_server(home)
    assert isinstance(server, server_mod._PipeServer)
    t = threading.Thread(target=run_server, args=(server,), daemon=True)
    t.start()
    yield str(server.server_address)
    server.shutdown()
    t.join(5)
    assert not t.is_alive()


def test_the_pipe_name_is_per_user_and_per_home(tmp_path: Path) -> None:
    a = daemon_pipe_name(tmp_path / "a")
    b = daemon_pipe_name(tmp_path / "b")
    assert a.startswith(PIPE_PREFIX + "berth-") and a.endswith("-berthd")
    assert a != b and a == daemon_pipe_name(tmp_path / "a")
    assert "\\" not in a.removeprefix(PIPE_PREFIX)


def test_berthd_serves_its_protocol_on_the_pipe(daemon: str, home: Path, api: FakeApi) -> None:
    assert daemon == daemon_address(home) == daemon_pipe_name(home)
    creates = [c for c in api.calls if c[0] == "create_named_pipe"]
    assert creates[0][1] == daemon
    assert creates[0][2] & winpipe.FILE_FLAG_FIRST_PIPE_INSTANCE
    assert creates[0][3] & winpipe.PIPE_REJECT_REMOTE_CLIENTS
    assert ensure_daemon(home) == daemon  # found running: nothing started
    assert daemon_answers(home)
    client = DaemonClient(home)
    pong = client.call("ping")
    assert pong["pid"] == os.getpid() and pong["protocol"] == 1
    with pytest.raises(DaemonError, match="Unknown method"):
        client.call("machine.fly")
    assert client.call("machine.list") == []


def test_clients_at_once_each_get_their_answer(daemon: str, home: Path) -> None:
    results: list[object] = []

    def ask() -> None:
        results.append(DaemonClient(home).call("ping")["pid"])

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [os.getpid()] * 6


def test_console_attach_goes_through_the_same_handler(daemon: str, home: Path) -> None:
    with pytest.raises(DaemonError, match="no machine named"), \
            DaemonClient(home).console("ghost"):
        pass


def test_a_second_berthd_is_refused(daemon: str, home: Path) -> None:
    with pytest.raises(BerthError, match="already running"):
        make_server(home)


def test_a_squatted_name_is_refused(api: FakeApi, home: Path) -> None:
    api.squat(daemon_pipe_name(home))
    # The squatter answers nothing (no connect), so make_server tries to create the pipe.
    api.instances[daemon_pipe_name(home)][0].end.had_peer = True  # busy: no answer
    with pytest.raises(winpipe.PipeError, match="exists already"):
        make_server(home)


def test_shutdown_closes_every_handle(api: FakeApi, home: Path) -> None:
    server = make_server(home)
    t = threading.Thread(target=run_server, args=(server,), daemon=True)
    t.start()
    client = DaemonClient(home, autostart=False)
    assert client.call("ping")["protocol"] == 1
    idle = winpipe.connect_pipe(daemon_pipe_name(home), 5)  # a client that never speaks
    server.shutdown()
    t.join(5)
    assert not t.is_alive()
    assert idle.recv(10) == b""  # dropped by berthd
    idle.close()
    # The ping's connection is closed by its handler thread, which shutdown() does not
    # join: give it a moment, then nothing may be left open.
    deadline = time.monotonic() + 5
    while api.open_handles() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api.open_handles() == set()
    assert not daemon_answers(home)


def test_the_engine_ping_works_over_the_engine_pipe(api: FakeApi) -> None:
    from vm_backend.daemon.service import ping_unix

    name = "\\\\.\\pipe\\berth-dev-docker"
    listener = winpipe.PipeListener(name)
    seen: list[bytes] = []

    def engine() -> None:
        stream = listener.accept(5)
        seen.append(stream.recv(4096))
        stream.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        stream.shutdown(2)
        stream.close()

    t = threading.Thread(target=engine)
    t.start()
    assert ping_unix(name, 5)
    t.join(5)
    assert seen[0].startswith(b"GET /_ping HTTP/1.1\r\n")
    listener.close()
