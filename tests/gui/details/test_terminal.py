"""Terminal tab against the real engines: a shell that echoes, vi that renders, exit codes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.gui.details.conftest import STALL_MS, session_for
from vm_backend.engine.client import EngineClient

pytestmark = pytest.mark.engine


def screen_lines(details: Any) -> list[str]:
    return details.terminal.terminal.text(include_scrollback=False).splitlines()


def open_terminal(qtbot: Any, details: Any, client: EngineClient, cid: str) -> Any:
    details.show_container(session_for(client), cid)
    tab = details.show_tab("Terminal")
    qtbot.waitUntil(lambda: tab.connected, timeout=15_000)
    # The shell prints its prompt once it is ready for input.
    qtbot.waitUntil(lambda: any("#" in line for line in screen_lines(details)), timeout=15_000)
    return tab


def test_echo_hi(qtbot: Any, details: Any, engine_client: EngineClient, new_container: Any) -> None:
    cid = new_container(["sleep", "600"])
    tab = open_terminal(qtbot, details, engine_client, cid)
    tab.terminal.send_text("echo hi\r")
    qtbot.waitUntil(lambda: "hi" in screen_lines(details), timeout=10_000)
    assert tab.status.text().startswith("Connected: /bin/sh")

    pump = tab.pump
    tab.disconnect_button.click()
    assert not tab.connected and pump is not None and pump.closed
    assert tab.status.text() == "Disconnected"
    assert not tab.disconnect_button.isEnabled()


def test_vi_renders_and_exit_code_offers_reconnect(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["sleep", "600"])
    tab = open_terminal(qtbot, details, docker_client, cid)

    tab.terminal.send_text("vi /tmp/x\r")
    # vi fills the rows below the (empty) buffer with "~".
    qtbot.waitUntil(
        lambda: sum(line.startswith("~") for line in screen_lines(details)) >= 5, timeout=10_000
    )
    # Busybox vi starts in command mode; it may leave its last frame on the screen
    # (no alternate screen), so look for the shell answering again instead.
    tab.terminal.send_text(":q!\r")
    tab.terminal.send_text("echo back-from-vi\r")
    qtbot.waitUntil(lambda: "back-from-vi" in screen_lines(details), timeout=10_000)

    tab.terminal.send_text("exit 3\r")
    qtbot.waitUntil(lambda: not tab.connected, timeout=10_000)
    assert tab.status.text() == "[process exited with code 3]"
    assert tab.connect_button.text() == "Reconnect"
    assert tab.connect_button.isEnabled()
    assert "[process exited with code 3]" in tab.terminal.text()

    tab.connect_button.click()
    qtbot.waitUntil(lambda: tab.connected, timeout=15_000)
    tab.terminal.send_text("echo again\r")
    qtbot.waitUntil(lambda: "again" in screen_lines(details), timeout=10_000)


def test_resize_reaches_the_tty(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["sleep", "600"])
    tab = open_terminal(qtbot, details, docker_client, cid)
    cols, rows = tab.terminal.size_in_cells()
    tab.terminal.send_text("stty size\r")
    qtbot.waitUntil(lambda: f"{rows} {cols}" in screen_lines(details), timeout=10_000)


def test_missing_shell_reports_the_exit(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["sleep", "600"])
    details.show_container(session_for(docker_client), cid)
    tab = details.show_tab("Terminal")
    qtbot.waitUntil(lambda: tab.connected, timeout=15_000)
    tab.shell.setCurrentIndex(1)  # /bin/bash: busybox has none
    tab.connect_button.click()
    qtbot.waitUntil(lambda: "exited" in tab.status.text(), timeout=15_000)
    assert not tab.connected
    # The engine's own words say what is missing.
    assert "/bin/bash" in tab.terminal.text()


def test_custom_command_and_user(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    cid = new_docker_container(["sleep", "600"])
    details.show_container(session_for(docker_client), cid)
    tab = details.show_tab("Terminal")
    qtbot.waitUntil(lambda: tab.connected, timeout=15_000)
    tab.shell.setCurrentIndex(tab.shell.count() - 1)
    assert tab.custom.isVisibleTo(tab)
    tab.custom.setText("sh -c 'id -u; exit 0'")
    tab.user.setText("nobody")
    tab.connect_button.click()
    qtbot.waitUntil(lambda: tab.status.text() == "[process exited with code 0]", timeout=15_000)
    assert "65534" in tab.terminal.text()


def test_output_flood_keeps_the_gui_responsive(
    qtbot: Any, details: Any, docker_client: EngineClient, new_docker_container: Any
) -> None:
    from PySide6.QtCore import QElapsedTimer, QTimer

    cid = new_docker_container(["sleep", "600"])
    tab = open_terminal(qtbot, details, docker_client, cid)
    gaps: list[int] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.elapsed()]

    def tick() -> None:
        gaps.append(clock.elapsed() - last[0])
        last[0] = clock.elapsed()

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    try:
        tab.terminal.send_text("seq 1 100000; echo flood-$((6*7))\r")
        # Read the emulated screen as parsed so far: text() would parse the backlog at once.
        screen = tab.terminal.term_screen
        qtbot.waitUntil(
            lambda: any(line.rstrip() == "flood-42" for line in screen.display), timeout=120_000
        )
    finally:
        timer.stop()
    assert tab.pump is not None
    assert tab.terminal.pending_bytes == 0
    assert len(gaps) > 10
    assert max(gaps[3:]) < STALL_MS, f"GUI stalled for {max(gaps[3:])} ms"
