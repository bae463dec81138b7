"""Fixtures for the details tab tests: real engines, labelled throwaway containers.

Every container is labelled ``berth.test=details`` and removed in teardown, also when the
test fails. Qt runs offscreen (set before any Qt import).
"""

from __future__ import annotations

import os

# tests/gui/conftest.py does this too; repeated so this folder also runs on its own.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from vm_backend.engine.client import EngineClient
from vm_backend.engine.errors import EngineError

IMAGE = "berth-test/busybox:latest"
#: The longest pause of the GUI event loop a flood test accepts. Idle, this 2-core CI
#: host pauses under 100 ms; at load 40 (other suites running) a few hundred ms happen
#: whatever the code does. A second is a freeze a user would notice.
STALL_MS = 1000
LABEL = {"berth.test": "details"}
ENGINES = {
    "docker": "unix:///var/run/docker.sock",
    "podman": "unix:///run/podman/podman.sock",
}


def _client(url: str) -> EngineClient:
    try:
        client = EngineClient(url)
        client.ping()
    except EngineError as err:
        pytest.skip(f"engine at {url} not available: {err}")
    return client


@pytest.fixture(scope="session")
def docker_client() -> Iterator[EngineClient]:
    client = _client(ENGINES["docker"])
    yield client
    client.close()


@pytest.fixture(params=sorted(ENGINES))
def engine_client(request: pytest.FixtureRequest) -> Iterator[EngineClient]:
    """Each engine in turn (Docker and Podman)."""
    client = _client(ENGINES[request.param])
    yield client
    client.close()


ContainerFactory = Callable[..., str]


def _factory(client: EngineClient) -> Iterator[ContainerFactory]:
    created: list[str] = []

    def make(
        command: list[str], *, start: bool = True, name: str | None = None, **host: Any
    ) -> str:
        # No network unless asked: none of these tests needs one, and a shared test host's
        # bridge may be mid-reconfiguration by other suites.
        host.setdefault("network_mode", "none")
        host_config = client.api.create_host_config(**host)
        result = client.api.create_container(
            IMAGE, command, labels=dict(LABEL), host_config=host_config, tty=False, name=name
        )
        cid = str(result["Id"])
        created.append(cid)
        if start:
            client.api.start(cid)
        return cid

    yield make
    for cid in created:
        try:
            client.api.remove_container(cid, force=True)
        except docker.errors.APIError:
            pass  # already gone: nothing to clean


@pytest.fixture
def new_container(engine_client: EngineClient) -> Iterator[ContainerFactory]:
    """Create (and start) labelled containers on the parametrised engine."""
    yield from _factory(engine_client)


@pytest.fixture
def new_docker_container(docker_client: EngineClient) -> Iterator[ContainerFactory]:
    """Create (and start) labelled containers on dockerd."""
    yield from _factory(docker_client)


def session_for(client: EngineClient) -> SimpleNamespace:
    """The details widget needs only ``.client`` from a session."""
    return SimpleNamespace(client=client)


@pytest.fixture
def details(qtbot: Any) -> Iterator[Any]:
    """A shown ContainerDetails; closed (all streams stopped) in teardown."""
    from app.pages.details import ContainerDetails

    widget = ContainerDetails()
    qtbot.addWidget(widget)
    widget.resize(1100, 700)
    widget.show()
    qtbot.waitExposed(widget)
    yield widget
    widget.close()
