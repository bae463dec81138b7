"""Fixtures for the GUI tests (pytest-qt, offscreen).

* Qt renders offscreen: ``QT_QPA_PLATFORM`` is set before anything imports Qt.
* Every test gets its own ``BERTH_HOME`` (settings, machines) under ``tmp_path``.
* ``docker_url`` / ``podman_url``: the real engines' sockets; the test is skipped, with the
  reason, when the socket does not answer.
* ``real_session``: a started :class:`~app.session.EngineSession` on the real dockerd.
* ``fake_session``: a :class:`FakeSession`, a QObject with the session's signals and a
  recording client, for edge cases the real engine cannot produce on demand.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from PySide6.QtCore import QObject, Signal

from vm_backend.engine.errors import EngineError
from vm_backend.engine.models import (
    Container,
    ContainerState,
    Endpoint,
    EndpointSource,
    EndpointStatus,
    EngineKind,
    Health,
    PortBinding,
)
from vm_backend.engine.monitor import Diff

DOCKER_SOCK = "/var/run/docker.sock"
PODMAN_SOCK = "/run/podman/podman.sock"
TEST_IMAGE = "berth-test/busybox:latest"
TEST_LABEL = "berth.test.gui"


@pytest.fixture(autouse=True)
def berth_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "berth-home"
    home.mkdir()
    monkeypatch.setenv("BERTH_HOME", str(home))
    return home


def _answers(url: str) -> str:
    """"" when the engine at ``url`` answers a ping, else why not."""
    try:
        client = docker.APIClient(base_url=url, timeout=3, version="auto")
        try:
            client.ping()
        finally:
            client.close()
    except Exception as err:  # noqa: BLE001 - any failure means: skip with the reason
        return f"{type(err).__name__}: {err}"
    return ""


@pytest.fixture(scope="session")
def docker_url() -> str:
    url = f"unix://{DOCKER_SOCK}"
    problem = _answers(url)
    if problem:
        pytest.skip(f"dockerd does not answer at {DOCKER_SOCK}: {problem}")
    return url


@pytest.fixture(scope="session")
def podman_url() -> str:
    url = f"unix://{PODMAN_SOCK}"
    problem = _answers(url)
    if problem:
        pytest.skip(f"the Podman API does not answer at {PODMAN_SOCK}: {problem}")
    return url


def endpoint_for(url: str, kind: EngineKind = EngineKind.DOCKER, name: str = "") -> Endpoint:
    return Endpoint(
        name=name or url,
        url=url,
        source=EndpointSource.MANUAL,
        status=EndpointStatus.OK,
        kind=kind,
        version="test",
    )


@pytest.fixture
def real_session(qtbot: Any, docker_url: str) -> Iterator[Any]:
    from app.session import EngineSession

    session = EngineSession(endpoint_for(docker_url))
    with qtbot.waitSignal(session.connection_changed, timeout=10_000):
        session.start()
    yield session
    session.stop()


@pytest.fixture
def docker_api(docker_url: str) -> Iterator[docker.APIClient]:
    """A plain docker-py client for arranging and checking; removes labelled leftovers."""
    api = docker.APIClient(base_url=docker_url, version="auto")
    yield api
    for c in api.containers(all=True, filters={"label": TEST_LABEL}):
        try:
            api.remove_container(c["Id"], force=True)
        except docker.errors.APIError:
            pass
    api.close()


# ---- fakes ----------------------------------------------------------------------------------
_ids = itertools.count(1)


def make_container(
    name: str = "",
    *,
    state: ContainerState = ContainerState.RUNNING,
    image: str = "busybox:latest",
    labels: dict[str, str] | None = None,
    ports: tuple[PortBinding, ...] = (),
    health: Health = Health.NONE,
    cid: str = "",
    created: float = 1_700_000_000.0,
) -> Container:
    n = next(_ids)
    return Container(
        id=cid or f"{n:064x}",
        name=name or f"c{n}",
        image=image,
        image_id=f"sha256:{n:064x}",
        command="sleep 3600",
        state=state,
        status="Up 3 minutes" if state is ContainerState.RUNNING else "Exited (0)",
        health=health,
        created=created + n,
        ports=ports,
        labels=labels or {},
    )


class FakeClient:
    """Records calls; ``fail`` maps a method name to the EngineError it raises."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, EngineError] = {}
        self.lock = threading.Lock()

    def _do(self, op: str, ident: str) -> None:
        with self.lock:
            self.calls.append((op, ident))
        if op in self.fail:
            raise self.fail[op]

    def start(self, ident: str) -> None:
        self._do("start", ident)

    def stop(self, ident: str, timeout: int = 10) -> None:
        self._do("stop", ident)

    def restart(self, ident: str, timeout: int = 10) -> None:
        self._do("restart", ident)

    def pause(self, ident: str) -> None:
        self._do("pause", ident)

    def unpause(self, ident: str) -> None:
        self._do("unpause", ident)

    def kill(self, ident: str, signal: str = "SIGKILL") -> None:
        self._do("kill", ident)

    def remove(self, ident: str, force: bool = False, volumes: bool = False) -> None:
        self._do("remove", ident)

    def info(self) -> Any:
        raise EngineError("fake engine has no info")

    def run(self, req: Any) -> str:
        self._do("run", req.image)
        return f"{next(_ids):064x}"


class FakeSession(QObject):
    """Same signals and surface as EngineSession; the test drives it."""

    connection_changed = Signal(bool, str)
    diffs = Signal(list)
    events = Signal(list)

    def __init__(self, containers: list[Container] | None = None) -> None:
        super().__init__()
        self.endpoint = endpoint_for("unix:///nonexistent/berth-fake.sock", name="fake")
        self.client = FakeClient()
        self.connected = True
        self.reason = ""
        self.tables: dict[str, list[Any]] = {
            "container": list(containers or []),
            "image": [],
            "network": [],
            "volume": [],
        }
        self.retries = 0

    def start(self) -> None:
        """Nothing to start: the test emits what the monitor would."""

    def stop(self) -> None:
        """Nothing to stop."""

    def retry(self) -> None:
        self.retries += 1

    def snapshot(self, kind: str) -> list[Any]:
        return list(self.tables[kind])

    # helpers for tests
    def add(self, *containers: Container) -> None:
        self.tables["container"].extend(containers)
        self.diffs.emit([Diff("container", added=tuple(containers))])

    def change(self, *containers: Container) -> None:
        by_id = {c.id: c for c in containers}
        self.tables["container"] = [by_id.get(c.id, c) for c in self.tables["container"]]
        self.diffs.emit([Diff("container", changed=tuple(containers))])

    def remove(self, *ids: str) -> None:
        self.tables["container"] = [c for c in self.tables["container"] if c.id not in ids]
        self.diffs.emit([Diff("container", removed=tuple(ids))])

    def go_down(self, reason: str) -> None:
        self.connected, self.reason = False, reason
        self.connection_changed.emit(False, reason)

    def come_back(self) -> None:
        self.connected, self.reason = True, ""
        self.connection_changed.emit(True, "")


@pytest.fixture
def fake_session() -> FakeSession:
    return FakeSession()


@pytest.fixture
def ctx(qtbot: Any) -> Iterator[Any]:
    """An AppContext with default settings (no discovery started); stopped afterwards."""
    from app.context import AppContext
    from vm_backend.settings import Settings

    context = AppContext(Settings())
    yield context
    context.shutdown()
