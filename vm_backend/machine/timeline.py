"""The staged readiness model of a booting VM, and the error raised when a stage fails.

Stages, in order::

    qemu → kernel → init → network → datadisk → sshd → engine → agent → ready → socket

``qemu`` ends when QMP answers; ``kernel`` when the kernel's first console output (its
"Linux version" banner) arrives; the guest stages when the guest prints
``BERTH-STAGE <stage> <uptime>`` on the console; ``socket`` is marked by host code (the
engine relay) once ``/_ping`` succeeds through the host socket. A stage starts when the
previous one ends; a marker for a later stage completes any skipped earlier ones.

Each stage has a timeout, multiplied under TCG. On timeout or ``BERTH-FAIL`` the timeline
turns into a :class:`BootFailure` naming the stage, why, what to try and the console tail.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vm_backend.errors import BerthError


class Stage(enum.Enum):
    QEMU = "qemu"
    KERNEL = "kernel"
    INIT = "init"
    NETWORK = "network"
    DATADISK = "datadisk"
    SSHD = "sshd"
    ENGINE = "engine"
    AGENT = "agent"
    READY = "ready"
    SOCKET = "socket"

    @property
    def index(self) -> int:
        return STAGE_ORDER.index(self)


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)
GUEST_STAGES = frozenset(
    {Stage.INIT, Stage.NETWORK, Stage.DATADISK, Stage.SSHD, Stage.ENGINE, Stage.AGENT,
     Stage.READY}
)

# Seconds allowed per stage with hardware acceleration; TCG multiplies them.
DEFAULT_TIMEOUTS: dict[Stage, float] = {
    Stage.QEMU: 10.0,
    Stage.KERNEL: 20.0,
    Stage.INIT: 30.0,
    Stage.NETWORK: 30.0,
    Stage.DATADISK: 60.0,
    Stage.SSHD: 30.0,
    Stage.ENGINE: 90.0,
    Stage.AGENT: 30.0,
    Stage.READY: 30.0,
    Stage.SOCKET: 30.0,
}
TCG_FACTOR = 10.0

_WHAT_TO_TRY: dict[Stage, str] = {
    Stage.QEMU: "Check qemu.log in the machine's folder; reinstall QEMU if it is damaged.",
    Stage.KERNEL: "The guest kernel did not start: reinstall the guest image, or try the "
    "TCG accelerator in the machine settings.",
    Stage.INIT: "The guest's init failed: reinstall the guest image.",
    Stage.NETWORK: "The guest network did not come up: restart the machine.",
    Stage.DATADISK: "The data disk could not be mounted; it may be damaged. Restart the "
    "machine; if it fails again, reset the data disk (this deletes images and volumes).",
    Stage.SSHD: "SSH in the guest did not start: restart the machine or reinstall the image.",
    Stage.ENGINE: "The container engine did not start: look at the console log, then "
    "restart the machine. A damaged data disk can cause this too.",
    Stage.AGENT: "The Berth agent in the guest did not start: reinstall the guest image.",
    Stage.READY: "The guest did not finish booting: restart the machine.",
    Stage.SOCKET: "The engine socket on this computer did not answer: restart the machine.",
}


class StageState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class StageRecord:
    """One stage's progress. Times are ``time.time()`` values; None when not reached."""

    stage: Stage
    state: StageState
    started_at: float | None
    ended_at: float | None
    guest_uptime: float | None = None
    detail: str = ""

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


@dataclass(frozen=True)
class TimelineSnapshot:
    stages: tuple[StageRecord, ...]
    slow_mode: bool

    def record(self, stage: Stage) -> StageRecord:
        return self.stages[stage.index]

    @property
    def current(self) -> Stage | None:
        for rec in self.stages:
            if rec.state in (StageState.RUNNING, StageState.FAILED):
                return rec.stage
        return None


class BootFailure(BerthError):
    """The VM did not reach a stage: which one, why in plain words, and the console tail."""

    def __init__(self, stage: Stage, reason: str, hint: str, console_tail: str = "") -> None:
        text = f"The VM did not finish booting: stage '{stage.value}' {reason.rstrip('.')}."
        super().__init__(text, hint)
        self.stage = stage
        self.reason = reason
        self.console_tail = console_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.console_tail:
            last = self.console_tail.strip().splitlines()[-10:]
            text += "\nLast console lines:\n" + "\n".join(last)
        return text


StageCallback = Callable[[StageRecord], None]


class Timeline:
    """Thread-safe stage tracker. Stages are only ever completed in order."""

    def __init__(
        self,
        slow_mode: bool = False,
        timeouts: dict[Stage, float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        base = dict(DEFAULT_TIMEOUTS)
        if timeouts:
            base.update(timeouts)
        factor = TCG_FACTOR if slow_mode else 1.0
        self.timeouts = {stage: seconds * factor for stage, seconds in base.items()}
        self.slow_mode = slow_mode
        self._clock = clock
        self._cond = threading.Condition()
        self._records = [StageRecord(s, StageState.PENDING, None, None) for s in STAGE_ORDER]
        self._failure: BootFailure | None = None
        self._callbacks: list[StageCallback] = []

    def on_change(self, callback: StageCallback) -> None:
        self._callbacks.append(callback)

    def begin(self) -> None:
        """Start the clock on the first stage (qemu)."""
        with self._cond:
            self._set(0, StageState.RUNNING, started_at=self._clock())

    def _set(self, index: int, state: StageState, **changes: object) -> StageRecord:
        old = self._records[index]
        rec = StageRecord(
            stage=old.stage,
            state=state,
            started_at=changes.get("started_at", old.started_at),  # type: ignore[arg-type]
            ended_at=changes.get("ended_at", old.ended_at),  # type: ignore[arg-type]
            guest_uptime=changes.get("guest_uptime", old.guest_uptime),  # type: ignore[arg-type]
            detail=changes.get("detail", old.detail),  # type: ignore[arg-type]
        )
        self._records[index] = rec
        self._cond.notify_all()
        for callback in list(self._callbacks):
            callback(rec)
        return rec

    def mark(self, stage: Stage, guest_uptime: float | None = None, detail: str = "") -> None:
        """Stage ``stage`` is done; earlier unfinished stages are marked skipped."""
        now = self._clock()
        with self._cond:
            if self._failure is not None:
                return
            target = stage.index
            if self._records[target].state in (StageState.DONE, StageState.SKIPPED):
                return
            for i in range(target):
                rec = self._records[i]
                if rec.state in (StageState.PENDING, StageState.RUNNING):
                    self._set(i, StageState.SKIPPED, started_at=rec.started_at or now,
                              ended_at=now)
            start = self._records[target].started_at
            if start is None:
                start = self._records[target - 1].ended_at if target > 0 else now
            self._set(target, StageState.DONE, started_at=start or now, ended_at=now,
                      guest_uptime=guest_uptime, detail=detail)
            if target + 1 < len(self._records):
                nxt = self._records[target + 1]
                if nxt.state is StageState.PENDING:
                    self._set(target + 1, StageState.RUNNING, started_at=now)

    def fail(self, stage: Stage, reason: str, console_tail: str = "") -> BootFailure:
        """Record a failure (first one wins) and return the error to raise."""
        with self._cond:
            if self._failure is None:
                self._set(stage.index, StageState.FAILED, ended_at=self._clock(), detail=reason)
                self._failure = BootFailure(stage, reason, _WHAT_TO_TRY[stage], console_tail)
            self._cond.notify_all()
            return self._failure

    @property
    def failure(self) -> BootFailure | None:
        return self._failure

    def is_done(self, stage: Stage) -> bool:
        return self._records[stage.index].state in (StageState.DONE, StageState.SKIPPED)

    def overdue(self) -> Stage | None:
        """The running stage whose timeout has passed, if any."""
        now = self._clock()
        with self._cond:
            for rec in self._records:
                if rec.state is StageState.RUNNING and rec.started_at is not None:
                    if now - rec.started_at > self.timeouts[rec.stage]:
                        return rec.stage
                    return None
        return None

    def wait_for(
        self,
        stage: Stage,
        poll: float = 0.05,
        console_tail: Callable[[], str] | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        """Block until ``stage`` is done; raise BootFailure on failure or stage timeout.

        ``check`` runs every ``poll`` seconds and may raise (e.g. when QEMU has died).
        """
        while True:
            if check is not None:
                check()
            with self._cond:
                if self._failure is not None:
                    raise self._failure
                if self.is_done(stage):
                    return
                self._cond.wait(poll)
            late = self.overdue()
            if late is not None:
                seconds = self.timeouts[late]
                raise self.fail(
                    late,
                    f"did not finish within {seconds:.0f} s"
                    + (" (slow mode: no hardware acceleration)" if self.slow_mode else ""),
                    console_tail() if console_tail else "",
                )

    def snapshot(self) -> TimelineSnapshot:
        with self._cond:
            return TimelineSnapshot(tuple(self._records), self.slow_mode)
