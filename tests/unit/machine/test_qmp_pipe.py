"""QMP over QEMU's Windows pipe, run on Linux over the in-memory pipe API
(tests/unit/winpipe_fake.py) with QEMU's side played by tests/unit/machine/qemu_pipe_fake.py:
the claim (retried while the pipe does not exist, refused at once when someone else holds
it), qemu.qmp over the claimed pipe, and the threaded asyncio transport under it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.machine.qemu_pipe_fake import PipeQemu
from tests.unit.winpipe_fake import FakeApi, win_error
from vm_backend import winpipe
from vm_backend.machine.loopthread import EventLoopThread
from vm_backend.machine.paths import PIPE_PREFIX, MachinePaths, pipe_stem
from vm_backend.machine.qemu_pipes import (
    PipeTakenError,
    claim_qemu_pipe,
    claim_vm_pipes,
    open_stream_connection,
)
from vm_backend.machine.qmp import QmpError, SyncQmp

PATHS = MachinePaths.for_machine("dev", Path("/nonexistent"), windows_pipes=True)
NAME = PATHS.qmp_address
CONSOLE = PATHS.console_address


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(winpipe, "default_api", lambda: fake)
    return fake


@pytest.fixture
def pipe_pair(api: FakeApi) -> Iterator[tuple[winpipe.PipeStream, winpipe.PipeStream]]:
    """(client, server end) of one connected pipe; closed after the test."""
    listener = winpipe.PipeListener(NAME)
    client = winpipe.connect_pipe(NAME, 5)
    client.settimeout(None)
    peer = listener.accept(5)
    yield client, peer
    for end in (client, peer):
        end.close()
    listener.close()


@pytest.fixture
def qemus() -> Iterator[list[PipeQemu]]:
    started: list[PipeQemu] = []
    yield started
    for qemu in started:
        qemu.stop()


def test_the_pipe_name_is_per_user_and_home() -> None:
    assert f"{PIPE_PREFIX}{pipe_stem(Path('/nonexistent'))}-dev-qmp" == NAME


def test_qmp_over_claimed_pipes_after_qemu_creates_them(
    api: FakeApi, loop_thread: EventLoopThread, qemus: list[PipeQemu]
) -> None:
    qemu = PipeQemu(api, NAME, CONSOLE, delay=0.2).start()  # not there yet at first
    qemus.append(qemu)
    qmp_pipe, console_pipe = claim_vm_pipes(NAME, CONSOLE, timeout=5, server_pid=qemu.pid)
    tries = [c for c in api.calls if c[0] == "create_file" and c[1] == NAME]
    assert len(tries) > 1  # "not found" was retried
    assert all(c[2:] == (winpipe.CLIENT_ACCESS, winpipe.CLIENT_FLAGS) for c in tries)
    qmp = SyncQmp(loop_thread)
    qmp.connect(NAME, timeout=5, pipe=qmp_pipe)
    assert qmp.connected
    status = qmp.query_status()
    assert status.status == "prelaunch" and not status.running
    qmp.cont()
    assert [m["execute"] for m in qemu.received] == ["qmp_capabilities", "query-status", "cont"]
    assert b"BERTH-STAGE ready" in _read_until(console_pipe, b"ready")
    qmp.close()
    assert qemu.qmp is not None and qemu.qmp.recv(10) == b""  # QEMU sees us go
    console_pipe.close()


def test_qmp_claims_the_pipe_itself_when_given_only_the_name(
    api: FakeApi, loop_thread: EventLoopThread, qemus: list[PipeQemu]
) -> None:
    qemus.append(PipeQemu(api, NAME, CONSOLE, delay=0.1).start())
    consoles: list[winpipe.PipeStream] = []
    # QEMU greets only once the console's pipe has its client too.
    claimer = threading.Thread(
        target=lambda: consoles.append(claim_qemu_pipe(CONSOLE, time.monotonic() + 5)))
    claimer.start()
    qmp = SyncQmp(loop_thread)
    qmp.connect(NAME, timeout=5)
    assert qmp.query_status().status == "prelaunch"
    qmp.close()
    claimer.join(5)
    consoles[0].close()


def test_a_pipe_someone_else_holds_fails_at_once(
    api: FakeApi, loop_thread: EventLoopThread, qemus: list[PipeQemu]
) -> None:
    qemus.append(PipeQemu(api, NAME, CONSOLE, squat="qmp").start())
    deadline = time.monotonic() + 5
    while not api.instances.get(NAME) and time.monotonic() < deadline:
        time.sleep(0.01)
    qmp = SyncQmp(loop_thread)
    started = time.monotonic()
    with pytest.raises(PipeTakenError, match="Another program connected to the VM's pipe"):
        qmp.connect(NAME, timeout=10)
    assert time.monotonic() - started < 2  # not retried until the timeout
    assert not [c for c in api.calls if c[0] == "wait_named_pipe"]
    assert not qmp.connected


def test_a_pipe_that_refuses_us_is_taken_too(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(name: str, access: int, flags: int) -> int:
        raise win_error(winpipe.ERROR_ACCESS_DENIED)

    monkeypatch.setattr(api, "create_file", denied)
    with pytest.raises(PipeTakenError, match="Another program owns the VM's pipe"):
        claim_qemu_pipe(NAME, time.monotonic() + 5)


def test_qemu_gone_before_its_pipe_exists_ends_the_wait(api: FakeApi) -> None:
    started = time.monotonic()
    with pytest.raises(winpipe.PipeError, match="QEMU exited before it created its pipe"):
        claim_qemu_pipe(NAME, time.monotonic() + 10, alive=lambda: False)
    assert time.monotonic() - started < 2
    with pytest.raises(winpipe.PipeError, match="did not create its pipe"):
        claim_qemu_pipe(NAME, time.monotonic() + 0.1)


def test_a_pipe_closed_before_the_greeting_is_a_clear_error(
    api: FakeApi, loop_thread: EventLoopThread
) -> None:
    server = api.create_named_pipe(NAME, winpipe.LISTEN_OPEN_MODE, 0, 1, 0, 0, 0, 0)
    pipe = claim_qemu_pipe(NAME, time.monotonic() + 5)
    api.close_handle(server)  # QEMU died before it greeted
    qmp = SyncQmp(loop_thread)
    with pytest.raises(QmpError, match=r"QMP handshake on .* failed"):
        qmp.connect(NAME, timeout=5, pipe=pipe)
    assert pipe.closed


def test_the_transport_drains_through_the_pipe_then_closes(
    pipe_pair: tuple[winpipe.PipeStream, winpipe.PipeStream], loop_thread: EventLoopThread
) -> None:
    client, peer = pipe_pair
    big = bytes(range(256)) * 1024  # 256 KiB: above the high-water mark
    got = bytearray()

    def drain_peer() -> None:
        while chunk := peer.recv(65536):
            got.extend(chunk)

    reader_thread = threading.Thread(target=drain_peer)
    reader_thread.start()

    async def exchange() -> bytes:
        reader, writer = open_stream_connection(client, NAME, 2**16)
        writer.write(big)
        assert writer.transport.get_write_buffer_size() > 0
        await writer.drain()
        peer.sendall(b"hello\n")
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return line

    assert loop_thread.run(exchange(), 10) == b"hello\n"
    reader_thread.join(5)
    assert bytes(got) == big  # all of it, and then the peer read EOF
    assert client.closed


def test_the_transport_reports_the_peer_going_away(
    pipe_pair: tuple[winpipe.PipeStream, winpipe.PipeStream], loop_thread: EventLoopThread
) -> None:
    client, peer = pipe_pair

    async def until_eof() -> bool:
        reader, writer = open_stream_connection(client, NAME, 2**16)
        peer.close()
        data = await reader.read()
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
        return data == b"" and reader.at_eof()

    assert loop_thread.run(until_eof(), 10)
    assert client.closed


def _read_until(stream: winpipe.PipeStream, marker: bytes) -> bytes:
    out = b""
    deadline = time.monotonic() + 5
    while marker not in out and time.monotonic() < deadline:
        out += stream.recv(4096)
    return out
