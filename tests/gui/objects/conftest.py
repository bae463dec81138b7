"""Fixtures for the object pages (images, volumes, networks) against the real engines.

``engine`` is parametrised over Docker and Podman (a missing socket skips with the
reason). ``ctx`` is a real :class:`~app.context.AppContext` on a started session for that
engine. Every object a test creates carries ``berth.test=objects``; ``cleanup`` removes
whatever still carries it after each test, pass or fail, and checks that no volume helper
container was left behind.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from PySide6.QtWidgets import QMessageBox

from app.bridge import call_in_gui
from app.context import AppContext
from app.session import EngineSession
from vm_backend.engine.models import Endpoint, EndpointSource, EndpointStatus, EngineKind
from vm_backend.settings import Settings

ENGINES = {
    "docker": ("unix:///var/run/docker.sock", EngineKind.DOCKER),
    "podman": ("unix:///run/podman/podman.sock", EngineKind.PODMAN),
}
LABEL = "berth.test=objects"
LABELS = {"berth.test": "objects"}
TEST_IMAGE = "berth-test/busybox:latest"
VOLUME_PREFIX = "berth-objects-"  # every volume the GUI tests create is named so
# Sessions of finished tests: their monitor threads may take longer than stop()'s join to
# wind down on a busy engine and still post to the session's timer, so the QObject must
# outlive them (app.session does not guard against a deleted timer).
_RETIRED: list[EngineSession] = []


@pytest.fixture(autouse=True)
def gc_on_gui_thread() -> Iterator[None]:
    """Collect garbage only here, on the GUI thread.

    A collection triggered by whichever thread allocates (the monitor's workers) may
    free Python-owned Qt objects (test pages, dialogs, the context) from that thread,
    and PySide then crashes in their destructors. qutebrowser does the same in its app.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def _answers(url: str) -> str:
    path = url.removeprefix("unix://")
    if not Path(path).exists():
        return f"{path} does not exist"
    try:
        api = docker.APIClient(base_url=url, version="auto", timeout=10)
        api.ping()
        api.close()
    except Exception as err:  # noqa: BLE001 - any failure means: skip with the reason
        return f"{url} does not answer: {err}"
    return ""


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> str:
    url, _kind = ENGINES[request.param]
    reason = _answers(url)
    if reason:
        pytest.skip(reason)
    return str(request.param)


@pytest.fixture
def api(engine: str) -> Iterator[docker.APIClient]:
    client = docker.APIClient(base_url=ENGINES[engine][0], version="auto", timeout=60)
    yield client
    client.close()


def our_helpers(api: docker.APIClient) -> list[dict[str, Any]]:
    """Volume helpers that mount one of our test volumes.

    Other runs share these engines and may be mid-transfer with helpers of their own:
    those are neither counted nor removed here.
    """
    return [
        c for c in api.containers(all=True, filters={"label": "berth.helper=1"})
        if any(str(m.get("Name", "")).startswith(VOLUME_PREFIX) for m in c.get("Mounts") or [])
    ]


def remove_test_objects(api: docker.APIClient) -> None:
    """Remove everything labelled berth.test=objects (containers first: they hold the rest)."""
    for c in api.containers(all=True, filters={"label": LABEL}):
        _quiet(api.remove_container, c["Id"], force=True)
    for c in our_helpers(api):
        _quiet(api.remove_container, c["Id"], force=True)
    for n in api.networks(filters={"label": LABEL}):
        _quiet(api.remove_network, n["Id"])
    for v in (api.volumes(filters={"label": LABEL}) or {}).get("Volumes") or []:
        _quiet(api.remove_volume, v["Name"], force=True)
    for i in api.images(filters={"label": LABEL}):
        _quiet(api.remove_image, i["Id"], force=True)
    for i in api.images():
        for tag in i.get("RepoTags") or []:
            if "berth-objects-test" in tag:
                _quiet(api.remove_image, tag, force=True)


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except docker.errors.DockerException:
        pass


@pytest.fixture
def cleanup(api: docker.APIClient) -> Iterator[docker.APIClient]:
    remove_test_objects(api)
    yield api
    helpers = our_helpers(api)
    remove_test_objects(api)
    assert helpers == [], "a volume helper container outlived its operation"


@pytest.fixture
def ctx(qtbot: Any, engine: str, cleanup: docker.APIClient) -> Iterator[AppContext]:
    # app.bridge creates its relay QObject on first use; if a monitor thread got there
    # first the relay would live in that thread and GUI callbacks would never run.
    call_in_gui(lambda: None)
    url, kind = ENGINES[engine]
    endpoint = Endpoint(engine, url, EndpointSource.MANUAL, EndpointStatus.OK, kind=kind)
    context = AppContext(settings=Settings())
    session = EngineSession(endpoint, reconcile_interval=5.0)
    context.use_session(session)
    qtbot.waitUntil(lambda: session.connected, timeout=60000)
    yield context
    context.shutdown()
    _RETIRED.append(session)
    context.deleteLater()


def wait_for_key(qtbot: Any, model: Any, key: str, present: bool = True,
                 timeout: int = 60000) -> None:
    qtbot.waitUntil(lambda: (model.row_of(key) >= 0) == present, timeout=timeout)


def click_confirm(qtbot: Any, page: Any) -> None:
    """Wait for the page's confirmation box and press its destructive button."""

    def box() -> QMessageBox | None:
        boxes = [b for b in page.findChildren(QMessageBox) if b.isVisible()]
        return boxes[-1] if boxes else None

    qtbot.waitUntil(lambda: box() is not None, timeout=60000)
    found = box()
    assert found is not None
    yes = next(b for b in found.buttons()
               if found.buttonRole(b) == QMessageBox.ButtonRole.DestructiveRole)
    yes.click()
