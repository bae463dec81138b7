"""The containers model and proxy: Qt's model contract, diffs in bulk, plain text."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QModelRoleData, Qt
from PySide6.QtWidgets import QTableView

from app.models.containers import (
    BUSY_ROLE,
    COL_CPU,
    COL_MEMORY,
    COL_NAME,
    COL_PORTS,
    COL_STATE,
    CONTAINER_ROLE,
    PORTS_ROLE,
    SORT_ROLE,
    ContainersModel,
    ContainersProxy,
)
from tests.gui.conftest import FakeSession, make_container
from vm_backend.engine.models import ContainerState, Health, PortBinding, StatsSample
from vm_backend.engine.monitor import Diff


def _model(session: FakeSession) -> ContainersModel:
    model = ContainersModel()
    model.set_session(session)  # type: ignore[arg-type]
    return model


def _names(model: Any) -> list[str]:
    return [model.index(r, COL_NAME).data() for r in range(model.rowCount())]


def test_modeltester_on_model_and_proxy_through_updates(qtmodeltester: Any) -> None:
    session = FakeSession([make_container("a"), make_container("b", state=ContainerState.EXITED)])
    model = _model(session)
    qtmodeltester.check(model)
    proxy = ContainersProxy()
    proxy.setSourceModel(model)
    proxy.sort(COL_NAME)
    qtmodeltester.check(proxy)
    # The tester keeps watching the models while they change.
    c = make_container("c", ports=(PortBinding(80, "tcp", "0.0.0.0", 8080),))
    session.add(c)
    session.change(c.__class__(**{**c.__dict__, "state": ContainerState.EXITED}))
    session.remove(c.id)
    proxy.set_search("a")
    proxy.set_state_filter("stopped")
    assert model.rowCount() == 2


def test_500_rows_then_changes_and_removals_without_reset(qtbot: Any) -> None:
    session = FakeSession()
    model = _model(session)
    resets: list[int] = []
    inserted: list[tuple[int, int]] = []
    model.modelReset.connect(lambda: resets.append(1))
    model.rowsInserted.connect(lambda _p, a, b: inserted.append((a, b)))
    containers = [make_container(f"n{i:03}") for i in range(500)]
    session.add(*containers)
    assert model.rowCount() == 500
    assert inserted == [(0, 499)]  # one insert for the whole batch

    changed_signals: list[tuple[int, int]] = []
    model.dataChanged.connect(lambda a, b, _r=None: changed_signals.append((a.row(), b.row())))
    stopped = [
        c.__class__(**{**c.__dict__, "state": ContainerState.EXITED}) for c in containers[:250]
    ]
    session.change(*stopped)
    assert changed_signals == [(0, 249)]  # contiguous rows: one dataChanged
    assert model.index(10, COL_STATE).data() == "exited"

    removed: list[tuple[int, int]] = []
    model.rowsRemoved.connect(lambda _p, a, b: removed.append((a, b)))
    gone = [c.id for c in containers[100:200]] + [containers[400].id]
    session.remove(*gone)
    assert model.rowCount() == 399
    assert removed == [(400, 400), (100, 199)]  # back to front, one signal per range
    assert resets == []
    # The id index stays right after removals.
    assert model.row_of(containers[450].id) == 450 - 101
    assert model.index(model.row_of(containers[450].id), COL_NAME).data() == "n450"


def test_diff_batch_folding_and_unknown_ids_are_harmless(qtbot: Any) -> None:
    session = FakeSession()
    model = _model(session)
    a, b = make_container("a"), make_container("b")
    # Added then removed within one batch: nothing; changed before known: an insert;
    # removal of an unknown id: ignored; an "added" that is already known: a change.
    model.apply_diffs(
        [
            Diff("container", added=(a,)),
            Diff("container", removed=(a.id, "f" * 64)),
            Diff("container", changed=(b,)),
            Diff("image", added=()),
        ]
    )
    assert _names(model) == ["b"]
    b2 = b.__class__(**{**b.__dict__, "name": "b2"})
    model.apply_diffs([Diff("container", added=(b2,))])
    assert _names(model) == ["b2"]


def test_selection_is_kept_across_updates(qtbot: Any) -> None:
    containers = [make_container(f"s{i}") for i in range(50)]
    session = FakeSession(containers)
    model = _model(session)
    proxy = ContainersProxy()
    proxy.setSourceModel(model)
    view = QTableView()
    qtbot.addWidget(view)
    view.setModel(proxy)
    view.setSortingEnabled(True)
    view.sortByColumn(COL_NAME, Qt.SortOrder.AscendingOrder)
    target = containers[20]
    idx = proxy.mapFromSource(model.index(model.row_of(target.id), 0))
    flags = QItemSelectionModel.SelectionFlag
    view.selectionModel().select(idx, flags.ClearAndSelect | flags.Rows)

    def selected_ids() -> list[str]:
        return [i.data(CONTAINER_ROLE).id for i in view.selectionModel().selectedRows()]

    assert selected_ids() == [target.id]
    session.add(*[make_container(f"new{i}") for i in range(30)])
    session.change(target.__class__(**{**target.__dict__, "state": ContainerState.PAUSED}))
    session.remove(containers[0].id, containers[49].id)
    assert selected_ids() == [target.id]
    assert view.selectionModel().selectedRows()[0].siblingAtColumn(COL_STATE).data() == "paused"


def test_html_in_engine_text_is_returned_literally() -> None:
    evil = make_container(
        "<b>x</b>", image="<img src=x>", labels={"<img src=x onerror=alert(1)>": "<i>v</i>"}
    )
    model = _model(FakeSession([evil]))
    assert model.index(0, COL_NAME).data() == "<b>x</b>"
    tooltip = model.index(0, COL_NAME).data(Qt.ItemDataRole.ToolTipRole)
    assert "<b>x</b>" not in tooltip and "&lt;b&gt;x&lt;/b&gt;" in tooltip


def test_data_never_raises_on_odd_indexes() -> None:
    model = _model(FakeSession([make_container("a")]))
    other = ContainersModel()
    for index in (QModelIndex(), model.index(5, 0), model.index(0, 99), other.index(0, 0)):
        assert model.data(index) is None
    for role in range(0, 300):
        model.data(model.index(0, 0), role)
    assert model.headerData(99, Qt.Orientation.Horizontal) is None


def test_roles_for_sorting_ports_busy_and_stats() -> None:
    c = make_container(
        "web",
        ports=(
            PortBinding(80, "tcp", "0.0.0.0", 8080),
            PortBinding(80, "tcp", "::", 8080),
            PortBinding(443, "tcp"),
        ),
        health=Health.UNHEALTHY,
    )
    model = _model(FakeSession([c]))
    assert model.index(0, COL_PORTS).data(PORTS_ROLE) == [8080]
    assert model.index(0, COL_PORTS).data() == "8080->80/tcp, 443/tcp"
    assert model.index(0, COL_STATE).data() == "running (unhealthy)"
    assert model.index(0, COL_CPU).data(SORT_ROLE) == -1.0
    model.set_stats({c.id: StatsSample(c.id, "", 12.5, 3 * 1024 * 1024, 0, 0, 0, 0, 0, 1)})
    assert model.index(0, COL_CPU).data() == "12.5"
    assert model.index(0, COL_CPU).data(SORT_ROLE) == 12.5
    assert model.index(0, COL_MEMORY).data() == "3.0 MiB"
    model.set_busy(c.id, "Stopping")
    assert model.index(0, COL_STATE).data() == "Stopping…"
    assert model.index(0, 0).data(BUSY_ROLE) == "Stopping"
    model.set_busy(c.id, "")
    assert model.index(0, COL_STATE).data() == "running (unhealthy)"


def test_proxy_search_and_state_filters() -> None:
    cs = [
        make_container("web", labels={"com.docker.compose.project": "shop", "tier": "front"}),
        make_container("db", state=ContainerState.EXITED, image="postgres:16"),
        make_container("cache", state=ContainerState.PAUSED, cid="abc123" + "9" * 58),
        make_container("new", state=ContainerState.CREATED),
        make_container("sick", health=Health.UNHEALTHY),
    ]
    model = _model(FakeSession(cs))
    proxy = ContainersProxy()
    proxy.setSourceModel(model)
    proxy.sort(COL_NAME)
    assert _names(proxy) == ["cache", "db", "new", "sick", "web"]
    proxy.set_search("postgres")
    assert _names(proxy) == ["db"]
    proxy.set_search("front")  # a label value
    assert _names(proxy) == ["web"]
    proxy.set_search("SHOP")  # the project, any case
    assert _names(proxy) == ["web"]
    proxy.set_search("ABC12")
    assert _names(proxy) == ["cache"]
    proxy.set_search("")
    for state, expected in (
        ("running", ["sick", "web"]),
        ("stopped", ["db"]),
        ("paused", ["cache"]),
        ("created", ["new"]),
        ("unhealthy", ["sick"]),
        ("nonsense", ["cache", "db", "new", "sick", "web"]),
    ):
        proxy.set_state_filter(state)
        assert _names(proxy) == expected, state


def test_a_state_change_touches_only_the_columns_it_changes(qtbot: Any) -> None:
    from app.models.containers import COL_CREATED

    c = make_container("one")
    session = FakeSession([c])
    model = _model(session)
    proxy = ContainersProxy()
    proxy.setSourceModel(model)
    proxy.sort(COL_CREATED)
    spans: list[tuple[int, int]] = []
    model.dataChanged.connect(lambda a, b, _r=None: spans.append((a.column(), b.column())))
    layouts: list[int] = []
    proxy.layoutChanged.connect(lambda *_: layouts.append(1))
    session.change(c.__class__(**{**c.__dict__, "state": ContainerState.EXITED}))
    # State, CPU and memory only: the proxy, sorted by Created, has nothing to re-sort.
    assert spans == [(COL_STATE, COL_MEMORY)]
    assert layouts == []
    session.change(c.__class__(**{**c.__dict__, "state": ContainerState.EXITED}))
    assert spans == [(COL_STATE, COL_MEMORY)]  # no difference: no signal


def _painted(view_model: Any, row: int, col: int, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
    """What a delegate gets for one cell: one multiData() call, as Qt 6's delegates make."""
    role_data = QModelRoleData(role)
    view_model.multiData(view_model.index(row, col), role_data)
    return role_data.data()


def test_painted_cells_follow_every_change_and_match_data() -> None:
    # multiData() answers from a per-row cache: each kind of change must drop it.
    c = make_container("web", ports=(PortBinding(80, "tcp", "0.0.0.0", 8080),))
    other = make_container("db", state=ContainerState.EXITED)
    session = FakeSession([c, other])
    model = _model(session)
    proxy = ContainersProxy()
    proxy.setSourceModel(model)
    proxy.sort(COL_NAME)  # db, web
    assert model.running_count() == 1
    roles = (
        Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole,
        Qt.ItemDataRole.ForegroundRole, Qt.ItemDataRole.FontRole,
        Qt.ItemDataRole.TextAlignmentRole, Qt.ItemDataRole.DecorationRole, SORT_ROLE,
    )

    def same_as_data() -> None:
        for row in range(proxy.rowCount()):
            for col in range(proxy.columnCount()):
                for role in roles:
                    assert _painted(proxy, row, col, role) == proxy.index(row, col).data(role)

    same_as_data()
    assert _painted(proxy, 1, COL_CPU) == "…"
    model.set_stats({c.id: StatsSample(c.id, "", 12.5, 3 * 1024 * 1024, 0, 0, 0, 0, 0, 1)})
    assert _painted(proxy, 1, COL_CPU) == "12.5"
    assert _painted(proxy, 1, COL_MEMORY) == "3.0 MiB"
    model.set_busy(c.id, "Stopping")
    assert _painted(proxy, 1, COL_STATE) == "Stopping…"
    same_as_data()
    model.set_busy(c.id, "")
    assert _painted(proxy, 1, COL_STATE) == "running"
    session.change(c.__class__(**{**c.__dict__, "state": ContainerState.EXITED}))
    assert _painted(proxy, 1, COL_STATE) == "exited"
    assert _painted(proxy, 1, COL_CPU) == ""
    assert model.running_count() == 0
    same_as_data()
    session.change(other.__class__(**{**other.__dict__, "state": ContainerState.RUNNING}))
    assert model.running_count() == 1
    session.remove(other.id)
    assert model.running_count() == 0
    assert proxy.rowCount() == 1
    assert _painted(proxy, 0, COL_NAME) == "web"
    assert _painted(proxy, 5, COL_NAME) is None  # a row that is not there: an empty cell
    same_as_data()
