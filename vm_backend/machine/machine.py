"""The helper VM's lifecycle: create, start, stop, pause, status, delete.

:class:`Machine` ties the pieces together (spec on disk, accelerator probe, argv builder,
QEMU process, QMP, serial console, readiness timeline). It has no Qt and no asyncio in
its public API: berthd calls it from worker threads and passes in its event-loop thread.

Guarantees:

* **One QEMU per machine.** ``start``/``stop``/``delete`` hold an flock on
  ``<state dir>/lock``; a second ``start`` waits, then finds the running QEMU and returns.
* **Stale leftovers never block.** A pid file or socket whose QEMU is gone (or whose pid
  now belongs to another program) is removed at the next start.
* **Crash detection.** QEMU exit (watcher thread in ``wait()``) or an unrequested QMP
  disconnect flips the state to CRASHED, whichever comes first — milliseconds after
  ``kill -9``.
* **KVM fallback.** If the probe chose KVM but the guest then stops with "KVM internal
  error", the verdict is recorded for this host boot and the start is retried once under
  TCG.
* **Nobody else on QEMU's Windows pipes.** QMP's and the console's pipes are claimed as
  soon as QEMU makes them; if another program holds one, QEMU is killed and the start
  fails (:mod:`vm_backend.machine.qemu_pipes`).
* **Stop sequence.** ACPI ``system_powerdown`` → wait (default 30 s) → QMP ``quit`` →
  kill. Each step is only taken if the previous one did not end QEMU.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from vm_backend.errors import BerthError
from vm_backend.machine import keys as machine_keys
from vm_backend.machine import ports, qemu_lookup
from vm_backend.machine.accel import KVM_INTERNAL_ERROR, AccelChoice, AcceleratorProbe
from vm_backend.machine.argv import build_argv
from vm_backend.machine.console import ConsoleMarker, SerialConsole
from vm_backend.machine.disk import ReclaimResult, compact_disk
from vm_backend.machine.hostinfo import HostInfo, detect_host
from vm_backend.machine.image import GuestImage, ImageError, ImageRecord, adopt_image
from vm_backend.machine.lock import MachineLock
from vm_backend.machine.loopthread import EventLoopThread
from vm_backend.machine.paths import MachinePaths, berth_home, ensure_private_dir
from vm_backend.machine.process import QemuLaunchError, QemuProcess, read_tail
from vm_backend.machine.qemu_pipes import PipeTakenError, claim_vm_pipes
from vm_backend.machine.qmp import QmpError, QmpEvent, SyncQmp
from vm_backend.machine.spec import Accelerator, MachineSpec, load_spec, save_spec, validate
from vm_backend.machine.state import (
    RunRecord,
    clear_stale_runtime,
    forget_run_record,
    live_qemu,
    load_run_record,
    save_run_record,
)
from vm_backend.machine.timeline import (
    STAGE_ORDER,
    BootFailure,
    Stage,
    StageRecord,
    Timeline,
    TimelineSnapshot,
)

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0
_QUIT_WAIT = 5.0
_PORT_ATTEMPTS = 3
# How long an exit waits for the QMP connection's end (it comes at once with the exit).
QMP_LAST_EVENTS_S = 0.5
_HOSTFWD_FAILURE = "Could not set up host forwarding rule"


class MachineError(BerthError):
    """A lifecycle operation on the VM failed."""


class MachineState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    PAUSED = "paused"
    CRASHED = "crashed"


class StopOutcome(enum.Enum):
    """How a stop ended: the guest powered off, QEMU quit on request, or it was killed."""

    ALREADY_STOPPED = "already-stopped"
    POWERED_OFF = "powered-off"
    QUIT = "quit"
    KILLED = "killed"


@dataclass(frozen=True)
class MachineStatus:
    """A snapshot of the machine for the UI and the CLI."""

    name: str
    state: MachineState
    accelerator: Accelerator | None = None
    accel_reason: str = ""
    slow_mode: bool = False
    pid: int | None = None
    uptime_s: float | None = None
    ssh_port: int | None = None
    qmp_address: str = ""
    console_address: str = ""
    timeline: TimelineSnapshot | None = None
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    detail: str = ""


ReadinessHook = Callable[["Machine"], None]
StateCallback = Callable[[MachineStatus], None]
Launcher = Callable[[list[str], Path], QemuProcess]


class Machine:
    """One helper VM. Thread-safe; blocking methods are meant for worker threads."""

    def __init__(
        self,
        name: str = "default",
        *,
        image: GuestImage | None = None,
        home: Path | None = None,
        host: HostInfo | None = None,
        loop: EventLoopThread | None = None,
        probe: AcceleratorProbe | None = None,
        qemu: str | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        lock_timeout: float = 600.0,
        stage_timeouts: dict[Stage, float] | None = None,
        launcher: Launcher = QemuProcess.launch,
    ) -> None:
        self.name = name
        self.home = home if home is not None else berth_home()
        self.paths = MachinePaths.for_machine(name, self.home)
        self.host = host if host is not None else detect_host()
        self.image = image
        self.image_record: ImageRecord | None = None
        self.stop_timeout = stop_timeout
        self.lock_timeout = lock_timeout
        self.stage_timeouts = stage_timeouts
        self._qemu_override = qemu
        self._probe = probe or AcceleratorProbe(self.host, self.home / "accel-probe.json", qemu)
        self._launcher = launcher
        self._owns_loop = loop is None
        self._loop = loop
        self._guard = threading.RLock()  # in-process; the flock covers other processes
        self._state = MachineState.STOPPED
        self._detail = ""
        self._proc: QemuProcess | None = None
        self._qmp: SyncQmp | None = None
        self._console: SerialConsole | None = None
        self._timeline: Timeline | None = None
        self._accel: AccelChoice | None = None
        self._ssh_port: int | None = None
        self._requested_stop = False
        self._unexpected_stop = threading.Event()
        self._cancel_boot = threading.Event()
        self._hooks: dict[Stage, list[ReadinessHook]] = {}
        self._state_callbacks: list[StateCallback] = []
        self._stage_callbacks: list[Callable[[StageRecord], None]] = []
        self.crash_detected_at: float | None = None
        self.last_events: list[QmpEvent] = []
        self._shutdown_reason = ""
        # Set when the QMP connection's end is seen: every event QEMU sent before it
        # exited (SHUTDOWN with its reason) has been delivered by then.
        self._qmp_ended = threading.Event()
        self._io_error = ""
        self._qmp_ready_s = 0.0

    # -- registration -------------------------------------------------------------------

    def add_readiness_hook(self, stage: Stage, hook: ReadinessHook) -> None:
        """Run ``hook(machine)`` during start, after ``ready``, to complete ``stage``.

        Hooks for one stage run in registration order; when they all return, the stage is
        marked done. A hook that raises fails the start with that stage (e.g. the engine
        relay registers for ``Stage.SOCKET`` and pings ``/_ping`` through the host socket).
        """
        if stage.index <= Stage.READY.index:
            raise ValueError(f"readiness hooks are for stages after 'ready', not {stage.value}")
        self._hooks.setdefault(stage, []).append(hook)

    def on_state_change(self, callback: StateCallback) -> None:
        """``callback(status)`` on every state change (from whichever thread caused it)."""
        self._state_callbacks.append(callback)

    def on_stage(self, callback: Callable[[StageRecord], None]) -> None:
        """``callback(record)`` as each boot stage starts, ends or fails."""
        self._stage_callbacks.append(callback)

    # -- accessors ----------------------------------------------------------------------

    @property
    def spec(self) -> MachineSpec:
        return load_spec(self.paths.spec_file)

    @property
    def exists(self) -> bool:
        return self.paths.spec_file.exists()

    @property
    def console(self) -> SerialConsole | None:
        return self._console

    @property
    def qmp(self) -> SyncQmp | None:
        return self._qmp

    @property
    def timeline(self) -> Timeline | None:
        return self._timeline

    def _loop_thread(self) -> EventLoopThread:
        if self._loop is None or self._loop.loop.is_closed():
            self._loop = EventLoopThread(f"berth-qmp-{self.name}")
            self._owns_loop = True
        return self._loop

    # -- create / update / delete -------------------------------------------------------

    def create(self, spec: MachineSpec) -> MachineSpec:
        """Create the state dir, save ``spec`` and create the data disk (idempotent)."""
        if spec.name != self.name:
            raise MachineError(f"Spec name {spec.name!r} does not match machine {self.name!r}.")
        validate(spec, self.host)
        ensure_private_dir(self.home)
        self.paths.ensure()
        with MachineLock(self.paths.lock_file, self.lock_timeout):
            previous = load_spec(self.paths.spec_file) if self.exists else None
            if previous is not None:
                validate(spec, self.host, previous)
            self._ensure_disk(spec, previous)
            save_spec(spec, self.paths.spec_file)
        return spec

    def update(self, spec: MachineSpec) -> MachineSpec:
        """Change settings; the disk may only grow. Takes effect at the next start."""
        if not self.exists:
            raise MachineError(f"Machine {self.name!r} does not exist.", "Create it first.")
        return self.create(spec)

    def _ensure_disk(self, spec: MachineSpec, previous: MachineSpec | None) -> None:
        disk = self.paths.data_disk
        if not disk.exists():
            _qemu_img(["create", "-q", "-f", "qcow2", str(disk), f"{spec.disk_gib}G"])
            disk.chmod(0o600)
        elif previous is not None and spec.disk_gib > previous.disk_gib:
            if live_qemu(self.paths) is not None:
                raise MachineError(
                    "The data disk cannot grow while the VM is running.",
                    "Stop the machine, then change the disk size.",
                )
            _qemu_img(["resize", "-q", "-f", "qcow2", str(disk), f"{spec.disk_gib}G"])

    def compact_disk(self) -> ReclaimResult:
        """Rewrite the data disk without its unused clusters (docs/machine.md, "Disk").

        Only while the VM is stopped: QEMU must not have the file open. Holds the machine
        lock, so a start waits for the compaction to finish.
        """
        if not self.exists:
            raise MachineError(f"Machine {self.name!r} does not exist.", "Create it first.")
        with MachineLock(self.paths.lock_file, self.lock_timeout):
            if live_qemu(self.paths) is not None:
                raise MachineError(
                    "The data disk can only be compacted while the machine is stopped.",
                    "Stop the machine first; while it runs, reclaim trims the disk instead.",
                )
            return compact_disk(self.paths.data_disk)

    def delete(self) -> None:
        """Stop (or kill) the VM and remove every file of the machine."""
        self.stop(timeout=min(self.stop_timeout, 10.0))
        with MachineLock(self.paths.lock_file, self.lock_timeout):
            self._detach()
            if self.paths.run_dir.parent != self.paths.state_dir:
                shutil.rmtree(self.paths.run_dir, ignore_errors=True)
            shutil.rmtree(self.paths.state_dir, ignore_errors=True)
        self._set_state(MachineState.STOPPED, "deleted")

    # -- start --------------------------------------------------------------------------

    def start(self, until: Stage = Stage.SOCKET) -> MachineStatus:
        """Boot the VM and wait for readiness through ``until`` (default: every stage).

        Returns at once if the VM is already running (also when another process started
        it). Raises :class:`BootFailure` if a stage fails or times out (QEMU is then killed
        so the next start is clean), :class:`QemuLaunchError` if QEMU cannot start.
        """
        if not self.exists:
            raise MachineError(f"Machine {self.name!r} does not exist.", "Create it first.")
        image = self._require_image()
        self.paths.ensure()
        with self._guard, MachineLock(self.paths.lock_file, self.lock_timeout):
            proc = self._proc
            if proc is not None and not proc.exited:
                if self._state is not MachineState.CRASHED:
                    return self.status()
                # QMP dropped before the exit was reaped (or QEMU hangs without its
                # monitor): make sure the old process is gone before booting anew.
                if not proc.wait(2.0):
                    proc.kill()
            if self._attach_existing():
                return self.status()
            spec = self.spec
            validate(spec, self.host)
            self._detach()
            clear_stale_runtime(self.paths)
            # Refuses an image too old for the data disk; a newer one becomes the boot image.
            self.image_record = adopt_image(image, self.paths.state_dir)
            self._provision_keys()
            choice = self._probe.choose(spec.accelerator, spec.arch, image.kernel)
            try:
                return self._boot(spec, image, choice, until)
            except (BootFailure, QemuLaunchError) as failure:
                said = failure.reason if isinstance(failure, BootFailure) else failure.log_tail
                if choice.accelerator is Accelerator.KVM and KVM_INTERNAL_ERROR in said:
                    self._probe.record_kvm_verdict(KVM_INTERNAL_ERROR)
                    fallback = AccelChoice(
                        Accelerator.TCG,
                        f"KVM unusable: {KVM_INTERNAL_ERROR} — running in slow mode (TCG)",
                    )
                    log.warning("KVM failed at run time; retrying under TCG")
                    return self._boot(spec, image, fallback, until)
                raise

    def _require_image(self) -> GuestImage:
        if self.image is None:
            raise ImageError(
                "No guest image is configured for this machine.",
                "Install the guest image, or pass its folder to Machine(image=...).",
            )
        self.image.check()
        return self.image

    def _provision_keys(self) -> None:
        """Make sure the pinned host key and the client key exist for fw_cfg."""
        pair = machine_keys.ensure_machine_keys(self.paths.state_dir, self.name)
        wanted = pair.client.public_openssh + "\n"
        current = None
        with contextlib.suppress(FileNotFoundError):
            current = self.paths.authorized_keys.read_text(encoding="ascii")
        if current != wanted:
            tmp = self.paths.authorized_keys.with_suffix(".tmp")
            tmp.write_text(wanted, encoding="ascii")
            tmp.chmod(0o600)
            tmp.replace(self.paths.authorized_keys)

    def _boot(
        self, spec: MachineSpec, image: GuestImage, choice: AccelChoice, until: Stage
    ) -> MachineStatus:
        self._accel = choice
        self._requested_stop = False
        self._unexpected_stop.clear()
        self._cancel_boot.clear()
        self.crash_detected_at = None
        self.last_events = []
        self._shutdown_reason = ""
        timeline = Timeline(choice.slow, self.stage_timeouts)
        for callback in self._stage_callbacks:
            timeline.on_change(callback)
        self._timeline = timeline
        self._set_state(MachineState.STARTING, choice.reason)
        timeline.begin()
        try:
            proc = self._launch_with_port(spec, image, choice)
            timeline.mark(Stage.QEMU, detail=f"QMP ready in {self._qmp_ready_s:.3f} s")
            qmp = self._qmp
            assert qmp is not None
            qmp.cont()
            self._wait_stages(timeline, proc, min(until, Stage.READY, key=lambda s: s.index))
            self._set_state(MachineState.RUNNING, choice.reason)
            self._run_hooks(timeline, until)
        except BaseException as exc:
            if isinstance(exc, QemuLaunchError | MachineError):
                timeline.fail(Stage.QEMU, exc.message, getattr(exc, "log_tail", ""))
            self._abort_boot()
            raise
        return self.status()

    def _launch_with_port(
        self, spec: MachineSpec, image: GuestImage, choice: AccelChoice
    ) -> QemuProcess:
        """Launch QEMU, re-picking the SSH port if it is (or becomes) busy."""
        preferred = spec.ssh_port
        for attempt in range(_PORT_ATTEMPTS):
            port = preferred
            if port == 0 or ports.is_port_busy(port):
                port = ports.pick_free_port()
            argv = build_argv(spec, self.host, self.paths, image, accel=choice.accelerator,
                              ssh_port=port)
            # The bundled QEMU, else Homebrew/MacPorts, the Windows installer's, PATH.
            argv[0] = self._qemu_override or str(qemu_lookup.qemu_system(spec.arch))
            proc = self._launcher(argv, self.paths.qemu_log)
            self._proc = proc
            proc.on_exit(self._on_qemu_exit)
            try:
                self._connect_channels(proc)
            except PipeTakenError as exc:
                # Never run a VM whose console or QMP another program holds.
                proc.kill()
                self._detach()
                raise MachineError(f"{exc.message} Berth stopped the VM.", exc.hint) from exc
            except (QmpError, BerthError) as exc:
                proc.kill()
                self._detach()
                if _HOSTFWD_FAILURE in read_tail(self.paths.qemu_log) and attempt + 1 < (
                    _PORT_ATTEMPTS
                ):
                    # Someone took the port between our check and QEMU's bind.
                    preferred = 0
                    clear_stale_runtime(self.paths)
                    continue
                raise proc.launch_failure(
                    "QEMU failed to start.",
                    "See the QEMU output below and qemu.log in the machine's folder.",
                ) from exc
            _tighten_sockets(self.paths)
            self._ssh_port = port
            if port != spec.ssh_port and spec.ssh_port != 0:
                log.info("SSH port %d was busy; using %d", spec.ssh_port, port)
            if port != spec.ssh_port:
                # Remember the port so the next start (and known_hosts entries) reuse it.
                save_spec(replace(spec, ssh_port=port), self.paths.spec_file)
            save_run_record(
                self.paths,
                RunRecord(
                    pid=proc.pid,
                    create_time=proc.started_at,
                    accelerator=choice.accelerator.value,
                    accel_reason=choice.reason,
                    ssh_port=port,
                    started_at=time.time(),
                ),
            )
            return proc
        raise MachineError("No free SSH port could be found.", "Close other VMs and retry.")

    def _connect_channels(self, proc: QemuProcess, timeout: float = 10.0) -> None:
        def alive() -> bool:
            return not proc.exited

        started = time.monotonic()
        qmp_pipe = console_pipe = None
        if self.paths.windows_pipes:
            # QEMU's pipes serve their first client and are not owner-only: claim both
            # now, before the QMP handshake (QEMU only greets once both have a client).
            # PipeTakenError if another program got there first (or serves them, not QEMU).
            qmp_pipe, console_pipe = claim_vm_pipes(
                self.paths.qmp_address, self.paths.console_address, timeout, alive,
                server_pid=proc.pid,
            )
        try:
            qmp = SyncQmp(self._loop_thread(), f"berth-{self.name}")
            self._qmp_ended.clear()
            qmp.on_event(self._on_qmp_event)
            qmp.on_disconnect(self._on_qmp_lost)
            qmp.connect(self.paths.qmp_address, timeout=timeout, alive=alive, pipe=qmp_pipe)
        except BaseException:
            for pipe in (qmp_pipe, console_pipe):
                if pipe is not None:
                    pipe.close()
            raise
        self._qmp_ready_s = time.monotonic() - started
        self._qmp = qmp
        console = SerialConsole(self.paths.console_address, self.paths.console_log)
        console.on_marker(self._on_marker)
        console.connect(timeout=5.0, alive=alive, pipe=console_pipe)
        self._console = console

    def _wait_stages(self, timeline: Timeline, proc: QemuProcess, until: Stage) -> None:
        def check() -> None:
            if self._cancel_boot.is_set():
                raise timeline.fail(
                    self._current_stage(timeline),
                    "was cancelled: the machine was stopped while starting",
                    self._console_tail(),
                )
            if proc.exited:
                self._await_last_events()
                code = proc.exit_code
                tail = proc.log_tail(5)
                if KVM_INTERNAL_ERROR in tail:
                    reason = KVM_INTERNAL_ERROR
                elif self._shutdown_reason == "guest-reset":
                    reason = "stopped: the guest rebooted or its kernel panicked"
                elif self._shutdown_reason == "guest-shutdown":
                    reason = "stopped: the guest powered itself off"
                else:
                    reason = f"stopped because QEMU exited (code {code})"
                raise timeline.fail(self._current_stage(timeline), reason, self._console_tail())
            if self._unexpected_stop.is_set():
                self._unexpected_stop.clear()
                self._check_vm_stopped(timeline)

        timeline.wait_for(until, console_tail=self._console_tail, check=check)

    def _check_vm_stopped(self, timeline: Timeline) -> None:
        """QEMU paused itself during boot: an internal error (e.g. KVM) or a disk error."""
        qmp = self._qmp
        if qmp is None:
            return
        try:
            status = qmp.query_status()
        except QmpError:
            return
        if status.status == "internal-error":
            tail = read_tail(self.paths.qemu_log, max_lines=5)
            reason = (
                KVM_INTERNAL_ERROR if KVM_INTERNAL_ERROR in tail else "hit a QEMU internal error"
            )
            raise timeline.fail(self._current_stage(timeline), reason, self._console_tail())
        if status.status == "io-error":
            raise timeline.fail(
                self._current_stage(timeline),
                "stopped on a disk error (is the host disk full?)",
                self._console_tail(),
            )

    @staticmethod
    def _current_stage(timeline: Timeline) -> Stage:
        return timeline.snapshot().current or Stage.QEMU

    def _run_hooks(self, timeline: Timeline, until: Stage) -> None:
        for stage in STAGE_ORDER[Stage.READY.index + 1 : until.index + 1]:
            for hook in self._hooks.get(stage, []):
                try:
                    hook(self)
                except BerthError as exc:
                    raise timeline.fail(
                        stage, f"failed: {exc.message}", self._console_tail()
                    ) from exc
                except Exception as exc:
                    raise timeline.fail(stage, f"failed: {exc}", self._console_tail()) from exc
            timeline.mark(stage)

    def _abort_boot(self) -> None:
        self._requested_stop = True
        proc = self._proc
        if proc is not None:
            proc.kill()
        self._detach()
        clear_stale_runtime(self.paths)
        forget_run_record(self.paths)
        failure = self._timeline.failure if self._timeline else None
        self._set_state(MachineState.STOPPED, failure.message if failure else "start failed")

    def _console_tail(self) -> str:
        console = self._console
        if console is not None:
            return console.tail_text(30)
        return read_tail(self.paths.console_log, max_lines=30)

    # -- reattach -----------------------------------------------------------------------

    def _attach_existing(self) -> bool:
        """Adopt a QEMU left running by an earlier berthd. True if one was found."""
        found = live_qemu(self.paths)
        if found is None:
            return False
        self._detach()
        proc = QemuProcess.adopt(found, self.paths.qemu_log)
        self._proc = proc
        proc.on_exit(self._on_qemu_exit)
        record = load_run_record(self.paths)
        if record is not None:
            self._ssh_port = record.ssh_port
            with contextlib.suppress(ValueError):
                self._accel = AccelChoice(Accelerator(record.accelerator), record.accel_reason)
        self._requested_stop = False
        try:
            self._connect_channels(proc, timeout=3.0)
        except BerthError as exc:
            # Typically another berthd holds QMP: report the VM as running, uncontrolled,
            # and leave it running (it may hold the user's containers).
            self._detach()
            why = exc.message
            if isinstance(exc, PipeTakenError):
                # QEMU's Windows pipes serve one client for QEMU's lifetime: the berthd
                # that started the VM, or a program that got in first.
                why = (f"QEMU's pipe is held by another program or was used by an earlier "
                       f"berthd ({exc.message}) — stop the VM and start it again")
            self._set_state(MachineState.RUNNING, f"running, but not controllable: {why}")
            return True
        qmp = self._qmp
        paused = False
        if qmp is not None:
            with contextlib.suppress(QmpError):
                paused = not qmp.query_status().running
        self._set_state(MachineState.PAUSED if paused else MachineState.RUNNING, "reattached")
        return True

    def attach(self) -> bool:
        """Reconnect QMP and console to a VM that is already running (after a berthd restart)."""
        with self._guard:
            if self._proc is not None and not self._proc.exited and self._qmp is not None:
                return True
            return self._attach_existing()

    # -- crash detection ----------------------------------------------------------------

    def _on_qemu_exit(self, code: int | None) -> None:
        self._await_last_events()
        self._note_gone(self._gone_reason(f"QEMU exited (code {code})"))

    def _on_qmp_lost(self) -> None:
        self._qmp_ended.set()
        self._note_gone(self._gone_reason("lost the QMP connection to QEMU"))

    def _await_last_events(self) -> None:
        """QEMU sends SHUTDOWN (with its reason) just before it exits, and the exit can be
        seen first: wait, briefly, until the QMP reader has reached the connection's end."""
        if not self._shutdown_reason:
            self._qmp_ended.wait(QMP_LAST_EVENTS_S)

    def _gone_reason(self, default: str) -> str:
        if self._shutdown_reason == "guest-reset":
            # -no-reboot turns a guest reboot (or a kernel panic, panic=-1) into an exit.
            return "QEMU exited: the guest rebooted or its kernel panicked"
        return default

    def _note_gone(self, why: str) -> None:
        # Runs on the process-watcher or event-loop thread, possibly while start()/stop()
        # hold the guard: it only updates fields, and the boot waiter reports boot deaths.
        if self._requested_stop:
            if self._state is MachineState.STOPPING and why.startswith("QEMU exited"):
                self._set_state(MachineState.STOPPED, self._detail or "guest powered off")
            return
        if self._state in (MachineState.RUNNING, MachineState.PAUSED, MachineState.STOPPING):
            if self.crash_detected_at is None:
                self.crash_detected_at = time.monotonic()
            self._set_state(MachineState.CRASHED, why)

    def _on_qmp_event(self, event: QmpEvent) -> None:
        self.last_events = [*self.last_events[-31:], event]
        if event.name == "STOP" and not self._requested_stop:
            if self._state is MachineState.STARTING:
                self._unexpected_stop.set()
            elif self._state is MachineState.RUNNING:
                detail = "paused by QEMU"
                if self._io_error:
                    # werror=enospc: QEMU pauses rather than fail guest writes on a full
                    # host disk; the user frees space and resumes, nothing is lost.
                    detail = (
                        f"paused after a disk error on the host ({self._io_error}): "
                        "free disk space, then resume"
                    )
                self._set_state(MachineState.PAUSED, detail)
        elif event.name == "RESUME" and self._state is MachineState.PAUSED:
            self._io_error = ""
            self._set_state(MachineState.RUNNING, "")
        elif event.name == "BLOCK_IO_ERROR":
            self._io_error = str(event.data.get("reason", "")) or "I/O error"
        elif event.name == "SHUTDOWN":
            # The guest powered off (or rebooted, which -no-reboot turns into an exit).
            reason = str(event.data.get("reason", ""))
            self._shutdown_reason = reason
            if self._state is MachineState.STARTING:
                return  # the boot waiter reports it, with this reason
            self._requested_stop = self._requested_stop or reason != "guest-reset"
            if self._state is not MachineState.STOPPING and self._requested_stop:
                self._set_state(MachineState.STOPPING, f"guest shut down ({reason})")

    def _on_marker(self, marker: ConsoleMarker) -> None:
        timeline = self._timeline
        if timeline is None:
            return
        if marker.kind == "kernel":
            timeline.mark(Stage.KERNEL)
            return
        try:
            stage = Stage(marker.stage)
        except ValueError:
            log.info("unknown guest stage %r", marker.stage)
            return
        if marker.kind == "stage":
            timeline.mark(stage, guest_uptime=marker.uptime)
        else:
            timeline.fail(stage, f"failed in the guest: {marker.reason}", self._console_tail())

    # -- stop / pause -------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> StopOutcome:
        """Power the guest off (ACPI), then ``quit``, then kill — each after a wait."""
        wait = self.stop_timeout if timeout is None else timeout
        self._cancel_if_starting()
        with self._guard, MachineLock(self.paths.lock_file, self.lock_timeout):
            if self._proc is None or self._proc.exited:
                self._attach_existing()
            proc = self._proc
            if proc is None or proc.exited:
                self._finish_stop()
                return StopOutcome.ALREADY_STOPPED
            self._requested_stop = True
            self._set_state(MachineState.STOPPING, "stopping")
            outcome = self._stop_sequence(proc, wait)
            self._finish_stop()
            return outcome

    def _stop_sequence(self, proc: QemuProcess, wait: float) -> StopOutcome:
        qmp = self._qmp
        if qmp is not None and qmp.connected:
            with contextlib.suppress(QmpError):
                status = qmp.query_status()
                if not status.running:
                    # A paused guest cannot act on the power button.
                    qmp.cont()
            try:
                qmp.system_powerdown()
            except QmpError:
                pass
            else:
                if proc.wait(wait):
                    return StopOutcome.POWERED_OFF
            with contextlib.suppress(QmpError):
                qmp.quit()
            if proc.wait(_QUIT_WAIT):
                return StopOutcome.QUIT
        proc.kill()
        return StopOutcome.KILLED

    def _finish_stop(self) -> None:
        self._detach()
        if live_qemu(self.paths) is None:
            clear_stale_runtime(self.paths)
            forget_run_record(self.paths)
        self._proc = None
        self._set_state(MachineState.STOPPED, "")

    def _cancel_if_starting(self) -> None:
        # start() holds the guard for the whole boot (minutes under TCG): ask it to give
        # up, so stop()/kill() during a boot take effect within a poll interval.
        if self._state is MachineState.STARTING:
            self._cancel_boot.set()

    def kill(self) -> None:
        """Kill QEMU at once (no guest shutdown). For a hung VM."""
        self._cancel_if_starting()
        with self._guard:
            self._requested_stop = True
            if self._proc is None:
                self._attach_existing()
            if self._proc is not None:
                self._proc.kill()
            self._finish_stop()

    def pause(self) -> None:
        """Freeze the guest's CPUs (QMP ``stop``); memory stays allocated."""
        qmp = self._require_qmp()
        qmp.stop()
        self._set_state(MachineState.PAUSED, "paused")

    def resume(self) -> None:
        """Continue after :meth:`pause` or after QEMU paused the VM on a disk error."""
        qmp = self._require_qmp()
        qmp.cont()
        self._io_error = ""
        self._set_state(MachineState.RUNNING, "")

    def _require_qmp(self) -> SyncQmp:
        qmp = self._qmp
        if qmp is None or not qmp.connected:
            raise MachineError(f"Machine {self.name!r} is not running.", "Start it first.")
        return qmp

    # -- status -------------------------------------------------------------------------

    def status(self) -> MachineStatus:
        proc = self._proc
        state = self._state
        if (proc is None or proc.exited) and state not in (
            MachineState.CRASHED,
            MachineState.STARTING,
        ):
            found = live_qemu(self.paths)
            if found is not None:
                return self._status_from_record(found.pid)
            state = MachineState.STOPPED
        stats = proc.stats() if proc is not None else None
        running = proc is not None and not proc.exited
        accel = self._accel
        return MachineStatus(
            name=self.name,
            state=state,
            accelerator=accel.accelerator if accel else None,
            accel_reason=accel.reason if accel else "",
            slow_mode=accel.slow if accel else False,
            pid=proc.pid if running and proc is not None else None,
            uptime_s=time.time() - proc.started_at if running and proc is not None else None,
            ssh_port=self._ssh_port if running else None,
            qmp_address=self.paths.qmp_address,
            console_address=self.paths.console_address,
            timeline=self._timeline.snapshot() if self._timeline else None,
            rss_bytes=stats.rss_bytes if stats else None,
            cpu_percent=stats.cpu_percent if stats else None,
            detail=self._detail,
        )

    def _status_from_record(self, pid: int) -> MachineStatus:
        record = load_run_record(self.paths)
        accel: Accelerator | None = None
        if record is not None:
            with contextlib.suppress(ValueError):
                accel = Accelerator(record.accelerator)
        return MachineStatus(
            name=self.name,
            state=MachineState.RUNNING,
            accelerator=accel,
            accel_reason=record.accel_reason if record else "",
            slow_mode=accel is Accelerator.TCG,
            pid=pid,
            uptime_s=time.time() - record.started_at if record else None,
            ssh_port=record.ssh_port if record else None,
            qmp_address=self.paths.qmp_address,
            console_address=self.paths.console_address,
            detail="running (not attached)",
        )

    def _set_state(self, state: MachineState, detail: str) -> None:
        changed = state is not self._state or detail != self._detail
        self._state = state
        self._detail = detail
        if not changed:
            return
        snapshot = self.status()
        loop = self._loop
        if loop is not None and loop.in_loop_thread():
            # Changes seen by QMP arrive on the event-loop thread; a callback that calls
            # back into the machine (stop, status over QMP) would deadlock there.
            threading.Thread(
                target=self._notify, args=(snapshot,), name="berth-state-cb", daemon=True
            ).start()
        else:
            self._notify(snapshot)

    def _notify(self, snapshot: MachineStatus) -> None:
        for callback in list(self._state_callbacks):
            try:
                callback(snapshot)
            except Exception:
                log.exception("machine state callback failed")

    # -- teardown -----------------------------------------------------------------------

    def _detach(self) -> None:
        """Drop our QMP and console connections (QEMU itself is left alone)."""
        qmp, self._qmp = self._qmp, None
        console, self._console = self._console, None
        if qmp is not None:
            with contextlib.suppress(QmpError, TimeoutError, RuntimeError):
                qmp.close()
            self._qmp_ended.set()  # no events come from a connection we closed
        if console is not None:
            console.close()

    def close(self) -> None:
        """Release connections and our loop thread; a running VM keeps running."""
        with self._guard:
            self._requested_stop = True
            self._detach()
            if self._owns_loop and self._loop is not None:
                self._loop.stop()
                self._loop = None


def _tighten_sockets(paths: MachinePaths) -> None:
    """QEMU creates sockets 0777 & ~umask (0700 under our 077): make them plain 0600.

    The 0700 run dir is the real barrier; this keeps the sockets private on their own too.
    """
    for path in paths.socket_files():
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                os.chmod(path, 0o600)


def _qemu_img(args: list[str]) -> None:
    try:
        result = subprocess.run(
            [str(qemu_lookup.qemu_img()), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )
    except FileNotFoundError as exc:
        raise MachineError(
            "qemu-img is not installed.", qemu_lookup.install_hint(qemu_lookup.QEMU_IMG,
                                                                    qemu_lookup.current_os())
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise MachineError("qemu-img did not finish within 2 minutes.") from exc
    if result.returncode != 0:
        raise MachineError(
            f"qemu-img {args[0]} failed: {result.stderr.strip() or result.returncode}",
            "Check free disk space and the permissions of the machine's folder.",
        )
