"""Machine.start with Windows pipes, on Linux: QEMU's side of its pipes is played over the
in-memory pipe API (qemu_pipe_fake.py), its process is a real one that only sleeps, so
the tests see whether berthd kills it. The first-client guard: a pipe another program got
first fails the start and kills QEMU; a pipe not created yet is waited for."""

from __future__ import annotations

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
                                   self.paths.console_address,
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
