"""The serial console over a Windows named pipe (QEMU's ``-chardev pipe``), on Linux over
the in-memory fake of the pipe API (tests/unit/winpipe_fake.py): claimed while it does not
exist yet, refused at once when another program holds it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.unit.winpipe_fake import FakeApi, win_error
from vm_backend import winpipe
from vm_backend.machine.console import ConsoleError, ConsoleMarker, SerialConsole
from vm_backend.machine.paths import PIPE_PREFIX, MachinePaths, pipe_stem
from vm_backend.machine.qemu_pipes import PipeTakenError

# The console connects to the name paths.py gives on Windows.
NAME = MachinePaths.for_machine("dev", Path("/nonexistent"), windows_pipes=True).console_address


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(winpipe, "default_api", lambda: fake)
    return fake


def test_console_reads_writes_and_sees_qemu_go(api: FakeApi, tmp_path: Path) -> None:
    assert f"{PIPE_PREFIX}{pipe_stem(Path('/nonexistent'))}-dev-console" == NAME
    qemu = winpipe.PipeListener(NAME)  # stands in for QEMU's chardev pipe
    console = SerialConsole(NAME, log_path=tmp_path / "console.log")
    markers: list[ConsoleMarker] = []
    gone = threading.Event()
    console.on_marker(markers.append)
    console.on_closed(gone.set)
    console.connect(timeout=5)
    guest = qemu.accept(5)
    guest.sendall(b"boot\r\nBERTH-STAGE sshd 3.5\r\n")
    deadline = time.monotonic() + 5
    while not markers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [m.stage for m in markers] == ["sshd"]
    console.write(b"root\n")
    assert guest.recv(100) == b"root\n"
    guest.close()  # QEMU exits
    assert gone.wait(5)
    console.close()
    qemu.close()
    assert (tmp_path / "console.log").read_bytes().startswith(b"boot")


def test_console_connect_retries_until_the_pipe_exists(api: FakeApi) -> None:
    console = SerialConsole(NAME)
    holder: list[winpipe.PipeListener] = []
    timer = threading.Timer(0.2, lambda: holder.append(winpipe.PipeListener(NAME)))
    timer.start()
    console.connect(timeout=5)
    assert console.connected
    console.close()
    holder[0].close()


def test_console_connect_gives_up_with_a_clear_error(api: FakeApi) -> None:
    console = SerialConsole(NAME)
    with pytest.raises(ConsoleError, match="Could not connect to the VM console"):
        console.connect(timeout=0.2)


def test_a_console_pipe_someone_else_holds_fails_at_once(api: FakeApi) -> None:
    with api.cond:  # QEMU's one instance, and another program on it before us
        api.create_named_pipe(NAME, winpipe.LISTEN_OPEN_MODE, 0, 1, 0, 0, 0, 0)
        squatter = winpipe.connect_pipe(NAME, api=api)
    console = SerialConsole(NAME)
    started = time.monotonic()
    with pytest.raises(PipeTakenError, match="could read the VM's console"):
        console.connect(timeout=10)
    assert time.monotonic() - started < 2
    assert not [c for c in api.calls if c[0] == "wait_named_pipe"]
    assert not console.connected
    squatter.close()


def test_a_console_pipe_that_refuses_us_fails_at_once(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(name: str, access: int, flags: int) -> int:
        raise win_error(winpipe.ERROR_ACCESS_DENIED)

    monkeypatch.setattr(api, "create_file", denied)
    with pytest.raises(PipeTakenError, match="Another program owns"):
        SerialConsole(NAME).connect(timeout=10)


def test_a_console_pipe_claimed_by_the_caller_is_read(api: FakeApi) -> None:
    qemu = winpipe.PipeListener(NAME)
    pipe = winpipe.connect_pipe(NAME, 5)
    guest = qemu.accept(5)
    console = SerialConsole(NAME)
    console.connect(timeout=0.1, pipe=pipe)
    creates = len([c for c in api.calls if c[0] == "create_file"])
    guest.sendall(b"hello\r\n")
    deadline = time.monotonic() + 5
    while b"hello" not in console.tail() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert console.tail() == b"hello\r\n"
    assert len([c for c in api.calls if c[0] == "create_file"]) == creates == 1
    console.close()
    assert pipe.closed
    qemu.close()
