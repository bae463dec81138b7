"""Real-QEMU tests of the machine layer, booting the tiny busybox guest under TCG.

Run: ``pytest -m vm tests/vm/test_machine_qemu.py -s`` (``-s`` shows the measured figures).
They need qemu-system-x86_64, qemu-img, busybox-static and a Debian kernel package
(downloaded once with ``apt-get download``; see tests/vm/tiny_guest.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from vm_backend.machine.accel import AcceleratorProbe, kvm_device_error
from vm_backend.machine.hostinfo import Arch, detect_host
from vm_backend.machine.image import GuestImage
from vm_backend.machine.machine import Machine, MachineState, StopOutcome
from vm_backend.machine.ports import pick_free_port
from vm_backend.machine.qmp import QmpError
from vm_backend.machine.spec import Accelerator, MachineSpec
from vm_backend.machine.state import read_pid
from vm_backend.machine.timeline import BootFailure, Stage, StageState

# tests/vm is not a package: under pytest's default import mode this directory is on
# sys.path; when run as part of a 'tests' package import (python -m), use that path.
try:
    from tiny_guest import TinyGuest, build_arm64_probe_guest, build_tiny_guest
except ImportError:
    from tests.vm.tiny_guest import TinyGuest, build_arm64_probe_guest, build_tiny_guest

pytestmark = pytest.mark.vm

NAME = "tiny"


@pytest.fixture(scope="session")
def tiny_guest(tmp_path_factory: pytest.TempPathFactory) -> TinyGuest:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.skip("QEMU is not installed")
    guest = build_tiny_guest(tmp_path_factory.mktemp("tiny-guest"))
    if guest is None:
        pytest.skip("no busybox-static or Debian kernel available for the tiny guest")
    return guest


@pytest.fixture(scope="session")
def probe_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One KVM verdict for the whole session: the boot test costs ~8 s when KVM is broken.
    return tmp_path_factory.mktemp("probe") / "accel-probe.json"


def tiny_image(guest: TinyGuest, *extra: str) -> GuestImage:
    return GuestImage(guest.kernel, guest.initrd, guest.rootfs, Arch.AMD64,
                      ("loglevel=6", *extra))


def make_machine(home: Path, guest: TinyGuest, probe_cache: Path, *extra: str,
                 **kwargs: object) -> Machine:
    host = detect_host()
    machine = Machine(
        NAME, image=tiny_image(guest, *extra), home=home, host=host,
        probe=AcceleratorProbe(host, probe_cache), stop_timeout=20.0, **kwargs,  # type: ignore[arg-type]
    )
    if not machine.exists:
        machine.create(MachineSpec(name=NAME, cpus=1, memory_mib=512, disk_gib=4))
    return machine


def qemu_listeners(pid: int) -> list[tuple[str, int]]:
    return [
        (c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    ]


def qemus_for(machine: Machine) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and "qemu-system" in cmdline[0] and str(machine.paths.pidfile) in cmdline:
            found.append(proc)
    return found


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def machine(home: Path, tiny_guest: TinyGuest, probe_cache: Path) -> Iterator[Machine]:
    m = make_machine(home, tiny_guest, probe_cache)
    yield m
    m.kill()
    m.close()
    assert qemus_for(m) == []


def test_boot_timeline_console_qmp_and_powerdown(machine: Machine) -> None:
    socket_hook_calls: list[MachineState] = []
    machine.add_readiness_hook(Stage.SOCKET, lambda m: socket_hook_calls.append(m.status().state))
    started = time.monotonic()
    status = machine.start()
    boot_s = time.monotonic() - started
    assert status.state is MachineState.RUNNING
    assert socket_hook_calls == [MachineState.RUNNING]
    assert status.timeline is not None
    for rec in status.timeline.stages:
        assert rec.state is StageState.DONE, rec
    assert status.timeline.record(Stage.READY).guest_uptime is not None
    qmp_ready = float(status.timeline.record(Stage.QEMU).detail.split()[3])
    print(f"\nQMP ready {qmp_ready * 1000:.0f} ms; boot to ready {boot_s:.1f} s (TCG)")
    assert status.pid is not None and status.rss_bytes is not None

    # Console: typing reaches the guest's shell, and its answer comes back.
    console = machine.console
    assert console is not None
    received = bytearray()
    seen = threading.Event()

    def on_data(data: bytes) -> None:
        received.extend(data)
        if b"answer-42" in received:
            seen.set()

    sub = console.subscribe(on_data)
    sub.write(b"echo answer-$((6*7))\n")
    assert seen.wait(15), bytes(received)
    sub.close()
    assert b"BERTH-STAGE ready" in machine.paths.console_log.read_bytes()

    # QMP: status, pause, resume.
    qmp = machine.qmp
    assert qmp is not None
    assert qmp.query_status().status == "running"
    machine.pause()
    assert qmp.query_status().status == "paused"
    assert machine.status().state is MachineState.PAUSED
    machine.resume()
    assert qmp.query_status().running

    # Published-port plumbing: a loopback forward appears on the host and goes away.
    fwd_port = pick_free_port()
    qmp.hostfwd_add("tcp", "127.0.0.1", fwd_port, 80)
    assert ("127.0.0.1", fwd_port) in qemu_listeners(status.pid)
    assert f"{fwd_port}" in qmp.human_monitor_command("info usernet")
    with pytest.raises(QmpError, match="could not add"):
        qmp.hostfwd_add("tcp", "127.0.0.1", fwd_port, 81)  # already taken
    qmp.hostfwd_remove("tcp", "127.0.0.1", fwd_port)
    assert ("127.0.0.1", fwd_port) not in qemu_listeners(status.pid)

    # ACPI powerdown: the guest powers itself off.
    t0 = time.monotonic()
    outcome = machine.stop()
    assert outcome is StopOutcome.POWERED_OFF, machine.paths.console_log.read_text()[-600:]
    print(f"graceful stop {time.monotonic() - t0:.2f} s")
    assert machine.status().state is MachineState.STOPPED
    assert not machine.paths.pidfile.exists()
    assert not Path(machine.paths.qmp_address).exists()


def test_quit_when_guest_ignores_powerdown(home: Path, tiny_guest: TinyGuest,
                                           probe_cache: Path) -> None:
    m = make_machine(home, tiny_guest, probe_cache)
    try:
        m.start()
        console = m.console
        assert console is not None
        console.write(b"touch /tmp/ignore-power\n")  # the guest now ignores the power button
        time.sleep(1)
        assert m.stop(timeout=2) is StopOutcome.QUIT
    finally:
        m.kill()
        m.close()


def test_kill9_detected_within_1s_and_restart_needs_no_cleanup(machine: Machine) -> None:
    detections: list[float] = []
    restarts: list[float] = []
    machine.start()
    for _ in range(5):
        crashed = threading.Event()
        machine.on_state_change(
            lambda s, ev=crashed: ev.set() if s.state is MachineState.CRASHED else None
        )
        pid = machine.status().pid
        assert pid is not None
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert crashed.wait(1.0), "crash not detected within 1 s"
        detected = (machine.crash_detected_at or time.monotonic()) - killed_at
        detections.append(detected)
        assert machine.status().state is MachineState.CRASHED
        # Leftovers are still on disk: the next start must not care.
        assert machine.paths.pidfile.exists()
        status = machine.start()
        restarts.append(time.monotonic() - killed_at)
        assert status.state is MachineState.RUNNING
        assert status.pid != pid
        assert len(qemus_for(machine)) == 1
    print(f"\ncrash detection: max {max(detections) * 1000:.1f} ms; "
          f"kill -> running again: {min(restarts):.1f}-{max(restarts):.1f} s")


def test_stale_pidfile_of_reused_pid_and_dead_sockets_do_not_block(machine: Machine) -> None:
    machine.paths.ensure()
    machine.paths.pidfile.write_text(f"{os.getpid()}\n")  # a live pid, but not QEMU
    for sock_path in machine.paths.socket_files():
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(sock_path))
        s.close()  # leaves a dead socket file behind
    assert machine.start().state is MachineState.RUNNING
    assert read_pid(machine.paths.pidfile) != os.getpid()


def test_two_concurrent_starts_leave_one_qemu(home: Path, tiny_guest: TinyGuest,
                                              probe_cache: Path) -> None:
    first = make_machine(home, tiny_guest, probe_cache)
    second = make_machine(home, tiny_guest, probe_cache)
    results: list[object] = []
    barrier = threading.Barrier(2)

    def run(m: Machine) -> None:
        barrier.wait()
        try:
            results.append(m.start().state)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            results.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in (first, second)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == [MachineState.RUNNING, MachineState.RUNNING]
        assert len(qemus_for(first)) == 1
    finally:
        first.kill()
        second.kill()
        first.close()
        second.close()


def test_busy_ssh_port_is_repicked_and_only_loopback_listens(
    home: Path, tiny_guest: TinyGuest, probe_cache: Path
) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    m = make_machine(home, tiny_guest, probe_cache)
    m.update(MachineSpec(name=NAME, cpus=1, memory_mib=512, disk_gib=4, ssh_port=busy))
    try:
        status = m.start()
        assert status.ssh_port is not None and status.ssh_port != busy
        assert m.spec.ssh_port == status.ssh_port  # remembered for next time
        assert status.pid is not None
        assert qemu_listeners(status.pid) == [("127.0.0.1", status.ssh_port)]
    finally:
        blocker.close()
        m.kill()
        m.close()


def test_private_permissions(machine: Machine) -> None:
    machine.start()
    for directory in (machine.paths.state_dir, machine.paths.run_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for sock_path in machine.paths.socket_files():
        mode = sock_path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600, oct(mode)
    for private in (machine.paths.data_disk, machine.paths.console_log, machine.paths.qemu_log,
                    machine.paths.spec_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private


def test_guest_failure_names_the_stage(home: Path, tiny_guest: TinyGuest,
                                       probe_cache: Path) -> None:
    m = make_machine(home, tiny_guest, probe_cache, "berthtest.fail=sshd")
    try:
        with pytest.raises(BootFailure) as info:
            m.start()
        assert info.value.stage is Stage.SSHD
        assert "injected" in info.value.reason
        assert "BERTH-FAIL sshd" in info.value.console_tail
        assert info.value.hint
        assert qemus_for(m) == []
        assert m.status().state is MachineState.STOPPED
    finally:
        m.kill()
        m.close()


def test_stage_timeout_names_the_stage(home: Path, tiny_guest: TinyGuest,
                                       probe_cache: Path) -> None:
    m = make_machine(home, tiny_guest, probe_cache, "berthtest.hang=engine",
                     stage_timeouts={Stage.ENGINE: 0.3})
    try:
        with pytest.raises(BootFailure) as info:
            m.start()
        assert info.value.stage is Stage.ENGINE
        assert "did not finish within" in info.value.reason
    finally:
        m.kill()
        m.close()


def test_kvm_probe_falls_back_to_tcg_when_kvm_is_broken(tiny_guest: TinyGuest,
                                                        tmp_path: Path) -> None:
    host = detect_host()
    if kvm_device_error() is not None:
        pytest.skip("/dev/kvm is not usable at all here; nothing to probe")
    probe = AcceleratorProbe(host, tmp_path / "cache.json")
    choice = probe.choose(Accelerator.AUTO, Arch.AMD64, tiny_guest.kernel)
    if choice.accelerator is Accelerator.KVM:
        pytest.skip("KVM works on this machine")
    assert choice.accelerator is Accelerator.TCG
    assert choice.reason.startswith("KVM unusable:")
    assert choice.reason.endswith("running in slow mode (TCG)")
    assert choice.slow
    # The verdict is cached for this boot: the second answer is immediate.
    t0 = time.monotonic()
    assert probe.choose(Accelerator.AUTO, Arch.AMD64, tiny_guest.kernel) == choice
    assert time.monotonic() - t0 < 0.5


def test_arm64_virt_machine_under_tcg(home: Path, tmp_path: Path, probe_cache: Path) -> None:
    """The arm64 command line (virt, ttyAMA0, PCI virtio) accepted and driven end to end.

    The 'kernel' is a raw aarch64 program printing the markers on the PL011, so this runs
    in seconds without an arm64 Debian kernel.
    """
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is not installed")
    guest = build_arm64_probe_guest(tmp_path / "arm64")
    host = detect_host()
    m = Machine(
        "arm", image=GuestImage(guest.kernel, guest.initrd, guest.rootfs, Arch.ARM64),
        home=home, host=host, probe=AcceleratorProbe(host, probe_cache),
    )
    m.create(MachineSpec(name="arm", arch=Arch.ARM64, cpus=1, memory_mib=512, disk_gib=4))
    try:
        status = m.start()
        assert status.state is MachineState.RUNNING
        assert status.accelerator is Accelerator.TCG
        assert "can only be emulated" in status.accel_reason
        assert status.timeline is not None
        assert all(r.state is StageState.DONE for r in status.timeline.stages)
        qmp = m.qmp
        assert qmp is not None and qmp.query_status().running
        # Nothing in this 'guest' handles the power button: the stop must fall to quit.
        assert m.stop(timeout=1) is StopOutcome.QUIT
    finally:
        m.kill()
        m.close()


def test_reattach_after_daemon_restart(home: Path, tiny_guest: TinyGuest,
                                       probe_cache: Path) -> None:
    first = make_machine(home, tiny_guest, probe_cache)
    second: Machine | None = None
    try:
        pid = first.start().pid
        first.close()  # berthd exits; QEMU keeps running on its own
        assert psutil.pid_exists(pid or -1)
        second = make_machine(home, tiny_guest, probe_cache)
        status = second.status()
        assert status.state is MachineState.RUNNING and status.pid == pid
        assert status.accelerator is Accelerator.TCG and status.ssh_port
        assert second.attach()
        qmp = second.qmp
        assert qmp is not None and qmp.query_status().running
        console = second.console
        assert console is not None
        seen = threading.Event()
        received = bytearray()

        def on_data(data: bytes) -> None:
            received.extend(data)  # the answer may arrive split across reads
            if b"again-9" in received:
                seen.set()

        console.subscribe(on_data)
        console.write(b"echo again-$((3*3))\n")
        assert seen.wait(30), bytes(received)
        assert second.stop() is StopOutcome.POWERED_OFF
    finally:
        first.kill()
        if second is not None:
            second.kill()
            second.close()


def test_guest_reboot_is_reported_as_a_crash(machine: Machine) -> None:
    machine.start()
    crashed = threading.Event()
    details: list[str] = []

    def on_state(status: object) -> None:
        if getattr(status, "state", None) is MachineState.CRASHED:
            details.append(str(getattr(status, "detail", "")))
            crashed.set()

    machine.on_state_change(on_state)
    console = machine.console
    assert console is not None
    console.write(b"reboot -f\n")  # -no-reboot turns this into a QEMU exit
    assert crashed.wait(20)
    assert "rebooted or its kernel panicked" in details[0]
    assert machine.start().state is MachineState.RUNNING


@pytest.mark.timeout(1200)
def test_real_guest_image_boots_to_ready_and_powers_off(
    guest_image: Path, tmp_path: Path, probe_cache: Path
) -> None:
    """The machine layer with the real image (guest_image comes from tests/vm/conftest.py).

    Only up to ``ready``: SSH and the engine socket are checked by the e2e tests.
    """
    host = detect_host()
    m = Machine("real", image=GuestImage.from_dir(guest_image), home=tmp_path / "home",
                host=host, probe=AcceleratorProbe(host, probe_cache))
    m.create(MachineSpec(name="real", cpus=min(2, host.cpus), memory_mib=2048, disk_gib=8))
    try:
        started = time.monotonic()
        status = m.start(until=Stage.READY)
        print(f"\nreal guest: ready in {time.monotonic() - started:.1f} s "
              f"({status.accel_reason})")
        assert status.timeline is not None
        for stage in (Stage.KERNEL, Stage.INIT, Stage.NETWORK, Stage.DATADISK, Stage.SSHD,
                      Stage.ENGINE, Stage.READY):
            assert status.timeline.record(stage).state is StageState.DONE, stage
        assert m.stop() is StopOutcome.POWERED_OFF  # the guest's acpid handles the button
    finally:
        m.kill()
        m.close()
