"""R1: dockerd killed with SIGKILL while containers change state, restarted 3 s later.

Runs against a private dockerd (its own socket, data root, exec root and containerd, no
bridge, no iptables), never the shared engine. The monitor must resubscribe and its table
must equal ``docker ps -a`` on the private socket within 2 s of ``/_ping`` answering.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import DOCKER_URL, TEST_IMAGE, ping_socket, wait_until
from tests.integration.test_monitor import Recorder, start_monitor
from vm_backend.engine.client import EngineClient
from vm_backend.engine.errors import EngineError
from vm_backend.engine.models import ContainerState
from vm_backend.engine.run import RunRequest

pytestmark = [pytest.mark.engine, pytest.mark.fault]


class PrivateDockerd:
    """A dockerd of our own under a short temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "docker.sock"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(root / "dockerd.log", "ab")  # noqa: SIM115 - closed in cleanup()

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            ["dockerd", "--host", self.url, "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "x"), "--pidfile", str(self.root / "docker.pid"),
             "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false"],
            stdout=self.log, stderr=self.log, start_new_session=True,
        )
        if not wait_until(lambda: not ping_socket(self.url, 0.5), timeout, 0.01):
            raise RuntimeError(f"private dockerd did not answer; see {self.root}/dockerd.log")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def _leftovers(self) -> list[psutil.Process]:
        """containerd and shims started for this instance (their command lines name root)."""
        mine = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(str(self.root) in arg for arg in p.info["cmdline"] or ()):
                    mine.append(p)
        return mine

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                subprocess.run(
                    f"docker -H {self.url} rm -f $(docker -H {self.url} ps -aq)",
                    shell=True, capture_output=True, timeout=30, check=False,
                )
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for p in self._leftovers():
            with contextlib.suppress(psutil.Error):
                p.kill()
        with open("/proc/mounts") as fh:
            mounts = [line.split()[1] for line in fh if str(self.root) in line]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True, check=False)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_dockerd() -> Iterator[PrivateDockerd]:
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        pytest.skip("needs root and dockerd for a private engine")
    if ping_socket(DOCKER_URL):
        pytest.skip("the shared dockerd (source of the test image) is not answering")
    d = PrivateDockerd(Path(tempfile.mkdtemp(prefix="bf", dir="/tmp")))
    try:
        d.start()
        save = subprocess.Popen(["docker", "save", TEST_IMAGE], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", d.url, "load", "-q"], stdin=save.stdout,
                       capture_output=True, check=True, timeout=60)
        save.wait(30)
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
        # No live-restore: every container is shown stopped after the restart.
        assert all(s != ContainerState.RUNNING.value for s in table.values())
        assert len(table) == 20
    finally:
        stop_churn.set()
        mon.stop()
        client.close()
