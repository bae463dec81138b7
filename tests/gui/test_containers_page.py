"""The Containers page against a fake session: actions, confirmations, ports, plain text."""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtWidgets import QLabel, QMessageBox, QWidget

from app.models.containers import COL_NAME, COL_PORTS
from app.pages import containers as containers_page
from app.pages.containers import ContainersPage, ContainerSummary
from tests.gui.conftest import FakeSession, make_container
from vm_backend.engine.errors import Conflict
from vm_backend.engine.models import ContainerState, PortBinding


@pytest.fixture(autouse=True)
def summary_details() -> Any:
    """These tests use the plain summary; a window built earlier installs the real panel
    (app.pages.details.panel sets a module-wide factory), so put it back afterwards."""
    before = containers_page._details_factory
    containers_page.set_details_factory(None)
    yield
    containers_page.set_details_factory(before)


@pytest.fixture
def page(qtbot: Any, ctx: Any, fake_session: FakeSession) -> ContainersPage:
    ctx.use_session(fake_session)
    page = ContainersPage(ctx)
    qtbot.addWidget(page)
    page.resize(1000, 600)
    page.show()
    return page


def _select(page: ContainersPage, *names: str) -> None:
    page.table.clearSelection()
    for row in range(page.proxy.rowCount()):
        if page.proxy.index(row, COL_NAME).data() in names:
            page.table.selectionModel().select(
                page.proxy.index(row, 0),
                page.table.selectionModel().SelectionFlag.Select
                | page.table.selectionModel().SelectionFlag.Rows,
            )


def test_rows_follow_the_session_and_actions_follow_the_selection(
    page: ContainersPage, fake_session: FakeSession
) -> None:
    assert page.empty_label.isVisible()
    run, stopped = make_container("run1"), make_container("dead1", state=ContainerState.EXITED)
    fake_session.add(run, stopped)
    assert page.proxy.rowCount() == 2 and not page.empty_label.isVisible()
    assert "2 containers, 1 running" in page.count_label.text()
    _select(page, "run1")
    acts = page.actions_by_key
    assert acts["stop"].isEnabled() and acts["pause"].isEnabled()
    assert not acts["start"].isEnabled() and not acts["resume"].isEnabled()
    _select(page, "dead1")
    assert acts["start"].isEnabled() and not acts["stop"].isEnabled()
    _select(page, "run1", "dead1")  # mixed: both kinds apply
    assert acts["start"].isEnabled() and acts["stop"].isEnabled()


def test_bulk_stop_marks_rows_busy_then_reports(
    qtbot: Any, page: ContainersPage, fake_session: FakeSession
) -> None:
    cs = [make_container(f"w{i}") for i in range(5)]
    fake_session.add(*cs)
    _select(page, *[c.name for c in cs])
    with qtbot.waitSignal(page.action_finished, timeout=5000) as blocker:
        page.actions_by_key["stop"].trigger()
        assert page.busy
        assert any(page.model.busy(c.id) == "Stopping" for c in cs)
    key, ok, failed = blocker.args
    assert key == "stop" and sorted(ok) == sorted(c.id for c in cs) and failed == []
    assert sorted(i for op, i in fake_session.client.calls) == sorted(c.id for c in cs)
    assert all(page.model.busy(c.id) == "" for c in cs)
    assert page.status.text() == "5 containers stopped."


def test_kill_and_remove_confirm_naming_the_containers(
    qtbot: Any, page: ContainersPage, fake_session: FakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_session.add(make_container("alpha"), make_container("beta"))
    _select(page, "alpha", "beta")
    asked: list[str] = []
    monkeypatch.setattr(page, "confirm", lambda title, text: asked.append(text) or False)
    page.actions_by_key["remove"].trigger()
    assert "alpha" in asked[0] and "beta" in asked[0] and "Remove 2 container(s)" in asked[0]
    assert fake_session.client.calls == []  # declined: nothing happened
    monkeypatch.setattr(page, "confirm", lambda title, text: asked.append(text) or True)
    with qtbot.waitSignal(page.action_finished, timeout=5000):
        page.actions_by_key["kill"].trigger()
    assert sorted(op for op, _ in fake_session.client.calls) == ["kill", "kill"]
    # With confirm_destructive off, no question is asked.
    page.ctx.settings.confirm_destructive = False
    asked.clear()
    with qtbot.waitSignal(page.action_finished, timeout=5000):
        page.actions_by_key["remove"].trigger()
    assert asked == []


def test_engine_errors_are_shown_plainly(
    qtbot: Any, page: ContainersPage, fake_session: FakeSession
) -> None:
    fake_session.add(make_container("x1", state=ContainerState.EXITED))
    fake_session.client.fail["start"] = Conflict(
        "Starting x1: <b>port is already allocated</b>", "Stop or remove what uses it first."
    )
    _select(page, "x1")
    with qtbot.waitSignal(page.action_finished, timeout=5000):
        page.actions_by_key["start"].trigger()
    boxes = [w for w in page.findChildren(QMessageBox) if w.isVisible()]
    assert len(boxes) == 1
    box = boxes[0]
    assert box.textFormat().name == "PlainText"
    assert "<b>port is already allocated</b>" in box.text()
    assert "1 failed" in page.status.text()
    box.close()


def test_project_actions_act_on_every_member(
    qtbot: Any, page: ContainersPage, fake_session: FakeSession
) -> None:
    shop = {"com.docker.compose.project": "shop"}
    members = [make_container(f"shop-{i}", labels=shop) for i in range(3)]
    other = make_container("lonely")
    fake_session.add(*members, other)
    _select(page, "shop-0")
    assert page.project_button.isEnabled() and "shop" in page.project_button.text()
    with qtbot.waitSignal(page.action_finished, timeout=5000):
        page.project_actions["restart"].trigger()
    assert sorted(i for _op, i in fake_session.client.calls) == sorted(c.id for c in members)
    _select(page, "shop-0", "lonely")  # two projects ("" and shop): no project actions
    assert not page.project_button.isEnabled()


def test_clicking_a_published_port_opens_it(
    qtbot: Any, page: ContainersPage, fake_session: FakeSession
) -> None:
    fake_session.add(make_container("web", ports=(PortBinding(80, "tcp", "0.0.0.0", 8089),)))
    opened: list[QUrl] = []
    page.open_url = opened.append
    index = page.proxy.index(0, COL_PORTS)
    page.table.clicked.emit(index)
    assert opened == [QUrl("http://localhost:8089")]


def test_summary_shows_html_names_literally(
    qtbot: Any, page: ContainersPage, fake_session: FakeSession
) -> None:
    evil = make_container("<b>x</b>", labels={"<img src=x>": "<i>y</i>"}, image="<u>img</u>")
    fake_session.add(evil)
    with qtbot.waitSignal(page.details_requested, timeout=2000) as blocker:
        _select(page, "<b>x</b>")
    assert blocker.args == [evil.id]
    summary = page.details
    assert isinstance(summary, ContainerSummary)
    assert summary.values["Name"].text() == "<b>x</b>"
    assert "<img src=x>=<i>y</i>" in summary.values["Labels"].text()
    for label in page.findChildren(QLabel):
        assert label.textFormat().name == "PlainText", label.text()


def test_details_factory_hook_replaces_the_summary(
    qtbot: Any, page: ContainersPage, fake_session: FakeSession
) -> None:
    shown: list[str | None] = []

    class Details(QWidget):
        def show_container(self, container_id: str | None) -> None:
            shown.append(container_id)

    c = make_container("one")
    fake_session.add(c)
    try:
        containers_page.set_details_factory(lambda ctx: Details())
        assert isinstance(page.details, Details)
        _select(page, "one")
        assert shown[-1] == c.id
    finally:
        containers_page.set_details_factory(None)
    assert isinstance(page.details, ContainerSummary)


def test_removed_rows_vanish_and_the_summary_says_so(
    qtbot: Any, page: ContainersPage, fake_session: FakeSession
) -> None:
    c = make_container("brief")
    fake_session.add(c)
    _select(page, "brief")
    assert isinstance(page.details, ContainerSummary)
    assert page.details.values["Name"].text() == "brief"
    fake_session.remove(c.id)
    assert page.proxy.rowCount() == 0
    assert "No containers yet" in page.empty_label.text()


def test_stats_targets_on_screen_first_filtered_and_capped(
    page: ContainersPage, fake_session: FakeSession
) -> None:
    # 60 running and 20 stopped, created oldest first; the table sorts newest first.
    running = [make_container(f"web-{i:02d}", created=1_700_000_000.0 + i) for i in range(60)]
    stopped = [
        make_container(f"old-{i:02d}", state=ContainerState.EXITED, created=1_600_000_000.0 + i)
        for i in range(20)
    ]
    fake_session.add(*running, *stopped)
    targets = page.stats_targets()
    assert sorted(targets) == sorted(c.id for c in running)  # every running one, no other
    first_on_screen = page.proxy.container_at(max(page.table.rowAt(0), 0))
    assert first_on_screen is not None and targets[0] == first_on_screen.id
    capped = page.stats_targets(10)
    assert capped == targets[:10]
    # The filter decides what counts, on screen or not.
    page.search.setText("web-0")
    filtered = page.stats_targets()
    assert sorted(filtered) == sorted(c.id for c in running[:10])


def test_multidata_answers_what_data_answers(
    page: ContainersPage, fake_session: FakeSession
) -> None:
    from PySide6.QtCore import QModelRoleData, Qt

    from app.models.containers import COLUMNS, SORT_ROLE

    fake_session.add(
        make_container("<b>web</b>", ports=(PortBinding(80, "tcp", "0.0.0.0", 8080),)),
        make_container("db", state=ContainerState.EXITED),
    )
    roles = [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole,
             Qt.ItemDataRole.ForegroundRole, Qt.ItemDataRole.FontRole,
             Qt.ItemDataRole.TextAlignmentRole, Qt.ItemDataRole.DecorationRole, SORT_ROLE]
    for model in (page.model, page.proxy):
        for row in range(model.rowCount()):
            for col in range(len(COLUMNS)):
                index = model.index(row, col)
                for role in roles:
                    rd = QModelRoleData(role)
                    model.multiData(index, rd)
                    assert rd.data() == index.data(role), (row, col, role)
    # And the table paints through it (the page's view is a real one).
    assert not page.table.viewport().grab().isNull()
