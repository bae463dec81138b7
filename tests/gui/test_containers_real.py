"""The Containers page against the real engines: run from the dialog, watch it appear
live, stop it from the table, see it exited; live stats only while the page is visible."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from app.dialogs.run import RunDialog
from app.models.containers import COL_CPU, COL_STATE
from app.pages.containers import ContainersPage
from tests.gui.conftest import TEST_IMAGE, TEST_LABEL, endpoint_for
from vm_backend.engine.models import EngineKind

pytestmark = pytest.mark.engine

# PID 1 ignores SIGTERM unless it traps it: this stops at once instead of after 10 s.
STOPPABLE = "sh -c 'trap \"exit 0\" TERM; sleep 3600 & wait'"


def _page(qtbot: Any, ctx: Any, url: str, kind: EngineKind) -> ContainersPage:
    ctx.switch_engine(endpoint_for(url, kind))
    qtbot.waitUntil(lambda: ctx.session is not None and ctx.session.connected, timeout=15_000)
    page = ContainersPage(ctx)
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    return page


def _state(page: ContainersPage, cid: str) -> str:
    row = page.model.row_of(cid)
    return str(page.model.index(row, COL_STATE).data()) if row >= 0 else ""


@pytest.fixture
def cleanup_names(docker_url: str) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    api = docker.APIClient(base_url=docker_url, version="auto")
    for name in names:
        try:
            api.remove_container(name, force=True)
        except docker.errors.APIError:
            pass
    api.close()


def test_run_from_dialog_appears_live_then_stop_from_table(
    qtbot: Any, ctx: Any, docker_url: str, cleanup_names: list[str]
) -> None:
    page = _page(qtbot, ctx, docker_url, EngineKind.DOCKER)
    name = f"berth-gui-{uuid.uuid4().hex[:8]}"
    cleanup_names.append(name)

    dialog = RunDialog(ctx, image=TEST_IMAGE, parent=page)
    dialog.started.connect(page._run_started)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.name.setText(name)
    dialog.command.setText(STOPPABLE)
    dialog.env.add_row("BERTH_GUI_TEST=1")
    # The shared CI dockerd may run without a docker0 bridge: "none" always works. The
    # engine's networks are offered as soon as the session has listed them.
    qtbot.waitUntil(lambda: dialog.network.findText("none") > 0, timeout=15_000)
    dialog.network.setCurrentIndex(dialog.network.findText("none"))
    assert dialog.run_button.isEnabled()
    with qtbot.waitSignal(dialog.started, timeout=20_000) as blocker:
        dialog.run_button.click()
    cid = blocker.args[0]
    assert not dialog.isVisible()

    # Live: the monitor's diff puts it in the table, running, and the page selects it.
    qtbot.waitUntil(lambda: _state(page, cid) == "running", timeout=15_000)
    qtbot.waitUntil(lambda: [c.id for c in page.selected_containers()] == [cid], timeout=5000)
    assert page.details is not None

    # Live stats while the page is visible.
    qtbot.waitUntil(lambda: page.model.stats(cid) is not None, timeout=15_000)
    row = page.model.row_of(cid)
    assert page.model.index(row, COL_CPU).data() not in ("", "…")

    # Stop from the table.
    assert page.actions_by_key["stop"].isEnabled()
    with qtbot.waitSignal(page.action_finished, timeout=30_000) as done:
        page.actions_by_key["stop"].trigger()
    assert done.args[2] == []
    qtbot.waitUntil(lambda: _state(page, cid) == "exited", timeout=15_000)
    # The toolbar follows cell changes once per burst (a 50 ms debounce).
    qtbot.waitUntil(lambda: page.actions_by_key["start"].isEnabled(), timeout=2000)

    # Hidden: no stats streams stay open.
    page.hide()
    assert page.pool is not None
    qtbot.waitUntil(lambda: page.pool is not None and page.pool.active == [], timeout=5000)


def test_engine_error_from_the_real_engine_is_shown_plainly(
    qtbot: Any, ctx: Any, docker_url: str, cleanup_names: list[str]
) -> None:
    page = _page(qtbot, ctx, docker_url, EngineKind.DOCKER)
    dialog = RunDialog(ctx, image="berth-test/does-not-exist:1", parent=page)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.submit()
    qtbot.waitUntil(lambda: dialog.engine_error.isVisible(), timeout=20_000)
    assert "No such image" in dialog.engine_error.text()
    assert dialog.isVisible()


def test_podman_containers_appear_and_stop_from_the_table(
    qtbot: Any, ctx: Any, podman_url: str
) -> None:
    api = docker.APIClient(base_url=podman_url, version="auto")
    name = f"berth-gui-{uuid.uuid4().hex[:8]}"
    try:
        page = _page(qtbot, ctx, podman_url, EngineKind.PODMAN)
        created = api.create_container(
            TEST_IMAGE, command=["sh", "-c", 'trap "exit 0" TERM; sleep 3600 & wait'],
            name=name, labels={TEST_LABEL: "1"},
        )
        cid = created["Id"]
        api.start(cid)
        qtbot.waitUntil(lambda: _state(page, cid) == "running", timeout=20_000)
        assert page.select_container(cid)
        with qtbot.waitSignal(page.action_finished, timeout=30_000) as done:
            page.actions_by_key["stop"].trigger()
        assert done.args[2] == []
        qtbot.waitUntil(lambda: _state(page, cid) == "exited", timeout=20_000)
    finally:
        try:
            api.remove_container(name, force=True)
        except docker.errors.APIError:
            pass
        api.close()


def test_project_actions_stop_and_remove_a_whole_compose_project(
    qtbot: Any, ctx: Any, docker_url: str, docker_api: docker.APIClient
) -> None:
    page = _page(qtbot, ctx, docker_url, EngineKind.DOCKER)
    project = f"berth-gui-{uuid.uuid4().hex[:6]}"
    ids = []
    for service in ("web", "db"):
        created = docker_api.create_container(
            TEST_IMAGE, command=["sh", "-c", 'trap "exit 0" TERM; sleep 3600 & wait'],
            name=f"{project}-{service}-1",
            labels={TEST_LABEL: "1", "com.docker.compose.project": project,
                    "com.docker.compose.service": service},
            host_config=docker_api.create_host_config(network_mode="none"),
        )
        docker_api.start(created["Id"])
        ids.append(created["Id"])
    qtbot.waitUntil(lambda: all(_state(page, i) == "running" for i in ids), timeout=20_000)
    assert page.select_container(ids[0])
    assert page.selected_project() == project and page.project_button.isEnabled()

    with qtbot.waitSignal(page.action_finished, timeout=30_000) as done:
        page.project_actions["stop"].trigger()
    assert sorted(done.args[1]) == sorted(ids) and done.args[2] == []
    qtbot.waitUntil(lambda: all(_state(page, i) == "exited" for i in ids), timeout=20_000)

    page.ctx.settings.confirm_destructive = False
    assert page.select_container(ids[1])
    with qtbot.waitSignal(page.action_finished, timeout=30_000):
        page.project_actions["remove"].trigger()
    qtbot.waitUntil(lambda: all(page.model.row_of(i) < 0 for i in ids), timeout=20_000)
