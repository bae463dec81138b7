"""The Images page, its model and its dialogs, against the real Docker and Podman."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest
from PySide6.QtWidgets import QMessageBox

from app.dialogs.build import BuildDialog
from app.dialogs.image_ops import CheckedDialog, TagDialog
from app.dialogs.pull import PullDialog, PullTracker
from app.models.images import ImageRow, ImageTableModel, split_reference
from app.models.keyed import ObjectFilterProxy
from app.pages.images import ImagesPage
from tests.gui.objects.conftest import click_confirm
from vm_backend.engine.client import _progress
from vm_backend.engine.models import (
    Container,
    ContainerState,
    Health,
    Image,
    PruneResult,
    PullProgress,
)

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.engine


def recorded(name: str) -> list[PullProgress]:
    lines = (DATA / name).read_text().splitlines()
    return [_progress(json.loads(line)) for line in lines if line.strip()]


def image(ident: str, *tags: str, size: int = 1000, created: float = 1.7e9) -> Image:
    return Image(id=f"sha256:{ident}", tags=tags, digests=(), size=size, created=created)


def container(name: str, image_id: str) -> Container:
    return Container(id=name * 4, name=name, image="x", image_id=image_id, command="",
                     state=ContainerState.RUNNING, status="Up", health=Health.NONE, created=0)


# ---- model ------------------------------------------------------------------------------
def test_image_model_rows_follow_tags_without_reset(qtmodeltester: Any, qtbot: Any) -> None:
    model = ImageTableModel()
    resets: list[int] = []
    model.modelReset.connect(lambda: resets.append(1))
    model.set_images([image("a" * 64, "web:1", "web:latest"), image("b" * 64)])
    qtmodeltester.check(model)
    assert model.rowCount() == 3
    # A tag goes away and another arrives: rows are removed/inserted, never reset.
    model.update_images([image("a" * 64, "web:2", "web:latest")])
    refs = sorted(r.reference for r in model.items())
    assert refs == ["", "web:2", "web:latest"]
    model.set_containers([container("app", "sha256:" + "a" * 64)])
    row = model.row_of(f"sha256:{'a' * 64}|web:latest")
    assert model.index(row, 5).data() == "1 container"
    model.remove_images([f"sha256:{'b' * 64}"])
    assert model.rowCount() == 2
    qtmodeltester.check(model)
    assert resets == []
    # data() never raises, whatever index it gets.
    assert model.data(model.index(99, 0)) is None
    assert model.data(model.index(0, 99)) is None


def test_proxy_sorts_sizes_numerically_and_filters_dangling(qtmodeltester: Any) -> None:
    model = ImageTableModel()
    model.set_images([image("a" * 64, "big:1", size=10_000_000), image("b" * 64, size=900),
                      image("c" * 64, "small:1", size=50_000)])
    proxy = ObjectFilterProxy()
    proxy.setSourceModel(model)
    qtmodeltester.check(proxy)
    proxy.sort(3)
    assert [proxy.index(r, 3).data() for r in range(3)] == ["900 B", "50.0 kB", "10.0 MB"]
    proxy.set_predicate(lambda r: r.image.dangling)
    assert proxy.rowCount() == 1
    proxy.set_predicate(None)
    proxy.setFilterFixedString("SMALL")
    assert proxy.rowCount() == 1


def test_the_base_form_has_nothing_to_check_and_ok_accepts(qtbot: Any) -> None:
    from PySide6.QtWidgets import QDialog, QVBoxLayout

    dialog = CheckedDialog()
    qtbot.addWidget(dialog)
    dialog.add_buttons(QVBoxLayout(dialog), "Go")
    assert dialog.validate() and dialog.ok.isEnabled() and dialog.error.text() == ""
    dialog.ok.click()
    assert dialog.result() == QDialog.DialogCode.Accepted


def test_split_reference_keeps_registry_ports() -> None:
    assert split_reference("localhost:5000/app") == ("localhost:5000/app", "")
    assert split_reference("localhost:5000/app:v1") == ("localhost:5000/app", "v1")
    assert ImageRow(image("d" * 64), "").repository == "<none>"


# ---- pull progress from recordings --------------------------------------------------------
def test_recorded_pull_shows_each_layer_and_overall(qtbot: Any) -> None:
    dialog = PullDialog(None, "nginx:1.27")
    qtbot.addWidget(dialog)
    lines = recorded("pull_nginx_docker.jsonl")
    dialog.apply(lines[:7])  # part way: one layer downloading, one waiting, one present
    assert dialog.layer_fraction("a2318d6c47ec") == 1.0
    assert 0.1 < dialog.layer_fraction("095d327c79ae") < 0.2
    assert "7.4 MB / 29.1 MB" in dialog.layer_text("095d327c79ae")
    assert dialog.layer_text("bbfaa25db775") == "Waiting"
    assert 0 < dialog.overall.value() < 500
    dialog.apply(lines[7:])
    assert all(dialog.layer_fraction(k) == 1.0 for k in dialog.tracker.layers)
    assert dialog.overall.value() == 1000
    assert dialog.status.text() == "Status: Downloaded newer image for nginx:1.27"
    # The tag line is a message, not a layer.
    assert "1.27" not in dialog.tracker.layers


def test_recorded_pull_error_is_shown(qtbot: Any) -> None:
    dialog = PullDialog(None, "acme/private")
    qtbot.addWidget(dialog)
    dialog.apply(recorded("pull_denied.jsonl"))
    assert dialog.status.text().startswith("Pull failed: pull access denied for acme/private")
    assert dialog.tracker.layers == {}


def test_pull_tracker_stops_midway() -> None:
    tracker = PullTracker()
    for line in recorded("pull_cancelled_midway.jsonl"):
        tracker.feed(line)
    assert not tracker.finished
    assert tracker.overall() == pytest.approx((0.5 * 3145728 / 29150000) / 2)


def test_pull_reference_is_validated_as_typed(qtbot: Any) -> None:
    dialog = PullDialog(None, "")
    qtbot.addWidget(dialog)
    assert not dialog.pull_button.isEnabled()
    dialog.edit.setText("Not Valid")
    assert "not a valid image reference" in dialog.input_error.text() or dialog.input_error.text()
    assert not dialog.pull_button.isEnabled()


def test_real_pull_fails_cleanly_with_the_engine_message(qtbot: Any, ctx: Any) -> None:
    dialog = PullDialog(ctx.session.client, "registry.invalid/berth/nothing:1")
    qtbot.addWidget(dialog)
    dialog.start_pull()
    assert dialog.running
    qtbot.waitUntil(lambda: not dialog.running, timeout=60000)
    text = dialog.status.text()
    assert text.startswith("Pull failed:"), text
    assert "registry.invalid" in text
    assert dialog.pull_button.isEnabled()


# ---- the page, end to end ----------------------------------------------------------------
def _row_for(page: ImagesPage, reference: str) -> ImageRow | None:
    for r in page.images.items():
        if r.reference.endswith(reference):
            return r
    return None


def test_build_tag_export_load_import_remove(
    qtbot: Any, ctx: Any, tmp_path: Path, api: docker.APIClient
) -> None:
    page = ImagesPage(ctx)
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: _row_for(page, "berth-test/busybox:latest") is not None, timeout=60000)

    # Build from a temp folder; the output streams into the log; the result is tagged.
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "hello.txt").write_text("hi\n")
    # No RUN step: this CI's dockerd has no working default bridge for build containers.
    (context / "Dockerfile").write_text(
        "FROM berth-test/busybox:latest\nLABEL berth.test=objects\n"
        "COPY hello.txt /hello-from-berth.txt\n"
    )
    build = page.open_build()
    build.folder.setText(str(context))
    build.tag_edit.setText("Bad Tag")
    assert not build.build_button.isEnabled()
    build.tag_edit.setText("berth-objects-test/app:1")
    assert build.build_button.isEnabled()
    with qtbot.waitSignal(build.finished, timeout=120000) as blocker:
        build.build_button.click()
    assert blocker.args[0] is True, blocker.args
    assert "hello-from-berth.txt" in build.log.toPlainText()
    qtbot.waitUntil(lambda: _row_for(page, "berth-objects-test/app:1") is not None, timeout=60000)

    # Tag, validated as typed.
    assert page.select_reference(_row_for(page, "berth-objects-test/app:1").reference)
    tag = page.tag_selected()
    assert isinstance(tag, TagDialog)
    tag.edit.setText("Upper:1")
    assert not tag.ok.isEnabled() and tag.error.text()
    tag.edit.setText("berth-objects-test/app:2")
    with qtbot.waitSignal(tag.tagged, timeout=60000):
        tag.ok.click()
    qtbot.waitUntil(lambda: _row_for(page, "berth-objects-test/app:2") is not None, timeout=60000)

    # History lists layers with sizes.
    history = page.history_selected()
    assert history is not None
    qtbot.waitUntil(lambda: history.table.rowCount() > 0, timeout=60000)
    assert "layers" in history.status.text()
    history.close()

    # Export to a tar (atomic: only the final file remains), remove, load back.
    row = _row_for(page, "berth-objects-test/app:1")
    assert row is not None
    dest = tmp_path / "app.tar"
    task = page.export_to(row, dest)
    assert task is not None
    with qtbot.waitSignal(task.finished, timeout=60000) as blocker:
        pass
    assert blocker.args == [True, ""]
    assert dest.is_file() and tarfile.is_tarfile(dest)
    assert list(tmp_path.glob(".*.partial")) == []

    for ref in ("berth-objects-test/app:1", "berth-objects-test/app:2"):
        assert page.select_reference(_row_for(page, ref).reference)
        page.remove_selected()
        click_confirm(qtbot, page)
        qtbot.waitUntil(lambda r=ref: _row_for(page, r) is None, timeout=60000)

    task = page.load_from(dest)
    assert task is not None
    with qtbot.waitSignal(task.finished, timeout=60000) as blocker:
        pass
    assert blocker.args[0] is True, blocker.args
    qtbot.waitUntil(lambda: _row_for(page, "berth-objects-test/app:1") is not None, timeout=60000)

    # Import a root filesystem tarball as a new image.
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        data = b"imported\n"
        info = tarfile.TarInfo("etc/berth-imported")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    task = page.import_from(rootfs, "berth-objects-test/rootfs:1")
    assert task is not None
    with qtbot.waitSignal(task.finished, timeout=60000) as blocker:
        pass
    assert blocker.args[0] is True, blocker.args
    qtbot.waitUntil(lambda: _row_for(page, "berth-objects-test/rootfs:1") is not None,
                    timeout=60000)
    assert page.select_reference(_row_for(page, "berth-objects-test/rootfs:1").reference)
    page.remove_selected()
    click_confirm(qtbot, page)
    qtbot.waitUntil(lambda: _row_for(page, "berth-objects-test/rootfs:1") is None, timeout=60000)


def test_remove_in_use_names_the_containers(
    qtbot: Any, ctx: Any, tmp_path: Path, api: docker.APIClient
) -> None:
    page = ImagesPage(ctx)
    qtbot.addWidget(page)
    busybox = "berth-test/busybox:latest"
    qtbot.waitUntil(lambda: _row_for(page, busybox) is not None, timeout=60000)
    api.tag(busybox, "berth-objects-test/inuse", "1")
    cid = api.create_container("berth-objects-test/inuse:1", command=["true"],
                               name=f"berth-objects-user-{tmp_path.name[-6:]}",
                               labels={"berth.test": "objects"})["Id"]
    user = f"berth-objects-user-{tmp_path.name[-6:]}"
    qtbot.waitUntil(lambda: user in page.images.users_of(_row_for(page, busybox).image.id)
                    and _row_for(page, "berth-objects-test/inuse:1") is not None, timeout=60000)
    assert page.select_reference(_row_for(page, "berth-objects-test/inuse:1").reference)
    page.remove_selected()
    box = next(b for b in page.findChildren(QMessageBox) if b.isVisible())
    # Other runs' containers may use busybox too; ours is named unless the list is long.
    assert user in box.text() or " more." in box.text()
    assert box.textFormat().name == "PlainText"
    click_confirm(qtbot, page)
    qtbot.waitUntil(lambda: _row_for(page, "berth-objects-test/inuse:1") is None, timeout=60000)
    api.remove_container(cid, force=True)
    assert _row_for(page, busybox) is not None


def test_run_requests_the_run_dialog_with_the_image(qtbot: Any, ctx: Any) -> None:
    page = ImagesPage(ctx)
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: _row_for(page, "berth-test/busybox:latest") is not None, timeout=60000)
    assert page.select_reference(_row_for(page, "berth-test/busybox:latest").reference)
    with qtbot.waitSignal(ctx.run_requested) as blocker:
        page.run_act.trigger()
    assert blocker.args[0].endswith("berth-test/busybox:latest")


def test_prune_dangling_reports_space(
    qtbot: Any, ctx: Any, tmp_path: Path, api: docker.APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = ImagesPage(ctx)
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: page.images.rowCount() > 0, timeout=60000)
    # Two builds under one tag leave the first image dangling.
    for n in (1, 2):
        context = tmp_path / f"c{n}"
        context.mkdir()
        (context / "Dockerfile").write_text(
            "FROM berth-test/busybox:latest\nLABEL berth.test=objects\nCOPY n /n\n")
        (context / "n").write_text(str(n))
        build = BuildDialog(ctx.session.client)
        qtbot.addWidget(build)
        build.folder.setText(str(context))
        build.tag_edit.setText("berth-objects-test/prune:1")
        with qtbot.waitSignal(build.finished, timeout=120000) as blocker:
            build.start_build()
        assert blocker.args[0] is True, blocker.args
    page.dangling.setChecked(True)
    qtbot.waitUntil(lambda: page.proxy.rowCount() >= 1, timeout=60000)
    # The engines are shared with other runs: scope the engine's prune to our label.
    calls: list[bool] = []

    def prune_ours(dangling_only: bool = True) -> PruneResult:
        calls.append(dangling_only)
        raw = api.prune_images(filters={"dangling": "true", "label": "berth.test=objects"})
        deleted = tuple(str(d.get("Deleted") or d.get("Untagged") or "")
                        for d in raw.get("ImagesDeleted") or [])
        return PruneResult(deleted, int(raw.get("SpaceReclaimed") or 0))

    monkeypatch.setattr(ctx.session.client, "prune_images", prune_ours)
    notes: list[tuple[str, str]] = []
    ctx.notified.connect(lambda t, x: notes.append((t, x)))
    page.prune_dangling_act.trigger()
    click_confirm(qtbot, page)
    qtbot.waitUntil(lambda: bool(notes), timeout=60000)
    assert calls == [True]
    assert notes[0][0] == "Images pruned"
    assert notes[0][1].startswith("Pruned images: "), notes
    assert "reclaimed" in notes[0][1]
    qtbot.waitUntil(lambda: page.proxy.rowCount() == 0, timeout=60000)


# ---- cancellation, settings, session switches ----------------------------------------------
class _BlockingStream:
    """A pull stream that yields recorded lines, then blocks until closed (a slow registry)."""

    def __init__(self, lines: list[PullProgress]) -> None:
        import threading

        self.lines = lines
        self.closed = threading.Event()

    def __iter__(self) -> Any:
        yield from self.lines
        self.closed.wait(30)

    def close(self) -> None:
        self.closed.set()


class _SlowPullClient:
    def __init__(self, stream: _BlockingStream) -> None:
        self.stream = stream
        self.pulled: list[str] = []

    def pull(self, reference: str) -> _BlockingStream:
        self.pulled.append(reference)
        return self.stream


def test_pull_cancel_closes_the_stream(qtbot: Any) -> None:
    stream = _BlockingStream(recorded("pull_cancelled_midway.jsonl"))
    client = _SlowPullClient(stream)
    dialog = PullDialog(client, "postgres:16")  # type: ignore[arg-type]
    qtbot.addWidget(dialog)
    pulled: list[str] = []
    dialog.pulled.connect(pulled.append)
    dialog.start_pull()
    qtbot.waitUntil(lambda: "2d429b9e73a6" in dialog.tracker.layers, timeout=5000)
    assert 0 < dialog.layer_fraction("2d429b9e73a6") < 0.1
    dialog.cancel_button.click()
    assert stream.closed.is_set()
    assert dialog.status.text() == "Pull cancelled."
    qtbot.waitUntil(lambda: dialog.pull_button.isEnabled(), timeout=5000)
    assert pulled == []
    assert client.pulled == ["postgres:16"]


def test_export_cancelled_leaves_no_file(qtbot: Any, ctx: Any, tmp_path: Path) -> None:
    page = ImagesPage(ctx)
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: _row_for(page, "berth-test/busybox:latest") is not None, timeout=60000)
    row = _row_for(page, "berth-test/busybox:latest")
    assert row is not None
    dest = tmp_path / "cancelled.tar"
    task = page.export_to(row, dest)
    assert task is not None
    task.cancel()
    with qtbot.waitSignal(task.finished, timeout=60000) as blocker:
        pass
    assert blocker.args[0] is False
    assert not dest.exists() and list(tmp_path.glob("*.tar*")) + list(tmp_path.glob(".*")) == []
    assert "cancelled" in page.status.text()


def test_no_confirmation_when_the_user_turned_it_off(
    qtbot: Any, ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx.settings.confirm_destructive = False
    page = ImagesPage(ctx)
    qtbot.addWidget(page)
    calls: list[bool] = []
    monkeypatch.setattr(ctx.session.client, "prune_images",
                        lambda dangling_only=True: calls.append(dangling_only)
                        or PruneResult((), 0))
    page.prune_dangling_act.trigger()
    assert [b for b in page.findChildren(QMessageBox) if b.isVisible()] == []
    qtbot.waitUntil(lambda: calls == [True], timeout=10000)


def test_session_switch_empties_and_refills_without_reset(qtbot: Any, ctx: Any) -> None:
    page = ImagesPage(ctx)
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: page.images.rowCount() > 0, timeout=60000)
    resets: list[int] = []
    page.images.modelReset.connect(lambda: resets.append(1))
    session = ctx.session
    page.set_session(None)
    assert page.images.rowCount() == 0
    assert not page.remove_act.isEnabled() and not page.banner.isHidden()
    page.set_session(session)
    assert page.images.rowCount() > 0
    assert resets == []


def test_pages_register_under_their_keys() -> None:
    from app.pages import registry

    registry.load_page_modules()
    for key, cls in (("images", "ImagesPage"), ("volumes", "VolumesPage"),
                     ("networks", "NetworksPage")):
        spec = registry.page(key)
        assert spec is not None and not spec.placeholder
        assert getattr(spec.factory, "__name__", "") == cls


def test_build_cancel_stops_and_says_so(qtbot: Any, ctx: Any, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM berth-test/busybox:latest\nLABEL berth.test=objects\nCOPY . /ctx\n")
    (context / "blob").write_bytes(b"\0" * (32 << 20))
    build = BuildDialog(ctx.session.client)
    qtbot.addWidget(build)
    build.folder.setText(str(context))
    build.tag_edit.setText("berth-objects-test/cancelled:1")
    built: list[str] = []
    build.built.connect(lambda _i, tag: built.append(tag))
    with qtbot.waitSignal(build.finished, timeout=120000) as blocker:
        build.start_build()
        build.cancel_button.click()
    assert blocker.args == [False, "Build cancelled."]
    assert built == []
    assert build.build_button.isEnabled()
