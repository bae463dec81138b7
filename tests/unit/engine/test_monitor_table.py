"""The monitor's _Table diff logic and its event bookkeeping, without an engine."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import requests.exceptions
from hypothesis import given
from hypothesis import strategies as st

from vm_backend.engine.models import Container, ContainerState, Event, Health, Volume
from vm_backend.engine.monitor import Diff, _key_of, _Table


def ctr(cid: str, state: ContainerState = ContainerState.RUNNING) -> Container:
    return Container(cid, f"n-{cid}", "img", "sha256:x", "sleep", state, "", Health.NONE, 1.0)


def test_replace_all_diff() -> None:
    t: _Table[Container] = _Table(_key_of)
    added, changed, removed = t.replace_all([ctr("a"), ctr("b")])
    assert [c.id for c in added] == ["a", "b"] and not changed and not removed
    added, changed, removed = t.replace_all([ctr("a", ContainerState.EXITED), ctr("c")])
    assert [c.id for c in added] == ["c"]
    assert [(c.id, c.state) for c in changed] == [("a", ContainerState.EXITED)]
    assert removed == ["b"]
    assert t.replace_all([ctr("a", ContainerState.EXITED), ctr("c")]) == ([], [], [])


def test_replace_some_only_touches_the_keys_asked() -> None:
    t: _Table[Container] = _Table(_key_of)
    t.replace_all([ctr("a"), ctr("b"), ctr("c")])
    added, changed, removed = t.replace_some({"a", "b", "zz"}, [ctr("a", ContainerState.PAUSED)])
    assert not added and [c.id for c in changed] == ["a"] and removed == ["b"]
    assert set(t.items) == {"a", "c"}  # c was not asked about: kept
    added, _, _ = t.replace_some({"d"}, [ctr("d")])
    assert [c.id for c in added] == ["d"]


def test_labels_change_is_a_change() -> None:
    t: _Table[Container] = _Table(_key_of)
    t.replace_all([ctr("a")])
    _, changed, _ = t.replace_all([replace(ctr("a"), labels={"k": "v"})])
    assert [c.id for c in changed] == ["a"]


def test_key_of_volume_is_name() -> None:
    assert _key_of(Volume("v1", "local", "/m", "")) == "v1"


def test_diff_truthiness() -> None:
    assert not Diff("container")
    assert Diff("container", removed=("a",))


@given(
    before=st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from(list(ContainerState))),
    after=st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from(list(ContainerState))),
)
def test_diff_applied_gives_after(
    before: dict[str, ContainerState], after: dict[str, ContainerState]
) -> None:
    t: _Table[Container] = _Table(_key_of)
    t.replace_all([ctr(k, s) for k, s in before.items()])
    mirror = {k: ctr(k, s) for k, s in before.items()}
    added, changed, removed = t.replace_all([ctr(k, s) for k, s in after.items()])
    for c in (*added, *changed):
        mirror[c.id] = c
    for k in removed:
        del mirror[k]
    assert {k: c.state for k, c in mirror.items()} == after
    assert set(t.items) == set(after)


def test_dispatch_queue_is_bounded(monkeypatch: object) -> None:
    from vm_backend.engine import monitor as mod

    class Listener:
        def on_connection(self, connected: bool, reason: str) -> None: ...
        def on_diff(self, diff: Diff[object]) -> None: ...
        def on_event(self, event: Event) -> None: ...

    mon = mod.EngineMonitor(None, Listener(), kinds=("container",))  # type: ignore[arg-type]
    mod_max = mod.MAX_PENDING_EVENTS
    for i in range(mod_max + 5):
        mon._on_event(Event("container", "start", f"id{i}", "", i + 1))
    assert mon.events_seen == mod_max + 5 and mon.events_dropped == 5
    assert len(mon._events) == mod_max and mon._events[0].id == "id5"
    assert mon._last_event_time == (mod_max + 5) / 1e9
    assert f"id{mod_max + 4}" in mon._dirty_containers


def test_an_unexpected_refresh_error_does_not_end_the_sync_thread() -> None:
    from vm_backend.engine import monitor as mod

    calls: list[int] = []
    listed = threading.Event()

    class Client:
        images = volumes = containers = list

        def networks(self) -> list[object]:
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("a reply the client did not expect")
            listed.set()
            return []

    class Listener:
        def on_connection(self, connected: bool, reason: str) -> None: ...
        def on_diff(self, diff: Diff[object]) -> None: ...
        def on_event(self, event: Event) -> None: ...

    mon = mod.EngineMonitor(
        Client(),  # type: ignore[arg-type]
        Listener(),
        kinds=("network",),
        retry_interval=0.01,
    )
    mon._full_pending = True
    worker = threading.Thread(target=mon._work_loop, daemon=True)
    worker.start()
    try:
        assert listed.wait(5), "the sync thread died on the first error"
    finally:
        mon._stop.set()
        with mon._cond:
            mon._cond.notify_all()
        worker.join(5)
    assert len(calls) >= 2


def test_networks_reports_an_engine_gone_mid_list_as_unavailable() -> None:
    from vm_backend.engine.client import EngineClient
    from vm_backend.engine.errors import EngineUnavailable

    client = EngineClient.__new__(EngineClient)

    class Api:
        def networks(self) -> list[dict[str, object]]:
            return [{"Id": "n1", "Name": "podman"}]

        def inspect_network(self, nid: str) -> dict[str, object]:
            raise requests.exceptions.ConnectionError("socket gone")

    client.api = Api()  # type: ignore[assignment]
    with pytest.raises(EngineUnavailable):
        client.networks()
