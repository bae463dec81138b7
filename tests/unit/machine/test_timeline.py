"""The readiness timeline: ordering, skipping, durations, timeouts and failures."""

from __future__ import annotations

import threading

import pytest

from vm_backend.machine.timeline import (
    TCG_FACTOR,
    BootFailure,
    Stage,
    StageRecord,
    StageState,
    Timeline,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stages_complete_in_order_with_durations() -> None:
    clock = Clock()
    tl = Timeline(clock=clock)
    changes: list[StageRecord] = []
    tl.on_change(changes.append)
    tl.begin()
    clock.now += 0.02
    tl.mark(Stage.QEMU)
    clock.now += 1.0
    tl.mark(Stage.KERNEL)
    clock.now += 0.5
    tl.mark(Stage.INIT, guest_uptime=1.4)
    snap = tl.snapshot()
    assert snap.record(Stage.QEMU).duration == pytest.approx(0.02)
    assert snap.record(Stage.KERNEL).duration == pytest.approx(1.0)
    assert snap.record(Stage.INIT).guest_uptime == 1.4
    assert snap.record(Stage.NETWORK).state is StageState.RUNNING
    assert snap.current is Stage.NETWORK
    assert changes[0].stage is Stage.QEMU and changes[0].state is StageState.RUNNING


def test_later_marker_skips_missing_stages() -> None:
    tl = Timeline(clock=Clock())
    tl.begin()
    tl.mark(Stage.QEMU)
    tl.mark(Stage.SSHD)
    snap = tl.snapshot()
    for stage in (Stage.KERNEL, Stage.INIT, Stage.NETWORK, Stage.DATADISK):
        assert snap.record(stage).state is StageState.SKIPPED
    assert tl.is_done(Stage.DATADISK)
    tl.mark(Stage.INIT)  # late marker for a skipped stage: ignored
    assert tl.snapshot().record(Stage.INIT).state is StageState.SKIPPED


def test_timeouts_scale_under_tcg() -> None:
    fast = Timeline(slow_mode=False, timeouts={Stage.ENGINE: 5})
    slow = Timeline(slow_mode=True, timeouts={Stage.ENGINE: 5})
    assert slow.timeouts[Stage.ENGINE] == 5 * TCG_FACTOR
    assert fast.timeouts[Stage.ENGINE] == 5


def test_overdue_stage_becomes_a_boot_failure() -> None:
    clock = Clock()
    tl = Timeline(clock=clock, timeouts={Stage.KERNEL: 2})
    tl.begin()
    tl.mark(Stage.QEMU)
    clock.now += 1
    assert tl.overdue() is None
    clock.now += 2
    assert tl.overdue() is Stage.KERNEL
    with pytest.raises(BootFailure) as info:
        tl.wait_for(Stage.READY, poll=0.001, console_tail=lambda: "last words")
    failure = info.value
    assert failure.stage is Stage.KERNEL
    assert "did not finish within 2 s" in failure.reason
    assert failure.console_tail == "last words"
    assert "kernel" in failure.message and failure.hint
    assert tl.snapshot().record(Stage.KERNEL).state is StageState.FAILED


def test_guest_failure_is_first_and_final() -> None:
    tl = Timeline()
    tl.begin()
    first = tl.fail(Stage.ENGINE, "failed in the guest: dockerd exited", "tail")
    second = tl.fail(Stage.SSHD, "other")
    assert first is second and tl.failure is first
    assert "restart the machine" in first.hint
    tl.mark(Stage.READY)  # ignored after a failure
    assert not tl.is_done(Stage.READY)


def test_wait_for_wakes_on_mark_from_another_thread() -> None:
    tl = Timeline()
    tl.begin()
    timer = threading.Timer(0.05, lambda: tl.mark(Stage.READY))
    timer.start()
    tl.wait_for(Stage.READY, poll=1.0)
    timer.join()
    assert tl.is_done(Stage.READY)


def test_check_callback_can_abort_the_wait() -> None:
    tl = Timeline()
    tl.begin()

    def check() -> None:
        raise tl.fail(Stage.QEMU, "stopped because QEMU exited (code 1)")

    with pytest.raises(BootFailure, match="QEMU exited"):
        tl.wait_for(Stage.READY, check=check)
