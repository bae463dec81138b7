"""Fixtures for tests against the real engines: dockerd and Podman's Docker-compatible API.

``engine_url`` runs a test once per engine (ids ``docker`` and ``podman``) and skips,
saying why, when that engine's socket does not answer. ``make_container`` labels what it
creates with ``berth.test=engine`` and removes all of it in teardown, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from vm_backend.engine.client import EngineClient
from vm_backend.engine.run import RunRequest

DOCKER_URL = "unix:///var/run/docker.sock"
PODMAN_URL = "unix:///run/podman/podman.sock"
TEST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
TEST_LABEL = ("berth.test", "engine")
ENGINES = {"docker": DOCKER_URL, "podman": PODMAN_URL}

# Podman's CLI (used by some tests) needs the settings this machine requires.
os.environ.setdefault(
    "CONTAINERS_CONF", str(Path(__file__).resolve().parents[2] / ".ci" / "containers.conf")
)


def ping_socket(url: str, timeout: float = 2.0) -> str:
    """'' when ``GET /_ping`` on a unix socket answers OK, else why not."""
    path = url.removeprefix("unix://")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = sock.recv(64)
    except OSError as err:
        return f"{path}: {err}"
    finally:
        sock.close()
    return "" if b" 200 " in head else f"{path}: answered {head[:40]!r}"


@pytest.fixture(params=sorted(ENGINES), scope="session")
def engine_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    problem = ping_socket(ENGINES[name])
    if problem:
        pytest.skip(f"{name} engine not answering ({problem}); run .ci/services.sh start")
    return name


@pytest.fixture(scope="session")
def engine_url(engine_name: str) -> str:
    return ENGINES[engine_name]


@pytest.fixture(scope="session")
def client(engine_url: str) -> Iterator[EngineClient]:
    c = EngineClient(engine_url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def test_image(client: EngineClient) -> str:
    try:
        client.inspect_image(TEST_IMAGE)
    except Exception as err:  # noqa: BLE001 - any failure means: not usable here
        pytest.skip(f"test image {TEST_IMAGE} missing on {client.url}: {err}")
    return TEST_IMAGE


def unique_name(prefix: str = "berth-t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


MakeContainer = Callable[..., str]


@pytest.fixture
def make_container(client: EngineClient, test_image: str) -> Iterator[MakeContainer]:
    """Create (and by default start) a labelled, network-less busybox container."""
    made: list[str] = []

    def make(
        command: tuple[str, ...] = ("sleep", "300"),
        *,
        start: bool = True,
        name: str = "",
        tty: bool = False,
        **fields: Any,
    ) -> str:
        labels = dict(fields.pop("labels", ()))
        labels[TEST_LABEL[0]] = TEST_LABEL[1]
        req = RunRequest(
            image=fields.pop("image", test_image),
            name=name or unique_name(),
            command=command,
            network=fields.pop("network", "none"),
            tty=tty,
            labels=tuple(labels.items()),
            **fields,
        )
        cid = client.run(req) if start else client.create(req)
        made.append(cid)
        return cid

    yield make
    for cid in made:
        with contextlib.suppress(Exception):
            client.api.remove_container(cid, force=True, v=True)
    # Anything a failed test created by hand with our label goes too.
    with contextlib.suppress(Exception):
        for c in client.api.containers(all=True, filters={"label": "berth.test=engine"}):
            with contextlib.suppress(Exception):
                client.api.remove_container(c["Id"], force=True, v=True)


class FaultProxy:
    """A unix-socket proxy in front of an engine that can cut every connection at once.

    ``cut()`` shuts down both sides of each open connection (the client sees the stream
    end, like podman-desktop#14877's graceful end); new connections keep working.
    """

    def __init__(self, upstream: str, path: str) -> None:
        self.upstream = upstream.removeprefix("unix://")
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(64)
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._closed = False
        self.cuts = 0
        threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept_loop(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.connect(self.upstream)
            except OSError:
                down.close()
                up.close()
                continue
            with self._lock:
                self._open += [down, up]
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
            self.cuts += 1
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture
def fault_proxy(engine_url: str) -> Iterator[FaultProxy]:
    d = tempfile.mkdtemp(prefix="bp", dir="/tmp")
    proxy = FaultProxy(engine_url, os.path.join(d, "engine.sock"))
    yield proxy
    proxy.close()
    shutil.rmtree(d, ignore_errors=True)


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


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
            # Its own network namespace: a dockerd with --bridge=none deletes the host's
            # docker0 interface at start (moby's removeDefaultBridgeInterface), which would
            # break the shared dockerd's default network. unshare execs: same pid.
            ["unshare", "--net", "--",
             "dockerd", "--host", self.url, "--data-root", str(self.root / "data"),
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

    @classmethod
    def launch(cls) -> PrivateDockerd:
        """Start one under /tmp and load the test image from the shared engine into it."""
        d = cls(Path(tempfile.mkdtemp(prefix="bf", dir="/tmp")))
        try:
            d.start()
            save = subprocess.Popen(["docker", "save", TEST_IMAGE], stdout=subprocess.PIPE)
            subprocess.run(["docker", "-H", d.url, "load", "-q"], stdin=save.stdout,
                           capture_output=True, check=True, timeout=60)
            save.wait(30)
        except BaseException:
            d.cleanup()
            raise
        return d

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
