"""Fixtures for tests against the real engines: dockerd and Podman's Docker-compatible API.

``engine_url`` runs a test once per engine (ids ``docker`` and ``podman``) and skips,
saying why, when that engine's socket does not answer. ``make_container`` labels what it
creates with ``berth.test=engine`` and removes all of it in teardown, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vm_backend.engine.client import EngineClient
from vm_backend.engine.run import RunRequest

DOCKER_URL = "unix:///var/run/docker.sock"
PODMAN_URL = "unix:///run/podman/podman.sock"
TEST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
TEST_LABEL = ("berth.test", "engine")
ENGINES = {"docker": DOCKER_URL, "podman": PODMAN_URL}

os.environ.setdefault("CONTAINERS_CONF", "/work/main/.ci/containers.conf")


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
