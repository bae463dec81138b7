"""Settings, Engines, Events and Disk pages: real engine where it matters, fakes for edges."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QApplication

from app.context import AppContext
from app.pages.disk import DiskPage, PrunePlan, plan_prune
from app.pages.engines import EnginesPage, validate_engine_url
from app.pages.events import EventsModel, EventsPage
from app.pages.settings import SettingsPage, autostart_file
from app.session import EngineSession
from tests.gui.conftest import endpoint_for
from vm_backend.engine.models import Event
from vm_backend.errors import InputError
from vm_backend.settings import Settings
from vm_backend.units import human_size

IMAGE = "berth-test/busybox:latest"


def _event(i: int, type_: str = "container", action: str = "start", name: str = "") -> Event:
    return Event(
        type_,
        action,
        f"{i:064x}",
        name or f"c{i}",
        1_700_000_000_000_000_000 + i,
        {"name": name or f"c{i}", "image": "busybox"},
    )


# ---- settings -----------------------------------------------------------------------------
def test_settings_persist_and_apply(
    qtbot: Any, berth_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    ctx = AppContext(Settings())
    page = SettingsPage(ctx)
    qtbot.addWidget(page)
    page.theme.setCurrentIndex(page.theme.findData("dark"))
    qtbot.waitUntil(
        lambda: Settings.path().exists() and Settings.load().theme == "dark", timeout=20_000
    )
    palette = QApplication.instance().palette()  # type: ignore[union-attr]
    assert palette.window().color().lightness() < 100
    page.confirm.setChecked(False)
    page.log_lines.setValue(250_000)
    qtbot.waitUntil(lambda: Settings.load().log_buffer_lines == 250_000, timeout=20_000)
    assert Settings.load().confirm_destructive is False
    page.start_at_login.setChecked(True)
    qtbot.waitUntil(lambda: autostart_file().exists(), timeout=20_000)
    assert "Exec=" in autostart_file().read_text()
    page.start_at_login.setChecked(False)
    qtbot.waitUntil(lambda: not autostart_file().exists(), timeout=20_000)
    page.theme.setCurrentIndex(page.theme.findData("light"))
    qtbot.waitUntil(lambda: Settings.load().theme == "light", timeout=20_000)


def test_corrupt_settings_file_falls_back_to_defaults(berth_home: Path) -> None:
    path = Settings.path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert Settings.load() == Settings()
    assert path.with_suffix(".json.corrupt").exists()
    path.write_text(json.dumps({"theme": "purple", "log_buffer_lines": "many", "future": 1}))
    loaded = Settings.load()
    assert loaded.theme == "system" and loaded.log_buffer_lines == 100_000
    loaded.save()
    assert json.loads(path.read_text())["future"] == 1  # unknown keys survive a save


# ---- engines ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["", "docker.sock", "http://x", "ssh://host-without-user", "unix:///a b"]
)
def test_bad_engine_addresses_are_refused(text: str) -> None:
    with pytest.raises(InputError):
        validate_engine_url(text)


def test_engines_page_lists_switches_adds(qtbot: Any, docker_url: str) -> None:
    ctx = AppContext(Settings())
    page = EnginesPage(ctx)
    qtbot.addWidget(page)
    ctx.discover()
    qtbot.waitUntil(lambda: page.model.rowCount() >= 4, timeout=20_000)
    urls = [e.url for e in page.model.endpoints]
    assert docker_url in urls
    row = urls.index(docker_url)
    page.view.selectRow(row)
    assert page.use_button.isEnabled()
    assert "docker" in page.hint.text()
    page.default_button.click()
    qtbot.waitUntil(lambda: Settings.load().default_engine == docker_url, timeout=20_000)
    page.add_engine("ssh://nobody")  # no user@: refused before any connection
    assert "user" in page.status.text()
    page.add_engine("unix:///nonexistent/engine.sock")
    qtbot.waitUntil(lambda: "Added" in page.status.text(), timeout=10_000)
    assert "does not exist" in page.status.text()
    assert Settings.load().extra_endpoints == ["unix:///nonexistent/engine.sock"]
    manual = [e.url for e in page.model.endpoints].index("unix:///nonexistent/engine.sock")
    page.view.selectRow(manual)
    assert page.remove_button.isEnabled() and not page.use_button.isEnabled()
    page.remove_button.click()
    qtbot.waitUntil(lambda: Settings.load().extra_endpoints == [], timeout=20_000)
    ctx.shutdown()


# ---- events -------------------------------------------------------------------------------
def test_events_model(qtmodeltester: Any) -> None:
    model = EventsModel(capacity=50)
    model.append([_event(i) for i in range(30)])
    qtmodeltester.check(model)
    model.append([_event(i) for i in range(30, 80)])
    assert model.rowCount() == 50 and model.dropped == 30
    assert model.events[0].id == f"{30:064x}"
    qtmodeltester.check(model)


def test_events_page_filters_pauses_and_shows_html_literally(qtbot: Any) -> None:
    ctx = AppContext(Settings())
    page = EventsPage(ctx)
    qtbot.addWidget(page)
    page.add_events([_event(1), _event(2, "image", "pull"), _event(3, name="<b>bold</b>")])
    assert page.proxy.rowCount() == 3
    page.type.setCurrentIndex(page.type.findData("image"))
    assert page.proxy.rowCount() == 1
    page.type.setCurrentIndex(0)
    page.search.setText("<b>")
    assert page.proxy.rowCount() == 1
    assert page.proxy.index(0, 3).data() == "<b>bold</b>"
    page.search.clear()
    page.pause.setChecked(True)
    page.add_events([_event(4)])
    assert page.model.rowCount() == 3 and "held" in page.count.text()
    page.pause.setChecked(False)
    assert page.model.rowCount() == 4
    page.clear_button.click()
    assert page.model.rowCount() == 0


def test_events_page_live_from_dockerd(qtbot: Any, docker_url: str, docker_api: Any) -> None:
    session = EngineSession(endpoint_for(docker_url))
    ctx = AppContext(Settings())
    page = EventsPage(ctx)
    qtbot.addWidget(page)
    ctx.use_session(session)
    qtbot.waitUntil(lambda: session.connected, timeout=10_000)
    name = f"berth-ev-{uuid.uuid4().hex[:6]}"
    cid = docker_api.create_container(IMAGE, ["true"], name=name, labels={"berth.test.gui": "1"})[
        "Id"
    ]
    try:
        qtbot.waitUntil(
            lambda: any(e.id == cid and e.action == "create" for e in page.model.events),
            timeout=10_000,
        )
    finally:
        docker_api.remove_container(cid, force=True)
        ctx.shutdown()


# ---- disk ---------------------------------------------------------------------------------
def test_human_sizes() -> None:
    assert human_size(0) == "0 B" and human_size(1500) == "1.5 kB"
    assert human_size(2_000_000_000) == "2.0 GB" and human_size(-1) == ""


def test_disk_page_reads_real_usage_and_previews(
    qtbot: Any, docker_url: str, docker_api: Any
) -> None:
    session = EngineSession(endpoint_for(docker_url))
    ctx = AppContext(Settings())
    name = f"berth-df-{uuid.uuid4().hex[:6]}"
    cid = docker_api.create_container(IMAGE, ["true"], name=name, labels={"berth.test.gui": "1"})[
        "Id"
    ]
    try:
        page = DiskPage(ctx)
        qtbot.addWidget(page)
        ctx.use_session(session)
        qtbot.waitUntil(lambda: "reclaimable" in page.state.text(), timeout=20_000)
        assert page.cells[(1, 1)].text().isdigit()  # images: total count
        page.show_preview()
        qtbot.waitUntil(lambda: page._plan is not None, timeout=20_000)
        assert name in page.preview.toPlainText()  # a created, never-started container
    finally:
        docker_api.remove_container(cid, force=True)
        ctx.shutdown()


def test_prune_plan_matches_engine_lists(docker_url: str, docker_api: Any) -> None:
    from vm_backend.engine.client import EngineClient

    client = EngineClient(docker_url)
    name = f"berth-df-{uuid.uuid4().hex[:6]}"
    cid = docker_api.create_container(IMAGE, ["true"], name=name, labels={"berth.test.gui": "1"})[
        "Id"
    ]
    try:
        plan = plan_prune(client, all_images=False, volumes=False)
        assert any(name in c for c in plan.containers)
        assert plan.volumes == ()
        assert isinstance(plan, PrunePlan) and not plan.empty
    finally:
        docker_api.remove_container(cid, force=True)
        client.close()
