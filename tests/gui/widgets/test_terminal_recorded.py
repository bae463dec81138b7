"""Full-screen programs rendered from byte streams recorded on a real TTY
(busybox top and vi at 80x24; see data/capture.py), plus a live vi session
driven through a real exec TTY when the engine is available."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from app.widgets.terminal import TerminalWidget
from tests.gui.widgets.termutil import fed, row_text


def test_top_frame(term: TerminalWidget, data_dir: Path) -> None:
    fed(term, (data_dir / "top.bin").read_bytes())
    assert row_text(term, 0).startswith("Mem: ")
    assert row_text(term, 1).startswith("CPU:")
    assert row_text(term, 2).startswith("Load average:")
    header = row_text(term, 3)
    assert header.split() == ["PID", "PPID", "USER", "STAT", "VSZ", "%VSZ", "%CPU", "COMMAND"]
    # The column header is drawn in reverse video.
    line = term.term_screen.buffer[3]
    assert all(line[x].reverse for x in range(len(header)))
    assert not term.term_screen.buffer[4][0].reverse
    commands = [row_text(term, y) for y in range(4, 8)]
    assert any(text.endswith("top -d 1") for text in commands)
    # top redraws in place: nothing of it lands in the scrollback.
    assert len(term.term_screen.scrollback) == 0


def test_vi_session(term: TerminalWidget, data_dir: Path, qtbot: Any) -> None:
    replies: list[bytes] = []
    term.input_bytes.connect(replies.append)
    fed(term, b"/ # vi /tmp/notes.txt\r\n")
    fed(term, (data_dir / "vi_open.bin").read_bytes())
    screen = term.term_screen
    assert screen.in_alternate_screen
    assert [row_text(term, y) for y in range(3)] == ["first line", "second line", "typed in vi"]
    assert all(row_text(term, y) == "~" for y in range(3, 23))
    assert row_text(term, 23).startswith("- /tmp/notes.txt [Modified]")
    assert (screen.cursor.x, screen.cursor.y) == (10, 2)  # on the last typed char
    # vi asked where the cursor is (ESC[6n); the terminal answered.
    assert any(reply.endswith(b"R") and reply.startswith(b"\x1b[") for reply in replies)
    image = term._canvas.grab().toImage()
    cursor_px = image.pixelColor(int((10 + 0.5) * term._cell_w), int(2.5 * term._cell_h))
    assert cursor_px.name() != "#1e1e1e" or not term._canvas.hasFocus()

    fed(term, (data_dir / "vi_quit.bin").read_bytes())
    assert not screen.in_alternate_screen
    assert row_text(term, 0) == "/ # vi /tmp/notes.txt"
    assert "~" not in term.text()


# ----------------------------------------------------------- live engine


class _ExecTty:
    def __init__(self, api: Any, container: str, cmd: list[str]) -> None:
        self.api = api
        self.exec_id = api.exec_create(
            container, cmd, tty=True, stdin=True, environment={"TERM": "xterm-256color"}
        )["Id"]
        raw = api.exec_start(self.exec_id, tty=True, socket=True)
        self.sock: socket.socket = raw._sock
        self.sock.setblocking(False)

    def pump(self, term: TerminalWidget) -> None:
        """Move whatever the TTY sent into the terminal (non-blocking)."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            if not chunk:
                return
            term.feed(chunk)


@pytest.fixture
def busybox() -> Iterator[tuple[Any, str]]:
    docker = pytest.importorskip("docker")
    try:
        api = docker.APIClient()
        api.ping()
        api.inspect_image("berth-test/busybox:latest")
    except Exception as exc:  # noqa: BLE001 - any reason means "no engine here"
        pytest.skip(f"no engine with berth-test/busybox: {exc}")
    container = api.create_container(
        "berth-test/busybox:latest",
        ["sleep", "300"],
        host_config=api.create_host_config(network_mode="none", auto_remove=True),
    )["Id"]
    api.start(container)
    try:
        yield api, container
    finally:
        api.kill(container)


@pytest.mark.engine
def test_live_vi_through_exec_tty(
    term: TerminalWidget, qtbot: Any, busybox: tuple[Any, str]
) -> None:
    api, container = busybox
    tty = _ExecTty(api, container, ["vi", "/tmp/live.txt"])
    api.exec_resize(tty.exec_id, height=24, width=80)
    term.input_bytes.connect(tty.sock.sendall)

    def pump_until(predicate: Any, timeout: int = 10_000) -> None:
        def check() -> bool:
            tty.pump(term)
            term.flush()
            return bool(predicate())

        qtbot.waitUntil(check, timeout=timeout)

    pump_until(lambda: "/tmp/live.txt" in row_text(term, 23))
    assert term.term_screen.in_alternate_screen
    qtbot.keyClicks(term._canvas, "ihello from berth")
    qtbot.keyClick(term._canvas, Qt.Key.Key_Escape)
    # Leaving insert mode moves the cursor back onto the last character.
    pump_until(lambda: row_text(term, 0) == "hello from berth" and term.term_screen.cursor.x == 15)
    # Cursor keys in vi's normal mode go through DECCKM-aware encoding.
    qtbot.keyClick(term._canvas, Qt.Key.Key_Home)
    qtbot.keyClicks(term._canvas, "x")
    pump_until(lambda: row_text(term, 0) == "ello from berth")
    qtbot.keyClicks(term._canvas, ":wq")
    qtbot.keyClick(term._canvas, Qt.Key.Key_Return)
    pump_until(lambda: not term.term_screen.in_alternate_screen)
    qtbot.waitUntil(lambda: not api.exec_inspect(tty.exec_id)["Running"], timeout=10_000)
    out = api.exec_start(api.exec_create(container, ["cat", "/tmp/live.txt"])["Id"])
    assert out == b"ello from berth\n"
