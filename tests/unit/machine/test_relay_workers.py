"""The relay's reusable pump threads (``_Workers``): a new connection's halves go to idle
threads instead of new ones, threads left idle exit, and a stopped relay leaves none.

Starting two threads per connection was about a third of a new connection's cost through a
local sshd (docs/benchmarks-relay.md); these tests pin that the reuse is real and that it
keeps the relay's guarantees (a thread that cannot start still fails the submit, one job's
error does not kill the thread, nothing lingers after stop()).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from tests.unit.machine.test_relay_accounting import FakeSSH, ask, reply_and_close, wait_for
from vm_backend.machine.relay import EngineSocketRelay, _Workers


def _run(workers: _Workers, name: str) -> tuple[threading.Thread, str]:
    """Submit a job that records the thread running it and its name at that moment."""
    seen: list[tuple[threading.Thread, str]] = []
    done = threading.Event()

    def job() -> None:
        me = threading.current_thread()
        seen.append((me, me.name))
        done.set()

    workers.submit(job, name)
    assert done.wait(5)
    return seen[0]


def _idle(workers: _Workers, n: int) -> bool:
    return wait_for(lambda: workers._idle == n)


def test_an_idle_thread_takes_the_next_job_under_the_jobs_name() -> None:
    workers = _Workers(idle_s=30)
    try:
        first, name1 = _run(workers, "berth-relay-up-1")
        assert name1 == "berth-relay-up-1"
        assert _idle(workers, 1)
        second, name2 = _run(workers, "berth-relay-down-2")
        assert second is first, "the idle thread was reused, no new one started"
        assert name2 == "berth-relay-down-2"
    finally:
        workers.close()


def test_busy_threads_are_not_reused_a_new_one_starts() -> None:
    workers = _Workers(idle_s=30)
    gate = threading.Event()
    threads: list[threading.Thread] = []
    started = threading.Semaphore(0)

    def blocking() -> None:
        threads.append(threading.current_thread())
        started.release()
        gate.wait(5)

    try:
        workers.submit(blocking, "a")
        workers.submit(blocking, "b")
        assert started.acquire(timeout=5) and started.acquire(timeout=5)
        assert threads[0] is not threads[1]
    finally:
        gate.set()
        workers.close()


def test_a_thread_left_idle_exits() -> None:
    workers = _Workers(idle_s=0.2)
    thread, _ = _run(workers, "x")
    assert wait_for(lambda: not thread.is_alive()), "idle past idle_s: the thread ended"
    assert workers._idle == 0
    again, _ = _run(workers, "y")  # a job after that gets a new thread
    assert again is not thread
    workers.close()


def test_close_ends_idle_threads_and_refuses_new_jobs() -> None:
    workers = _Workers(idle_s=30)
    thread, _ = _run(workers, "x")
    assert _idle(workers, 1)
    workers.close()
    assert wait_for(lambda: not thread.is_alive())
    with pytest.raises(RuntimeError):
        workers.submit(lambda: None, "late")


def test_a_failing_job_is_logged_and_its_thread_stays_usable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers = _Workers(idle_s=30)

    def boom() -> None:
        raise ValueError("boom")

    try:
        with caplog.at_level(logging.ERROR, logger="vm_backend.machine.relay"):
            workers.submit(boom, "x")
            assert _idle(workers, 1)
        assert "unexpected error in a pump thread" in caplog.text
        assert workers._idle == 1
        _run(workers, "y")
    finally:
        workers.close()


def test_a_thread_that_cannot_start_fails_the_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = _Workers(idle_s=30)

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError):
        workers.submit(lambda: None, "x")
    assert workers._idle == 0
    workers.close()


def test_connections_reuse_pump_threads_and_stop_leaves_none(sock_path: Path) -> None:
    ssh = FakeSSH(reply_and_close)
    relay = EngineSocketRelay(ssh, sock_path)
    relay.start()
    try:
        assert ask(sock_path) == b"answer"
        assert wait_for(lambda: relay.active_connections == 0)
        assert _idle(relay._workers, 2), "both halves' threads wait for the next client"
        before = {t for t in threading.enumerate() if t.name.startswith("berth-relay-")}
        for _ in range(5):
            assert ask(sock_path) == b"answer"
            assert wait_for(lambda: relay.active_connections == 0)
        after = {t for t in threading.enumerate() if t.name.startswith("berth-relay-")}
        assert after <= before, "five more clients, no new threads"
    finally:
        relay.stop()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        t.name.startswith(("berth-relay-up-", "berth-relay-down-"))
        for t in threading.enumerate()
    ):
        time.sleep(0.02)
    assert not [t.name for t in threading.enumerate()
                if t.name.startswith(("berth-relay-up-", "berth-relay-down-"))]
