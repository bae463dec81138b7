"""R1: dockerd killed with SIGKILL while containers change state, restarted 3 s later.

Runs against a private dockerd (its own socket, data root, exec root and containerd, no
bridge, no iptables), never the shared engine. The monitor must resubscribe and its table
must equal ``docker ps -a`` on the private socket within 2 s of ``/_ping`` answering.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import (
    DOCKER_URL,
    TEST_IMAGE,
    PrivateDockerd,
    ping_socket,
    wait_until,
)
from tests.integration.test_monitor import Recorder, start_monitor
from vm_backend.engine.client import EngineClient
from vm_backend.engine.errors import EngineError
from vm_backend.engine.models import ContainerState
from vm_backend.engine.run import RunRequest

pytestmark = [
    pytest.mark.engine,
    pytest.mark.fault,
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]


@pytest.fixture
def private_dockerd() -> Iterator[PrivateDockerd]:
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        pytest.skip("needs root and dockerd for a private engine")
    if ping_socket(DOCKER_URL):
        pytest.skip("the shared dockerd (source of the test image) is not answering")
    d = PrivateDockerd.launch()
    try:
        yield d
    finally:
        d.cleanup()


def docker_ps(url: str) -> dict[str, str]:
    out = subprocess.run(
        ["docker", "-H", url, "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.State}}"],
        capture_output=True, text=True, check=True, timeout=20,
    ).stdout
    return dict(line.split() for line in out.splitlines())


def test_kill9_dockerd_during_churn(private_dockerd: PrivateDockerd) -> None:
    client = EngineClient(private_dockerd.url, timeout=10)
    rec = Recorder()
    mon = start_monitor(client, rec)
    stop_churn = threading.Event()
    ids: list[str] = []
    rng = random.Random(7)

    def new() -> str:
        req = RunRequest(image=TEST_IMAGE, command=("sleep", "300"), network="none")
        return client.create(req)

    def churn() -> None:
        while not stop_churn.is_set():
            i = rng.randrange(len(ids))
            try:
                op = rng.choice(("start", "stop", "rm", "start"))
                if op == "start":
                    client.start(ids[i])
                elif op == "stop":
                    client.stop(ids[i], timeout=0)
                else:
                    client.remove(ids[i], force=True)
                    ids[i] = new()
            except EngineError:
                if stop_churn.wait(0.05):
                    return
    try:
        ids.extend(new() for _ in range(20))
        for cid in ids[::2]:
            client.start(cid)
        worker = threading.Thread(target=churn, daemon=True)
        worker.start()
        time.sleep(1.5)
        private_dockerd.kill9()
        stop_churn.set()
        worker.join(15)
        assert wait_until(lambda: not mon.connected, 2), "the monitor did not notice"
        time.sleep(3)
        reconnects = mon.reconnects
        t_restart = time.monotonic()
        private_dockerd.start()
        t_ping = time.monotonic()

        def converged() -> bool:
            real = {c.id: c.state for c in client.containers(all=True)}
            mine = {c.id: c.state for c in mon.snapshot("container")}
            return mine == real and mon.connected

        ok = wait_until(converged, 10, 0.01)
        t_conv = time.monotonic() - t_ping
        print(f"\nR1 kill -9 dockerd: /_ping OK -> monitor converged in {t_conv * 1000:.0f} ms "
              f"({len(mon.snapshot('container'))} containers, reconnects "
              f"{reconnects}->{mon.reconnects}, reconciled_without_event "
              f"{mon.reconciled_without_event}; dockerd took {t_ping - t_restart:.1f} s "
              "to answer after the restart)")
        assert ok, "the monitor never converged"
        assert t_conv < 2.0
        assert mon.reconnects > reconnects
        # No phantom or missing rows against the docker CLI on the private socket.
        table = {c.id: c.state.value for c in mon.snapshot("container")}
        assert table == docker_ps(private_dockerd.url)
        # No live-restore: dockerd stops every container it had started. The one churn
        # thread has at most one start in flight at the kill: dockerd had not recorded that
        # container as running, so its restore leaves the task it finds alive running
        # (seen in CI and reproduced with dockerd --debug: "alive: true ... running=false",
        # then listed as running). The table must show that, as docker ps does (above).
        running = [cid for cid, s in table.items() if s == ContainerState.RUNNING.value]
        assert len(running) <= 1, running
        assert mon.reconciled_without_event > 0
        assert len(table) == 20
    finally:
        stop_churn.set()
        mon.stop()
        client.close()
