"""The Volumes page and its dialogs against the real Docker and Podman."""

from __future__ import annotations

import tarfile
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from app.dialogs.volume_ops import CreateVolumeDialog, parse_pairs, parse_volume_name
from app.models.volumes import COL_SIZE, COL_USED_BY, VolumeTableModel
from app.pages.volumes import VolumesPage
from tests.gui.objects.conftest import click_confirm, wait_for_key
from vm_backend.engine.models import Volume
from vm_backend.errors import InputError

pytestmark = pytest.mark.engine


def vol(name: str, size: int = -1) -> Volume:
    return Volume(name=name, driver="local", mountpoint=f"/v/{name}", created="", size=size)


def test_volume_model(qtmodeltester: Any) -> None:
    model = VolumeTableModel()
    resets: list[int] = []
    model.modelReset.connect(lambda: resets.append(1))
    model.replace_all([vol("a"), vol("b"), vol("<b>html</b>")])
    qtmodeltester.check(model)
    model.set_sizes({"a": 2048})
    model.set_users({"b": ["web", "db"]})
    assert model.index(model.row_of("a"), COL_SIZE).data() == "2.0 kB"
    assert model.index(model.row_of("b"), COL_USED_BY).data() == "db, web"
    model.remove_keys(["a"])
    model.replace_all([vol("b"), vol("c")])
    assert sorted(model.row_keys()) == ["b", "c"]
    qtmodeltester.check(model)
    assert resets == []
    # Tooltips show engine text literally, however it looks.
    model.upsert([vol("<b>x</b>")])
    tip = model.index(model.row_of("<b>x</b>"), 0).data(3)
    assert "&lt;b&gt;" in tip


def test_create_dialog_validation() -> None:
    assert parse_volume_name("") == ""
    with pytest.raises(InputError):
        parse_volume_name("-bad")
    assert parse_pairs("a=1\n\nb=x=y\n", "Labels") == {"a": "1", "b": "x=y"}
    with pytest.raises(InputError, match="line 2"):
        parse_pairs("a=1\nnope\n", "Labels")


def test_volume_files_roundtrip(
    qtbot: Any, ctx: Any, tmp_path: Path, api: docker.APIClient
) -> None:
    page = VolumesPage(ctx)
    qtbot.addWidget(page)
    name = f"berth-objects-vol-{uuid.uuid4().hex[:6]}"

    # Create, validated as typed.
    dialog = page.open_create()
    assert isinstance(dialog, CreateVolumeDialog)
    dialog.name.setText("-nope")
    assert not dialog.ok.isEnabled() and dialog.error.text()
    dialog.name.setText(name)
    dialog.labels.setPlainText("berth.test=objects\nowner=berth")
    assert dialog.ok.isEnabled()
    with qtbot.waitSignal(dialog.created, timeout=60000):
        dialog.ok.click()
    wait_for_key(qtbot, page.volumes, name)
    assert api.inspect_volume(name)["Labels"]["owner"] == "berth"

    # Browse, upload a file and a folder, walk in, download.
    assert page.select_key(name)
    browser = page.browse_selected()
    assert browser is not None
    qtbot.waitUntil(lambda: not browser.loading, timeout=60000)
    assert browser.entries == []
    src = tmp_path / "notes.txt"
    src.write_text("written through the helper\n")
    with qtbot.waitSignal(browser.transfer_finished, timeout=30000) as blocker:
        browser.upload(src)
    assert blocker.args[0] is True, blocker.args
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "app.ini").write_text("[app]\n")
    with qtbot.waitSignal(browser.transfer_finished, timeout=30000) as blocker:
        browser.upload(folder)
    assert blocker.args[0] is True, blocker.args
    qtbot.waitUntil(lambda: not browser.loading and len(browser.entries) == 2, timeout=60000)
    assert [e.name for e in browser.entries] == ["conf", "notes.txt"]
    with qtbot.waitSignal(browser.listed, timeout=60000, check_params_cb=lambda p: p == "conf"):
        browser.navigate("conf")
    assert [e.path for e in browser.entries] == ["conf/app.ini"]
    assert browser.select_name("app.ini")
    out = tmp_path / "downloaded.ini"
    with qtbot.waitSignal(browser.transfer_finished, timeout=30000) as blocker:
        browser.download(browser.entries[0], out)
    assert blocker.args[0] is True, blocker.args
    assert out.read_text() == "[app]\n"
    with qtbot.waitSignal(browser.listed, timeout=60000):
        browser.go_up()
    assert browser.path == ""
    browser.close()

    # Export to a tar, import it into a second volume, check the files arrived.
    archive = tmp_path / "vol.tar"
    task = page.export_to(name, archive)
    assert task is not None
    with qtbot.waitSignal(task.finished, timeout=60000) as blocker:
        pass
    assert blocker.args == [True, ""]
    with tarfile.open(archive) as tar:
        assert {"notes.txt", "conf/app.ini"} <= set(tar.getnames())
    copy = f"{name}-copy"
    api.create_volume(copy, labels={"berth.test": "objects"})
    wait_for_key(qtbot, page.volumes, copy)
    page.import_into(copy, archive)
    click_confirm(qtbot, page)
    qtbot.waitUntil(lambda: bool(page.tasks), timeout=5000)
    task = page.tasks[-1]
    with qtbot.waitSignal(task.finished, timeout=60000) as blocker:
        pass
    assert blocker.args == [True, ""]
    assert page.select_key(copy)
    browser = page.browse_selected()
    assert browser is not None
    qtbot.waitUntil(lambda: not browser.loading and len(browser.entries) == 2, timeout=60000)
    browser.close()

    # Used by: a container mounting the volume shows up in the column.
    cid = api.create_container(
        "berth-test/busybox:latest", command=["true"], labels={"berth.test": "objects"},
        name=f"berth-objects-vuser-{uuid.uuid4().hex[:6]}",
        host_config=api.create_host_config(binds={name: {"bind": "/data", "mode": "rw"}}),
    )["Id"]
    qtbot.waitUntil(lambda: bool(page.volumes.users_of(name)), timeout=60000)
    assert page.volumes.users_of(name)[0].startswith("berth-objects-vuser-")
    api.remove_container(cid, force=True)
    qtbot.waitUntil(lambda: not page.volumes.users_of(name), timeout=60000)

    # Sizes on request.
    page.refresh_sizes()
    qtbot.waitUntil(lambda: page.volumes.size_of(name) > 0, timeout=30000)

    # Remove both, after confirming.
    page.view.clearSelection()
    assert page.select_key(name)
    page.remove_selected()
    click_confirm(qtbot, page)
    wait_for_key(qtbot, page.volumes, name, present=False)
    assert page.select_key(copy)
    page.remove_selected()
    click_confirm(qtbot, page)
    wait_for_key(qtbot, page.volumes, copy, present=False)


def test_export_cancelled_leaves_no_file_and_no_helper(
    qtbot: Any, ctx: Any, tmp_path: Path, api: docker.APIClient
) -> None:
    page = VolumesPage(ctx)
    qtbot.addWidget(page)
    name = f"berth-objects-vol-{uuid.uuid4().hex[:6]}"
    api.create_volume(name, labels={"berth.test": "objects"})
    wait_for_key(qtbot, page.volumes, name)
    dest = tmp_path / "never.tar"
    task = page.export_to(name, dest)
    assert task is not None
    task.cancel()  # before the worker reads the first chunk
    with qtbot.waitSignal(task.finished, timeout=60000) as blocker:
        pass
    assert blocker.args[0] is False
    assert not dest.exists() and list(tmp_path.glob(".*partial")) == []
    assert api.containers(all=True, filters={"label": "berth.helper=1", "volume": name}) == []
    assert "cancelled" in page.status.text()


def test_no_session_disables_actions(qtbot: Any) -> None:
    from app.context import AppContext
    from vm_backend.settings import Settings

    context = AppContext(settings=Settings())
    page = VolumesPage(context)
    qtbot.addWidget(page)
    assert not page.remove_act.isEnabled()
    assert not page.prune_act.isEnabled()
    assert "No container engine" in page.banner.text()
