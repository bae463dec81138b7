"""Machine lifecycle against a fake QEMU process (tests/unit/machine/fake_qemu.py).

Real processes, sockets and files; only QEMU itself (and the accelerator probe) is fake.
The same scenarios run against real QEMU in tests/vm/test_machine_qemu.py.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm_backend.errors import InputError
from vm_backend.machine.accel import AccelChoice, AcceleratorProbe
from vm_backend.machine.hostinfo import Arch, HostInfo, HostOS
from vm_backend.machine.image import GuestImage, ImageError
from vm_backend.machine.machine import Machine, MachineError, MachineState, StopOutcome
from vm_backend.machine.process import QemuLaunchError, QemuProcess
from vm_backend.machine.qmp import QmpEvent
from vm_backend.machine.spec import Accelerator, MachineSpec
from vm_backend.machine.timeline import BootFailure, Stage, StageState

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")

FAKE = Path(__file__).with_name("fake_qemu.py")
HOST = HostInfo(HostOS.LINUX, Arch.AMD64, cpus=4, memory_mib=8192)
SPEC = MachineSpec(name="unit", cpus=1, memory_mib=512, disk_gib=4)


@functools.cache
def fake_binary() -> str:
    """A ``qemu-system-x86_64`` symlink to Python: the process then looks like our QEMU.

    (Running Python under a bare foreign argv[0] breaks its prefix detection.)
    """
    bindir = Path(tempfile.mkdtemp(prefix="bm-bin-", dir="/tmp"))
    link = bindir / "qemu-system-x86_64"
    link.symlink_to(sys.executable)
    return str(link)


def fake_launcher(argv: list[str], log: Path) -> QemuProcess:
    return QemuProcess.launch([fake_binary(), str(FAKE), *argv[1:]], log)


class FixedProbe(AcceleratorProbe):
    def __init__(self, accel: Accelerator, cache: Path) -> None:
        super().__init__(HOST, cache)
        self.accel = accel
        self.recorded: list[str | None] = []

    def choose(self, requested: Accelerator, guest_arch: Arch,
               kernel: Path | None) -> AccelChoice:
        return AccelChoice(self.accel, f"{self.accel.value} chosen by the test")

    def record_kvm_verdict(self, problem: str | None) -> None:
        self.recorded.append(problem)


@pytest.fixture
def home() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="bm-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def image(tmp_path: Path) -> GuestImage:
    for name in ("vmlinuz", "initrd.img", "rootfs.squashfs"):
        (tmp_path / name).write_bytes(b"\0")
    return GuestImage(tmp_path / "vmlinuz", tmp_path / "initrd.img",
                      tmp_path / "rootfs.squashfs")


def make(home: Path, image: GuestImage, *extra: str,
         accel: Accelerator = Accelerator.TCG, **kwargs: object) -> Machine:
    from dataclasses import replace

    kwargs.setdefault("launcher", fake_launcher)
    m = Machine("unit", image=replace(image, cmdline=extra), home=home, host=HOST,
                probe=FixedProbe(accel, home / "probe.json"), **kwargs)  # type: ignore[arg-type]
    if not m.exists:
        m.create(SPEC)
    return m


@pytest.fixture
def machine(home: Path, image: GuestImage) -> Iterator[Machine]:
    m = make(home, image)
    yield m
    m.kill()
    m.close()


def test_start_console_pause_and_powerdown(machine: Machine) -> None:
    states: list[MachineState] = []
    machine.on_state_change(lambda s: states.append(s.state))
    status = machine.start()
    assert status.state is MachineState.RUNNING
    assert status.accelerator is Accelerator.TCG and status.slow_mode
    assert status.pid is not None and status.ssh_port
    assert status.timeline is not None
    assert all(r.state is StageState.DONE for r in status.timeline.stages)
    assert status.timeline.record(Stage.ENGINE).guest_uptime == pytest.approx(0.5)
    assert machine.start().pid == status.pid  # idempotent
    console = machine.console
    assert console is not None
    got = threading.Event()
    received = bytearray()

    def on_data(data: bytes) -> None:
        received.extend(data)  # may arrive split across reads
        if b"echo:hi" in received:
            got.set()

    console.subscribe(on_data)
    console.write(b"hi")
    assert got.wait(2)
    machine.pause()
    assert machine.status().state is MachineState.PAUSED
    machine.resume()
    assert machine.status().state is MachineState.RUNNING
    assert machine.stop() is StopOutcome.POWERED_OFF
    assert machine.status().state is MachineState.STOPPED
    assert not machine.paths.pidfile.exists()
    assert states[:2] == [MachineState.STARTING, MachineState.RUNNING]
    assert states[-1] is MachineState.STOPPED
    assert machine.stop() is StopOutcome.ALREADY_STOPPED


def test_stop_quits_when_the_guest_ignores_powerdown(home: Path, image: GuestImage) -> None:
    m = make(home, image, "fake.ignore_powerdown")
    try:
        m.start()
        t0 = time.monotonic()
        assert m.stop(timeout=0.3) is StopOutcome.QUIT
        assert time.monotonic() - t0 < 3
    finally:
        m.kill()
        m.close()


def test_kill9_is_a_crash_and_restart_needs_no_cleanup(machine: Machine) -> None:
    pid = machine.start().pid
    assert pid is not None
    crashed = threading.Event()
    machine.on_state_change(lambda s: crashed.set() if s.state is MachineState.CRASHED else None)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    assert crashed.wait(1.0)
    assert machine.crash_detected_at is not None and machine.crash_detected_at - t0 < 1.0
    assert machine.status().state is MachineState.CRASHED
    again = machine.start()
    assert again.state is MachineState.RUNNING and again.pid != pid


def test_guest_failure_marker(home: Path, image: GuestImage) -> None:
    m = make(home, image, "fake.fail=datadisk")
    try:
        with pytest.raises(BootFailure) as info:
            m.start()
        assert info.value.stage is Stage.DATADISK
        assert info.value.reason == "failed in the guest: injected"
        assert "data disk" in info.value.hint
        assert m.status().state is MachineState.STOPPED
        assert not m.paths.pidfile.exists()
    finally:
        m.close()


def test_guest_reset_during_boot_is_named(home: Path, image: GuestImage) -> None:
    m = make(home, image, "fake.reset")
    try:
        with pytest.raises(BootFailure) as info:
            m.start()
        assert info.value.reason == "stopped: the guest rebooted or its kernel panicked"
        assert "Last console lines:" in str(info.value)
        assert "Linux version" in str(info.value)
    finally:
        m.close()


def test_guest_reset_is_named_when_qemu_exits_before_its_event_is_read(
    home: Path, image: GuestImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU sends SHUTDOWN and exits at once; berthd may see the exit first (it did in
    CI). The reason must still be the guest's reset, not a bare "QEMU exited"."""
    handle = Machine._on_qmp_event

    def slow_reader(self: Machine, event: QmpEvent) -> None:
        if event.name == "SHUTDOWN":
            time.sleep(0.2)  # the exit is seen well before this event is handled
        handle(self, event)

    monkeypatch.setattr(Machine, "_on_qmp_event", slow_reader)
    m = make(home, image, "fake.reset")
    try:
        with pytest.raises(BootFailure) as info:
            m.start()
        assert info.value.reason == "stopped: the guest rebooted or its kernel panicked"
    finally:
        m.close()


def test_kvm_internal_error_falls_back_to_tcg_once(home: Path, image: GuestImage) -> None:
    m = make(home, image, accel=Accelerator.KVM)
    try:
        status = m.start()
        assert status.accelerator is Accelerator.TCG
        assert status.accel_reason == (
            "KVM unusable: KVM internal error — running in slow mode (TCG)"
        )
        probe = m._probe
        assert isinstance(probe, FixedProbe)
        assert probe.recorded == ["KVM internal error"]
        assert "KVM internal error" in m.paths.qemu_log.with_name("qemu.log.1").read_text()
    finally:
        m.kill()
        m.close()


def test_stop_during_start_cancels_the_boot(home: Path, image: GuestImage) -> None:
    m = make(home, image, "fake.hang")
    errors: list[BaseException] = []

    def boot() -> None:
        try:
            m.start()
        except BootFailure as exc:
            errors.append(exc)

    thread = threading.Thread(target=boot)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            snap = m.status().timeline
            if snap is not None and snap.record(Stage.KERNEL).state is StageState.DONE:
                break
            time.sleep(0.02)
        t0 = time.monotonic()
        assert m.stop() is StopOutcome.ALREADY_STOPPED
        assert time.monotonic() - t0 < 2
        thread.join(5)
        assert len(errors) == 1 and isinstance(errors[0], BootFailure)
        assert "cancelled" in errors[0].reason
        assert m.status().state is MachineState.STOPPED
    finally:
        m.kill()
        m.close()


def test_host_disk_full_pauses_with_words_and_resumes(machine: Machine) -> None:
    machine.start()
    paused = threading.Event()
    machine.on_state_change(lambda s: paused.set() if s.state is MachineState.PAUSED else None)
    qmp = machine.qmp
    assert qmp is not None
    qmp.human_monitor_command("fake-ioerror")
    assert paused.wait(2)
    status = machine.status()
    assert status.state is MachineState.PAUSED
    assert "No space left on device" in status.detail and "free disk space" in status.detail
    machine.resume()
    assert machine.status().state is MachineState.RUNNING
    assert machine.status().detail == ""


def test_readiness_hooks_run_after_ready(machine: Machine) -> None:
    order: list[str] = []
    machine.add_readiness_hook(Stage.SOCKET, lambda m: order.append("socket"))
    with pytest.raises(ValueError):
        machine.add_readiness_hook(Stage.SSHD, lambda m: None)
    status = machine.start()
    assert order == ["socket"]
    assert status.timeline is not None
    assert status.timeline.record(Stage.SOCKET).state is StageState.DONE


def test_failing_hook_fails_its_stage(machine: Machine) -> None:
    def broken(m: Machine) -> None:
        raise MachineError("the engine socket did not answer /_ping")

    machine.add_readiness_hook(Stage.SOCKET, broken)
    with pytest.raises(BootFailure) as info:
        machine.start()
    assert info.value.stage is Stage.SOCKET
    assert "did not answer /_ping" in info.value.reason
    assert machine.status().state is MachineState.STOPPED


def test_start_until_an_earlier_stage(machine: Machine) -> None:
    status = machine.start(until=Stage.SSHD)
    assert status.state is MachineState.RUNNING


def test_concurrent_starts_leave_one_process(home: Path, image: GuestImage) -> None:
    machines = [make(home, image), make(home, image)]
    results: list[object] = []
    barrier = threading.Barrier(2)

    def run(m: Machine) -> None:
        barrier.wait()
        results.append(m.start().state)

    threads = [threading.Thread(target=run, args=(m,)) for m in machines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert results == [MachineState.RUNNING, MachineState.RUNNING]
        out = subprocess.run(["pgrep", "-f", str(machines[0].paths.pidfile)],
                             capture_output=True, text=True, check=False).stdout.split()
        assert len(out) == 1
    finally:
        for m in machines:
            m.kill()
            m.close()


def test_reattach_after_daemon_restart(home: Path, image: GuestImage) -> None:
    first = make(home, image)
    pid = first.start().pid
    first.close()  # berthd exits; the VM keeps running
    second = make(home, image)
    try:
        status = second.status()
        assert status.state is MachineState.RUNNING and status.pid == pid
        assert second.attach()
        assert second.qmp is not None and second.qmp.query_status().running
        assert second.stop() is StopOutcome.POWERED_OFF
    finally:
        second.kill()
        second.close()


def test_launch_failure_carries_argv_and_log(home: Path, image: GuestImage) -> None:
    def broken(argv: list[str], log: Path) -> QemuProcess:
        return QemuProcess.launch(
            [fake_binary(), "-c", "import sys; sys.exit('qemu: bad option')"], log
        )

    m = make(home, image, launcher=broken)
    try:
        with pytest.raises(QemuLaunchError) as info:
            m.start()
        assert "bad option" in info.value.log_tail
        assert info.value.argv[0].endswith("qemu-system-x86_64")
        assert info.value.exit_code == 1
        assert m.status().state is MachineState.STOPPED
    finally:
        m.close()


def test_create_update_and_disk_growth(home: Path, image: GuestImage) -> None:
    m = make(home, image)
    disk = m.paths.data_disk
    assert disk.exists() and disk.stat().st_mode & 0o777 == 0o600
    m.update(MachineSpec(name="unit", cpus=1, memory_mib=512, disk_gib=6))
    info = subprocess.run(["qemu-img", "info", "--output=json", str(disk)],
                          capture_output=True, text=True, check=True).stdout
    assert '"virtual-size": 6442450944' in info
    with pytest.raises(InputError, match="cannot shrink"):
        m.update(MachineSpec(name="unit", cpus=1, memory_mib=512, disk_gib=4))
    with pytest.raises(MachineError, match="does not match"):
        m.create(MachineSpec(name="other"))
    m.delete()
    assert not m.paths.state_dir.exists()
    with pytest.raises(MachineError, match="does not exist"):
        m.start()


def test_start_without_image(home: Path) -> None:
    m = Machine("unit", home=home, host=HOST)
    m.create(SPEC)
    with pytest.raises(ImageError, match="No guest image"):
        m.start()
    m.close()


_START_IN_CHILD = """
import sys, json
sys.path.insert(0, {root!r})
sys.path.insert(0, {testdir!r})
from pathlib import Path
import test_machine as t
from vm_backend.machine.image import GuestImage
image = GuestImage(Path({kernel!r}), Path({initrd!r}), Path({rootfs!r}))
m = t.make(Path({home!r}), image)
status = m.start()
print(json.dumps({{"state": status.state.value, "pid": status.pid,
                   "detail": status.detail}}), flush=True)
sys.stdin.read()  # stay alive (holding QMP, if we got it) until the test is done
m.close()
"""


def test_two_processes_starting_at_once_leave_one_qemu(home: Path, image: GuestImage) -> None:
    """Two berthd-like processes: one boots QEMU, the other finds it running."""
    import json

    make(home, image).close()  # create the machine once
    code = _START_IN_CHILD.format(
        root=str(Path(__file__).resolve().parents[3]), testdir=str(Path(__file__).parent),
        kernel=str(image.kernel), initrd=str(image.initrd), rootfs=str(image.rootfs),
        home=str(home),
    )
    children = [
        subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        reports = []
        for child in children:
            assert child.stdout is not None
            reports.append(json.loads(child.stdout.readline()))
        assert [r["state"] for r in reports] == ["running", "running"]
        assert reports[0]["pid"] == reports[1]["pid"]
        # The loser could not take QEMU's single QMP connection and says so.
        assert any("not controllable" in r["detail"] for r in reports)
        out = subprocess.run(["pgrep", "-f", str(make(home, image).paths.pidfile)],
                             capture_output=True, text=True, check=False).stdout.split()
        assert len(out) == 1
    finally:
        for child in children:
            child.communicate("", timeout=10)
        survivor = make(home, image)
        survivor.kill()
        survivor.close()
