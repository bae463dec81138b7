"""Machine.start with Windows pipes, on Linux: QEMU's side of its pipes is played over the
in-memory pipe API (qemu_pipe_fake.py), its process is a real one that only sleeps, so
the tests see whether berthd kills it; QEMU's pipes are created as that process's pid. The
first-client guard: a pipe another program got first fails the start and kills QEMU; so
does a pipe whose name another program created before QEMU (served by another pid), or
whose server Windows cannot name; a pipe not created yet is waited for."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.machine.qemu_pipe_fake import PipeQemu
from tests.unit.machine.test_machine import home, image, make  # noqa: F401 (fixtures)
from tests.unit.winpipe_fake import FakeApi
from vm_backend import winpipe
from vm_backend.machine.image import GuestImage
from vm_backend.machine.machine import Machine, MachineError, MachineState
from vm_backend.machine.paths import MachinePaths
from vm_backend.machine.process import QemuProcess
from vm_backend.machine.timeline import Stage, StageState


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(winpipe, "default_api", lambda: fake)
    return fake


class PipeLauncher:
    """Starts a sleeping stand-in for QEMU and, beside it, QEMU's pipes."""

    def __init__(self, api: FakeApi, **qemu_options: object) -> None:
        self.api = api
        self.options = qemu_options
        self.procs: list[QemuProcess] = []
        self.qemus: list[PipeQemu] = []
        self.paths: MachinePaths | None = None

    def __call__(self, argv: list[str], log: Path) -> QemuProcess:
        assert self.paths is not None  # (argv names the pipes: test_argv.py)
        proc = QemuProcess.launch([sys.executable, "-c", "import time; time.sleep(120)"], log)
        self.procs.append(proc)
        self.qemus.append(PipeQemu(self.api, self.paths.qmp_address,
                                   self.paths.console_address, pid=proc.pid,
                                   **self.options).start())  # type: ignore[arg-type]
        return proc

    def stop(self) -> None:
        for qemu in self.qemus:
            qemu.stop()
        for proc in self.procs:
            proc.kill()


@pytest.fixture
def launchers() -> Iterator[list[PipeLauncher]]:
    made: list[PipeLauncher] = []
    yield made
    for launcher in made:
        launcher.stop()


def windows_machine(where: Path, guest: GuestImage, launcher: PipeLauncher) -> Machine:
    machine = make(where, guest, launcher=launcher)
    machine.paths = MachinePaths.for_machine(machine.name, where, windows_pipes=True)
    launcher.paths = machine.paths
    return machine


@pytest.mark.parametrize("squat", ["qmp", "console"])
def test_a_pipe_another_program_took_first_kills_qemu_and_fails_the_start(
    api: FakeApi, home: Path, image: GuestImage,  # noqa: F811
    launchers: list[PipeLauncher], squat: str,
) -> None:
    launcher = PipeLauncher(api, squat=squat)
    launchers.append(launcher)
    machine = windows_machine(home, image, launcher)
    started = time.monotonic()
    with pytest.raises(MachineError) as info:
        machine.start()
    assert time.monotonic() - started < 5  # busy is not retried until the 10 s timeout
    err = info.value
    assert f"Another program connected to the VM's pipe {launcher.qemus[0].names[squat]}" \
        in err.message
    assert "could read the VM's console or control QEMU" in err.message
    assert "Berth stopped the VM" in err.message and "Quit the program" in err.hint
    assert launcher.procs[0].exited  # QEMU was killed, not left running for the squatter
    assert len(launcher.procs) == 1  # and not relaunched on another port
    status = machine.status()
    assert status.state is MachineState.STOPPED
    timeline = machine.timeline
    assert timeline is not None and timeline.failure is not None
    assert timeline.failure.stage is Stage.QEMU
    assert timeline.snapshot().record(Stage.QEMU).state is StageState.FAILED
    name = launcher.qemus[0].names[squat]
    created = api.calls.index(next(c for c in api.calls
                                   if c[0] == "create_named_pipe" and c[1] == name))
    after = [c for c in api.calls[created:] if c[0] == "create_file" and c[1] == name]
    assert len(after) == 2  # the squatter's, then berthd's single try: busy is not retried
    assert not [c for c in api.calls if c[0] == "wait_named_pipe"]
    # Nothing of ours stays open on QEMU's pipes.
    ours = {c for c in api.open_handles() if c not in api.servers}
    squatter = launcher.qemus[0].squatter
    assert squatter is not None and ours == {squatter.handle}
    machine.close()


def test_a_start_over_pipes_waits_for_them_and_boots(
    api: FakeApi, home: Path, image: GuestImage,  # noqa: F811
    launchers: list[PipeLauncher],
) -> None:
    launcher = PipeLauncher(api, delay=0.3)  # the pipes appear a moment after the start
    launchers.append(launcher)
    machine = windows_machine(home, image, launcher)
    status = machine.start()
    assert status.state is MachineState.RUNNING
    assert status.qmp_address == machine.paths.qmp_address
    qemu = launcher.qemus[0]
    qmp_tries = [c for c in api.calls if c[0] == "create_file" and c[1] == qemu.names["qmp"]]
    assert len(qmp_tries) > 1
    # Both claimed pipes were checked to be served by QEMU's process.
    assert qemu.pid == launcher.procs[0].pid != os.getpid()
    checked = [c[1] for c in api.calls if c[0] == "get_named_pipe_server_process_id"]
    assert [served_by(api, h) for h in checked] == [
        (qemu.names["qmp"], qemu.pid), (qemu.names["console"], qemu.pid)]
    assert [m["execute"] for m in qemu.received][:2] == ["qmp_capabilities", "cont"]
    console = machine.console
    assert console is not None and b"BERTH-STAGE ready" in console.tail()
    console.write(b"root\n")
    deadline = time.monotonic() + 5
    while b"root" not in qemu.console_input and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bytes(qemu.console_input) == b"root\n"
    machine.kill()
    assert launcher.procs[0].exited
    machine.close()


def served_by(api: FakeApi, client: int) -> tuple[str, int]:
    """The pipe name and creator pid of the server end a client handle was connected to."""
    peer = api.ends[client].peer
    server = next(i for i in api.servers.values() if i.end is peer)
    return server.name, server.pid


def _refused_start(api: FakeApi, home: Path, image: GuestImage,  # noqa: F811
                   launcher: PipeLauncher) -> tuple[MachineError, list[int]]:
    """Start, expect the guard to refuse; QEMU killed, nothing of berthd's left open.
    Returns the error and the handles whose server was asked for."""
    machine = windows_machine(home, image, launcher)
    started = time.monotonic()
    with pytest.raises(MachineError) as info:
        machine.start()
    assert time.monotonic() - started < 5  # refused at once, not after the 10 s timeout
    assert "Berth stopped the VM" in info.value.message
    assert launcher.procs[0].exited  # QEMU was killed (the PipeTakenError path)
    assert len(launcher.procs) == 1  # and not relaunched on another port
    assert machine.status().state is MachineState.STOPPED
    timeline = machine.timeline
    assert timeline is not None and timeline.failure is not None
    assert timeline.failure.stage is Stage.QEMU
    checked = [c[1] for c in api.calls if c[0] == "get_named_pipe_server_process_id"]
    assert checked and checked[-1] in api.closed_handles  # the refused handle was closed
    assert not {h for h in api.open_handles() if h not in api.servers}  # ours all closed
    machine.close()
    return info.value, checked


@pytest.mark.parametrize("preempt", ["qmp", "console"])
def test_a_pipe_name_another_program_created_before_qemu_is_refused(
    api: FakeApi, home: Path, image: GuestImage,  # noqa: F811
    launchers: list[PipeLauncher], preempt: str,
) -> None:
    squatter_pid = os.getpid()  # a real pid that is not the stand-in QEMU's
    launcher = PipeLauncher(api, preempt=preempt, squatter_pid=squatter_pid)
    launchers.append(launcher)
    err, checked = _refused_start(api, home, image, launcher)
    qemu = launcher.qemus[0]
    name = qemu.names[preempt]
    assert qemu.pid != squatter_pid
    assert (f"Another program (process {squatter_pid}) created the VM's pipe {name} before "
            f"QEMU (process {qemu.pid}) did") in err.message
    assert f"Quit process {squatter_pid}" in err.hint
    # berthd opened the other program's instance, asked, and closed it.
    assert served_by(api, checked[-1]) == (name, squatter_pid)
    if preempt == "console":
        # QMP's pipe was QEMU's and passed the check; it was closed with the refusal.
        assert len(checked) == 2 and checked[0] in api.closed_handles
        assert served_by(api, checked[0]) == (qemu.names["qmp"], qemu.pid)
    else:
        assert len(checked) == 1
    deadline = time.monotonic() + 5
    while qemu.create_failed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert qemu.create_failed == name  # QEMU's own CreateNamedPipe found the name taken


def test_a_pipe_whose_server_windows_cannot_name_is_refused(
    api: FakeApi, home: Path, image: GuestImage,  # noqa: F811
    launchers: list[PipeLauncher],
) -> None:
    api.server_pid_error = winpipe.ERROR_ACCESS_DENIED
    launcher = PipeLauncher(api)
    launchers.append(launcher)
    err, checked = _refused_start(api, home, image, launcher)
    name = launcher.qemus[0].names["qmp"]
    assert f"Berth could not check which program serves the VM's pipe {name}" in err.message
    assert "WinError 5" in err.message
    assert "Start the VM again" in err.hint
    assert len(checked) == 1  # QMP's pipe, refused: the console's was never claimed
