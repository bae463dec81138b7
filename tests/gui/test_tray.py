"""The tray: failure notifications, engine state, and the VM item."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from app.context import AppContext
from app.tray import BerthTray, failure_message
from tests.gui.conftest import FakeSession
from vm_backend.daemon.server import socket_path
from vm_backend.engine.models import Event
from vm_backend.machine.paths import MachinePaths
from vm_backend.settings import Settings


def _die(code: str, name: str = "web") -> Event:
    return Event("container", "die", "a" * 64, name, 1, {"exitCode": code, "name": name})


def test_failure_messages() -> None:
    assert failure_message(_die("0")) is None
    assert failure_message(_die("137")) == "Container web exited with code 137."
    assert failure_message(Event("container", "oom", "b" * 64, "x", 1, {})) is not None
    assert failure_message(Event("image", "pull", "c", "", 1, {})) is None


def test_tray_notifies_failures_and_engine_loss(qtbot: Any) -> None:
    ctx = AppContext(Settings())
    tray = BerthTray(ctx)
    session = FakeSession()
    ctx.session = session  # type: ignore[assignment]
    ctx.session_changed.emit(session)
    session.connection_changed.emit(True, "")
    assert "running" in tray.state_action.text()
    session.events.emit([_die("0"), _die("2", "<b>api</b>")])
    assert tray.notifications == [("Container failed", "Container <b>api</b> exited with code 2.")]
    session.connection_changed.emit(False, "connection refused")
    assert "unreachable" in tray.state_action.text()
    assert tray.notifications[-1] == (
        "Engine unreachable",
        f"{session.endpoint.name}: connection refused",
    )
    ctx.settings.notify_failures = False
    session.events.emit([_die("1")])
    assert len(tray.notifications) == 2


def test_vm_item_hidden_without_a_machine(qtbot: Any) -> None:
    tray = BerthTray(AppContext(Settings()))
    qtbot.waitUntil(lambda: not tray.vm_start_action.isVisible(), timeout=10_000)
    assert not tray.vm_stop_action.isVisible() and not tray.vm_state_action.isVisible()
    tray._vm_status({"state": "running"})
    assert tray.vm_start_action.isVisible() and tray.vm_stop_action.isVisible()
    assert tray.vm_state_action.text() == "VM: Running"
    assert tray.vm_stop_action.isEnabled() and not tray.vm_start_action.isEnabled()
    tray._vm_status({"state": "stopped"})
    assert tray.vm_state_action.text() == "VM: Stopped"
    assert tray.vm_start_action.isEnabled() and not tray.vm_stop_action.isEnabled()


@pytest.mark.parametrize(
    ("state", "start", "stop"),
    [("stopped", True, False), ("crashed", True, False), ("starting", False, True),
     ("running", False, True), ("paused", False, True), ("stopping", False, False),
     ("unknown", False, False)],
)
def test_vm_actions_enabled_only_when_they_make_sense(
    qtbot: Any, state: str, start: bool, stop: bool
) -> None:
    tray = BerthTray(AppContext(Settings()))
    tray._vm_status({"state": state})
    assert (tray.vm_start_action.isEnabled(), tray.vm_stop_action.isEnabled()) == (start, stop)


def test_vm_state_without_berthd_reads_the_files_and_starts_nothing(
    qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    monkeypatch.setenv("BERTH_HOME", str(home))
    try:
        spec_file = MachinePaths.for_machine("default", home).spec_file
        spec_file.parent.mkdir(parents=True)
        spec_file.write_text("{}")
        tray = BerthTray(AppContext(Settings()))
        qtbot.waitUntil(lambda: tray.vm_state == "stopped", timeout=10_000)
        assert tray.vm_start_action.isVisible() and tray.vm_start_action.isEnabled()
        assert not tray.vm_stop_action.isEnabled()
        tray.menu.aboutToShow.emit()  # opening the menu reads again, still no daemon
        qtbot.wait(200)
        assert not socket_path(home).exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_closing_the_window_keeps_berth_in_the_tray(qtbot: Any) -> None:
    from app.window import MainWindow

    ctx = AppContext(Settings(close_to_tray=True))
    window = MainWindow(ctx)
    qtbot.addWidget(window)
    window.show()
    window.tray = BerthTray(ctx)
    assert window.close() is False  # the close was turned into a hide
    assert not window.isVisible()
    window.show()
    window.quitting = True
    assert window.close()
