"""ContainerDetails as a whole: streams stop on container change and hide; plain text."""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from app.pages.details import ContainerDetails
from tests.gui.details.conftest import session_for
from vm_backend.engine.client import EngineClient

pytestmark = pytest.mark.engine


def test_changing_container_stops_the_old_streams(
    qtbot: Any, details: ContainerDetails, docker_client: EngineClient,
    new_docker_container: Any,
) -> None:
    first = new_docker_container(["sh", "-c", "echo from-first; sleep 600"], name="berth-details-a")
    second = new_docker_container(["sh", "-c", "echo from-second; sleep 600"])
    session = session_for(docker_client)

    details.show_container(session, first)
    qtbot.waitUntil(lambda: "berth-details-a" in details.header.text(), timeout=10_000)
    terminal = details.show_tab("Terminal")
    qtbot.waitUntil(lambda: terminal.connected, timeout=15_000)
    old_pump = terminal.pump
    old_reader = details.logs.reader
    assert old_reader is not None and old_pump is not None

    with qtbot.waitSignal(details.container_changed) as changed:
        details.show_container(session, second)
    assert changed.args == [second]
    assert old_reader.stopped
    assert old_pump.closed
    qtbot.waitUntil(old_reader.finished.is_set, timeout=5_000)

    # The terminal tab is on screen, so it opens a shell in the new container.
    qtbot.waitUntil(lambda: terminal.connected and terminal.pump is not old_pump, timeout=15_000)
    details.show_tab("Logs")
    lines = lambda: [line.text for line in details.logs.panel.model.all_lines()]  # noqa: E731
    qtbot.waitUntil(lambda: lines() == ["from-second"], timeout=15_000)

    # The same container again restarts nothing.
    reader = details.logs.reader
    details.show_container(session, second)
    assert details.logs.reader is reader


def test_hiding_stops_everything_and_showing_resumes(
    qtbot: Any, details: ContainerDetails, docker_client: EngineClient,
    new_docker_container: Any,
) -> None:
    cid = new_docker_container(["sh", "-c", "echo hello; sleep 600"])
    details.show_container(session_for(docker_client), cid)
    stats = details.show_tab("Stats")
    qtbot.waitUntil(lambda: stats.sample_count >= 1, timeout=20_000)
    terminal = details.show_tab("Terminal")
    qtbot.waitUntil(lambda: terminal.connected, timeout=15_000)
    assert details.logs.running  # logs keep following across tab switches

    details.hide()
    assert not details.logs.running
    assert not terminal.connected
    assert not stats.running
    assert terminal.status.text() == "Disconnected"

    details.show()
    details.show_tab("Logs")
    assert details.logs.running
    qtbot.waitUntil(
        lambda: [line.text for line in details.logs.panel.model.all_lines()] == ["hello"],
        timeout=15_000,
    )

    details.clear()
    assert details.container_id == ""
    assert not details.logs.running
    assert details.header.text() == "No container selected"


def test_labels_are_plain_text(
    qtbot: Any, details: ContainerDetails, docker_client: EngineClient,
    new_docker_container: Any,
) -> None:
    cid = new_docker_container(["sh", "-c", "echo '<b>bold?</b><img src=x>'; sleep 600"])
    details.show_container(session_for(docker_client), cid)
    qtbot.waitUntil(lambda: details.logs.panel.model.line_count() == 1, timeout=15_000)
    line = next(iter(details.logs.panel.model.all_lines()))
    assert line.text == "<b>bold?</b><img src=x>"
    for tab in details.all_tabs():
        details.show_tab(tab.title)
    # The terminal widget's find bar is another module's (it shows only its own counts).
    labels = [
        label for label in details.findChildren(QLabel)
        if not details.terminal.terminal.isAncestorOf(label)
    ]
    assert len(labels) > 10
    rich = [label.text() for label in labels if label.textFormat() != Qt.TextFormat.PlainText]
    assert rich == []
    assert details.header.textFormat() == Qt.TextFormat.PlainText


def test_follows_the_container_through_a_restart(
    qtbot: Any, details: ContainerDetails, docker_url: str, docker_client: EngineClient,
    new_docker_container: Any,
) -> None:
    """With a real EngineSession: the header tracks the state, the log resumes."""
    from app.session import EngineSession
    from tests.gui.conftest import endpoint_for

    cid = new_docker_container(
        ["sh", "-c", "echo run-$$; rm -f /tmp/stop; while [ ! -f /tmp/stop ]; do sleep 0.1; done"],
        name="berth-details-restart",
    )
    # Events can be late or lost on a loaded host (the monitor then catches up at its
    # next re-list); a short reconcile keeps this test about the details, not the monitor.
    session = EngineSession(endpoint_for(docker_url), reconcile_interval=2.0)
    session.start()
    try:
        details.show_container(session, cid)
        texts = lambda: [line.text for line in details.logs.panel.model.all_lines()]  # noqa: E731
        qtbot.waitUntil(lambda: len(texts()) == 1, timeout=15_000)

        docker_client.exec_run(cid, ["touch", "/tmp/stop"])
        qtbot.waitUntil(lambda: details.header.text().endswith("exited"), timeout=45_000)
        qtbot.waitUntil(lambda: not details.logs.running, timeout=10_000)
        assert "Log ended" in details.logs.status.text()

        docker_client.start(cid)
        qtbot.waitUntil(lambda: details.header.text().endswith("running"), timeout=45_000)
        qtbot.waitUntil(lambda: len(texts()) == 2, timeout=15_000)
        assert details.logs.running
    finally:
        details.clear()
        session.stop()


def test_deleting_a_shown_widget_stops_its_threads(
    qtbot: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    """A page may deleteLater() the details without hiding them first."""
    from PySide6.QtWidgets import QVBoxLayout, QWidget

    cid = new_docker_container(["sh", "-c", "echo x; sleep 600"])
    host = QWidget()
    qtbot.addWidget(host)
    layout = QVBoxLayout(host)
    details = ContainerDetails()
    layout.addWidget(details)
    host.show()
    details.show_container(session_for(docker_client), cid)
    terminal = details.show_tab("Terminal")
    qtbot.waitUntil(lambda: terminal.connected, timeout=15_000)
    reader, pump = details.logs.reader, terminal.pump
    assert reader is not None and pump is not None

    layout.removeWidget(details)
    gone: list[bool] = []
    details.destroyed.connect(lambda *_a: gone.append(True))
    details.deleteLater()
    qtbot.waitUntil(lambda: bool(gone), timeout=5_000)
    assert reader.stopped
    assert pump.closed
    qtbot.waitUntil(reader.finished.is_set, timeout=5_000)
