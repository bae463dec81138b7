"""The details tabs in the Containers page's details area (the page's factory hook)."""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import QObject, Signal

from app.pages.details.panel import ContainerDetailsPanel, details_factory
from tests.gui.details.conftest import session_for
from vm_backend.engine.client import EngineClient

pytestmark = pytest.mark.engine


class Ctx(QObject):
    """The two things the panel reads from an AppContext."""

    session_changed = Signal(object)

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session


def log_texts(panel: ContainerDetailsPanel) -> list[str]:
    return [line.text for line in panel.details.logs.panel.model.all_lines()]


def test_panel_follows_selection_and_session(
    qtbot: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["sh", "-c", "echo panel-line; sleep 600"])
    ctx = Ctx(session_for(docker_client))
    panel = details_factory(ctx)
    qtbot.addWidget(panel)
    panel.resize(900, 600)
    panel.show()
    assert panel.stack.currentWidget() is panel.hint

    panel.show_container(cid)
    assert panel.stack.currentWidget() is panel.details
    qtbot.waitUntil(lambda: log_texts(panel) == ["panel-line"], timeout=15_000)

    panel.show_container(None)  # nothing (or several) selected
    assert panel.stack.currentWidget() is panel.hint
    assert not panel.details.logs.running

    panel.show_container(cid)
    qtbot.waitUntil(lambda: panel.details.logs.running, timeout=5_000)
    ctx.session_changed.emit(None)  # another engine: the id means nothing there
    assert panel.stack.currentWidget() is panel.hint
    assert not panel.details.logs.running
    panel.close()


def test_containers_page_shows_the_tabs(
    qtbot: Any, ctx: Any, docker_url: str, new_docker_container: Any
) -> None:
    from app.pages import containers as containers_page
    from app.session import EngineSession
    from tests.gui.conftest import endpoint_for

    cid = new_docker_container(["sh", "-c", "echo from-the-page; sleep 600"])
    session = EngineSession(endpoint_for(docker_url))
    ctx.use_session(session)  # starts it
    containers_page.set_details_factory(details_factory)
    try:
        page = containers_page.ContainersPage(ctx)
        qtbot.addWidget(page)
        page.resize(1200, 900)
        page.show()
        assert isinstance(page.details, ContainerDetailsPanel)
        qtbot.waitUntil(lambda: page.model.container(cid) is not None, timeout=15_000)
        proxy_row = page.proxy.mapFromSource(page.model.index(page.model.row_of(cid), 0)).row()
        page.table.selectRow(proxy_row)
        panel = page.details
        assert panel.container_id == cid
        qtbot.waitUntil(lambda: log_texts(panel) == ["from-the-page"], timeout=15_000)
        page.close()
    finally:
        containers_page.set_details_factory(None)
        session.stop()
