"""The Networks page and its dialogs against the real Docker and Podman."""

from __future__ import annotations

import random
import uuid
from typing import Any

import docker
import pytest
from PySide6.QtWidgets import QMessageBox

from app.dialogs.network_ops import CreateNetworkDialog, parse_network
from app.models.networks import COL_CONTAINERS, NetworkTableModel
from app.pages.networks import NetworksPage
from tests.gui.objects.conftest import LABEL, click_confirm, wait_for_key
from vm_backend.engine.models import (
    Container,
    ContainerState,
    Health,
    Network,
    NetworkAttachment,
    PruneResult,
)
from vm_backend.errors import InputError

pytestmark = pytest.mark.engine


def net(ident: str, name: str, attachments: tuple[NetworkAttachment, ...] = ()) -> Network:
    return Network(id=ident, name=name, driver="bridge", scope="local", internal=False,
                   subnets=("10.1.0.0/24",), gateways=("10.1.0.1",), created="",
                   attachments=attachments)


def running_on(name: str, *networks: str) -> Container:
    return Container(id=name * 8, name=name, image="x", image_id="", command="",
                     state=ContainerState.RUNNING, status="Up", health=Health.NONE, created=0,
                     networks=networks)


def test_network_model(qtmodeltester: Any) -> None:
    model = NetworkTableModel()
    resets: list[int] = []
    model.modelReset.connect(lambda: resets.append(1))
    model.replace_all([net("1", "front"), net("2", "back")])
    qtmodeltester.check(model)
    model.set_containers([running_on("a", "front", "back"), running_on("b", "front")])
    assert model.index(model.row_of("1"), COL_CONTAINERS).data() == "2"
    assert model.index(model.row_of("2"), COL_CONTAINERS).data() == "1"
    model.upsert([net("2", "back-renamed")])
    assert model.index(model.row_of("2"), 0).data() == "back-renamed"
    model.remove_keys(["1", "missing"])
    qtmodeltester.check(model)
    assert resets == []


def test_parse_network_checks_addresses() -> None:
    req = parse_network("web", "bridge", "10.9.0.0/24", "10.9.0.1", True, "a=b")
    assert (req.subnet, req.gateway, req.internal, req.labels) == (
        "10.9.0.0/24", "10.9.0.1", True, {"a": "b"})
    for args, match in [
        (("", "bridge", "", ""), "needs a name"),
        (("web", "bridge", "10.9.0.1/24", ""), "host bits"),
        (("web", "bridge", "10.9.0.0/33", ""), "not valid"),
        (("web", "bridge", "", "10.9.0.1"), "needs a subnet"),
        (("web", "bridge", "10.9.0.0/24", "10.8.0.1"), "not inside"),
        (("web", "bridge", "10.9.0.0/24", "10.9.0.0"), "network or broadcast"),
        (("web", "bridge", "fd00::/64", "10.9.0.1"), "not inside"),
    ]:
        with pytest.raises(InputError, match=match):
            parse_network(*args, internal=False)


def _key_for(page: NetworksPage, name: str) -> str:
    for n in page.networks.items():
        if n.name == name:
            return n.id
    return ""


def test_create_connect_disconnect_prune(
    qtbot: Any, ctx: Any, api: docker.APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = NetworksPage(ctx)
    qtbot.addWidget(page)
    suffix = uuid.uuid4().hex[:6]
    name = f"berth-objects-net-{suffix}"
    third = random.randint(0, 250)
    subnet = f"10.213.{third}.0/24"

    dialog = page.open_create()
    assert isinstance(dialog, CreateNetworkDialog)
    dialog.name.setText(name)
    dialog.subnet.setText(f"10.213.{third}.1/24")
    assert not dialog.ok.isEnabled() and "host bits" in dialog.error.text()
    dialog.subnet.setText(subnet)
    dialog.gateway.setText(f"10.214.{third}.1")
    assert not dialog.ok.isEnabled() and "not inside" in dialog.error.text()
    dialog.gateway.setText(f"10.213.{third}.1")
    dialog.labels.setPlainText("berth.test=objects")
    assert dialog.ok.isEnabled(), dialog.error.text()
    with qtbot.waitSignal(dialog.created, timeout=60000):
        dialog.ok.click()
    qtbot.waitUntil(lambda: bool(_key_for(page, name)), timeout=60000)
    key = _key_for(page, name)
    row = page.networks.row_of(key)
    assert page.networks.index(row, 3).data() == subnet
    assert page.networks.index(row, 4).data() == f"10.213.{third}.1"

    # A running container on a second network of ours, then connected to the new one.
    home = f"berth-objects-home-{suffix}"
    api.create_network(home, driver="bridge", labels={"berth.test": "objects"})
    cname = f"berth-objects-nc-{suffix}"
    cid = api.create_container(
        "berth-test/busybox:latest", command=["sleep", "300"], name=cname,
        labels={"berth.test": "objects"},
        host_config=api.create_host_config(network_mode=home),
    )["Id"]
    api.start(cid)
    qtbot.waitUntil(lambda: any(c.id == cid for c in page._containers()), timeout=60000)

    assert page.select_key(key)
    inspect = page.inspect_selected()
    assert inspect is not None
    qtbot.waitUntil(lambda: not inspect.busy, timeout=60000)
    assert inspect.fields["Subnet"].text() == subnet
    assert inspect.attached_names() == []
    assert inspect.pick(cid)
    with qtbot.waitSignal(inspect.changed, timeout=60000) as blocker:
        inspect.connect_button.click()
    assert blocker.args[0] is True, blocker.args
    qtbot.waitUntil(lambda: inspect.attached_names() == [cname], timeout=60000)
    ipv4 = inspect.table.item(0, 1).text()
    assert ipv4.startswith(f"10.213.{third}.")
    # The count column follows (the page asks the session to re-list containers).
    qtbot.waitUntil(lambda: page.networks.index(page.networks.row_of(key), 6).data() == "1",
                    timeout=60000)

    assert inspect.select_attached(cname)
    with qtbot.waitSignal(inspect.changed, timeout=60000) as blocker:
        inspect.disconnect_button.click()
    assert blocker.args[0] is True, blocker.args
    qtbot.waitUntil(lambda: inspect.attached_names() == [], timeout=60000)
    inspect.close()
    api.remove_container(cid, force=True)

    # Remove the network via the page, after confirming.
    assert page.select_key(key)
    page.remove_selected()
    click_confirm(qtbot, page)
    wait_for_key(qtbot, page.networks, key, present=False)

    # Prune removes our unused network (and reports what it removed). The engines are
    # shared with other test runs, so the engine call is scoped to our label; the page's
    # confirm -> task -> notify -> model path is the real one.
    qtbot.waitUntil(lambda: bool(_key_for(page, home)), timeout=60000)
    home_key = _key_for(page, home)
    client = ctx.session.client

    def prune_ours() -> PruneResult:
        raw = api.prune_networks(filters={"label": LABEL})
        return PruneResult(tuple(raw.get("NetworksDeleted") or []), 0)

    monkeypatch.setattr(client, "prune_networks", prune_ours)
    notes: list[tuple[str, str]] = []
    ctx.notified.connect(lambda t, x: notes.append((t, x)))
    page.prune_act.trigger()
    click_confirm(qtbot, page)
    qtbot.waitUntil(lambda: bool(notes) or "Prune networks:" in page.status.text(),
                    timeout=90000)
    assert notes and notes[0] == ("Networks pruned", "Pruned networks: 1 removed."), (
        page.status.text())
    wait_for_key(qtbot, page.networks, home_key, present=False)


def test_builtin_networks_are_not_removed(qtbot: Any, ctx: Any) -> None:
    page = NetworksPage(ctx)
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: bool(_key_for(page, "bridge") or _key_for(page, "podman")),
                    timeout=60000)
    key = _key_for(page, "bridge") or _key_for(page, "podman")
    assert page.select_key(key)
    page.remove_selected()
    box = next(b for b in page.findChildren(QMessageBox) if b.isVisible())
    assert "cannot be removed" in box.text()
    box.close()
    assert page.networks.row_of(key) >= 0
