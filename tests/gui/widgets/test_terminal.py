"""TerminalWidget: cells and colours, keys to bytes, resize, scrollback,
selection and clipboard, paste, find, save, robustness and responsiveness."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PySide6.QtCore import QEvent, QPoint, Qt, QTimer
from PySide6.QtGui import QGuiApplication, QKeyEvent

from app.widgets.terminal import TerminalWidget, key_to_bytes
from tests.gui.widgets.termutil import fed, row_text

C = Qt.KeyboardModifier


def cell_center(term: TerminalWidget, col: int, row: int) -> QPoint:
    return QPoint(int((col + 0.5) * term._cell_w), int((row + 0.5) * term._cell_h))


def cell_edge(term: TerminalWidget, col: int, row: int) -> QPoint:
    return QPoint(int(col * term._cell_w) + 1, int((row + 0.5) * term._cell_h))


# ------------------------------------------------------------- rendering


def test_text_and_cursor(term: TerminalWidget) -> None:
    fed(term, b"hello\r\nworld")
    assert row_text(term, 0) == "hello"
    assert row_text(term, 1) == "world"
    assert (term.term_screen.cursor.x, term.term_screen.cursor.y) == (5, 1)


def test_colours_and_attributes(term: TerminalWidget) -> None:
    fed(
        term,
        b"\x1b[31mR\x1b[0m\x1b[1;44mB\x1b[0m\x1b[38;5;208mO\x1b[0m"
        b"\x1b[48;2;10;20;30mT\x1b[0m\x1b[3;4;7mX\x1b[0m\x1b[95mP",
    )
    line = term.term_screen.buffer[0]
    assert (line[0].data, line[0].fg) == ("R", "red")
    assert line[1].bold and line[1].bg == "blue"
    assert line[2].fg == "ff8700"  # 256-colour index 208
    assert line[3].bg == "0a141e"  # truecolour
    assert line[4].italics and line[4].underscore and line[4].reverse
    assert line[5].fg == "brightmagenta"
    # Every colour name pyte produces maps to a real colour, not the default.
    assert term._color("red", term._default_fg).name() == "#cd3131"
    assert term._color("ff8700", term._default_fg).name() == "#ff8700"
    assert term._color("bfightmagenta", term._default_bg).name() != term._default_bg.name()


def test_rendered_pixels_follow_cell_colours(term: TerminalWidget) -> None:
    fed(term, b"\x1b[42m    \x1b[0m")
    image = term._canvas.grab().toImage()
    inside = image.pixelColor(int(term._cell_w * 1.5), int(term._cell_h * 0.5))
    outside = image.pixelColor(int(term._cell_w * 10.5), int(term._cell_h * 3.5))
    assert inside.name() == "#0dbc79"
    assert outside.name() == "#1e1e1e"


def test_cursor_hidden_by_dectcem(term: TerminalWidget) -> None:
    fed(term, b"\x1b[?25l")
    assert term.term_screen.cursor.hidden
    fed(term, b"\x1b[?25h")
    assert not term.term_screen.cursor.hidden


def test_alternate_screen_restores_main(term: TerminalWidget) -> None:
    fed(term, b"$ prompt\r\n")
    fed(term, b"\x1b[?1049h\x1b[H\x1b[2Jfull screen app")
    assert term.term_screen.in_alternate_screen
    assert row_text(term, 0) == "full screen app"
    fed(term, b"\x1b[?1049l")
    assert not term.term_screen.in_alternate_screen
    assert row_text(term, 0) == "$ prompt"


def test_only_dirty_lines_repainted(term: TerminalWidget, qtbot: Any) -> None:
    fed(term, b"a\r\nb\r\nc")
    # Flush the first full paint of the freshly shown widget before spying.
    term._canvas.repaint()
    QGuiApplication.processEvents()
    painted: list[Any] = []
    original = term._paint

    def spy(canvas: Any, rect: Any) -> None:
        painted.append(rect)
        original(canvas, rect)

    term._paint = spy  # type: ignore[method-assign]
    term.feed(b"\x1b[10;1Hx")
    qtbot.waitUntil(lambda: bool(painted))
    height = max(r.height() for r in painted)
    # Row 9 (the write) and the old cursor row 2: far less than the screen.
    assert height < term._canvas.height()


def test_device_status_reply(term: TerminalWidget, qtbot: Any) -> None:
    with qtbot.waitSignal(term.input_bytes) as blocker:
        fed(term, b"\x1b[3;5H\x1b[6n")
    assert blocker.args == [b"\x1b[3;5R"]


# ------------------------------------------------------------------ keys


def key(k: Qt.Key, mods: Qt.KeyboardModifier = C.NoModifier, text: str = "") -> QKeyEvent:
    return QKeyEvent(QEvent.Type.KeyPress, k, mods, text)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (key(Qt.Key.Key_Return, text="\r"), b"\r"),
        (key(Qt.Key.Key_Backspace, text="\x08"), b"\x7f"),
        (key(Qt.Key.Key_Tab, text="\t"), b"\t"),
        (key(Qt.Key.Key_Backtab, C.ShiftModifier), b"\x1b[Z"),
        (key(Qt.Key.Key_Escape, text="\x1b"), b"\x1b"),
        (key(Qt.Key.Key_Up), b"\x1b[A"),
        (key(Qt.Key.Key_Down), b"\x1b[B"),
        (key(Qt.Key.Key_Right), b"\x1b[C"),
        (key(Qt.Key.Key_Left), b"\x1b[D"),
        (key(Qt.Key.Key_Home), b"\x1b[H"),
        (key(Qt.Key.Key_End), b"\x1b[F"),
        (key(Qt.Key.Key_PageUp), b"\x1b[5~"),
        (key(Qt.Key.Key_PageDown), b"\x1b[6~"),
        (key(Qt.Key.Key_Insert), b"\x1b[2~"),
        (key(Qt.Key.Key_Delete), b"\x1b[3~"),
        (key(Qt.Key.Key_F1), b"\x1bOP"),
        (key(Qt.Key.Key_F4), b"\x1bOS"),
        (key(Qt.Key.Key_F5), b"\x1b[15~"),
        (key(Qt.Key.Key_F12), b"\x1b[24~"),
        (key(Qt.Key.Key_Up, C.ControlModifier), b"\x1b[1;5A"),
        (key(Qt.Key.Key_Delete, C.ShiftModifier), b"\x1b[3;2~"),
        (key(Qt.Key.Key_C, C.ControlModifier, "\x03"), b"\x03"),
        (key(Qt.Key.Key_D, C.ControlModifier, "\x04"), b"\x04"),
        (key(Qt.Key.Key_Z, C.ControlModifier, "\x1a"), b"\x1a"),
        (key(Qt.Key.Key_BracketLeft, C.ControlModifier), b"\x1b"),
        (key(Qt.Key.Key_Space, C.ControlModifier), b"\x00"),
        (key(Qt.Key.Key_B, C.AltModifier, "b"), b"\x1bb"),
        (key(Qt.Key.Key_A, text="a"), b"a"),
        (key(Qt.Key.Key_At, C.ControlModifier | C.AltModifier, "@"), b"@"),  # AltGr
        (key(Qt.Key.Key_unknown, text="é"), "é".encode()),
    ],
)
def test_key_bytes(event: QKeyEvent, expected: bytes) -> None:
    assert key_to_bytes(event, app_cursor=False) == expected


def test_application_cursor_keys(term: TerminalWidget, qtbot: Any) -> None:
    fed(term, b"\x1b[?1h")
    assert term.term_screen.application_cursor
    with qtbot.waitSignal(term.input_bytes) as blocker:
        qtbot.keyClick(term._canvas, Qt.Key.Key_Up)
    assert blocker.args == [b"\x1bOA"]
    fed(term, b"\x1b[?1l")
    with qtbot.waitSignal(term.input_bytes) as blocker:
        qtbot.keyClick(term._canvas, Qt.Key.Key_Up)
    assert blocker.args == [b"\x1b[A"]


def test_typing_through_the_widget(term: TerminalWidget, qtbot: Any) -> None:
    sent: list[bytes] = []
    term.input_bytes.connect(sent.append)
    qtbot.keyClicks(term._canvas, "ls")
    qtbot.keyClick(term._canvas, Qt.Key.Key_Tab)  # must not move focus away
    qtbot.keyClick(term._canvas, Qt.Key.Key_Return)
    qtbot.keyClick(term._canvas, Qt.Key.Key_C, C.ControlModifier)
    assert b"".join(sent) == b"ls\t\r\x03"
    assert term._canvas.hasFocus()


def test_read_only_sends_nothing(term: TerminalWidget, qtbot: Any) -> None:
    sent: list[bytes] = []
    term.input_bytes.connect(sent.append)
    term.set_read_only(True)
    qtbot.keyClicks(term._canvas, "x")
    term.paste_text("y")
    fed(term, b"\x1b[6n")
    assert sent == []


# ---------------------------------------------------------------- resize


def test_resize_emits_cells(term: TerminalWidget, qtbot: Any) -> None:
    scrollbar = term._scrollbar.sizeHint().width()
    with qtbot.waitSignal(term.resized) as blocker:
        term.resize(int(term._cell_w * 100) + scrollbar + 1, int(term._cell_h * 30) + 1)
    assert blocker.args == [100, 30]
    assert term.size_in_cells() == (100, 30)
    assert (term.term_screen.columns, term.term_screen.lines) == (100, 30)


def test_shrinking_keeps_cursor_line_and_pushes_scrollback(
    term: TerminalWidget, qtbot: Any
) -> None:
    fed(term, b"\r\n".join(b"line %d" % i for i in range(24)))
    scrollbar = term._scrollbar.sizeHint().width()
    with qtbot.waitSignal(term.resized):
        term.resize(int(term._cell_w * 80) + scrollbar + 1, int(term._cell_h * 10) + 1)
    assert row_text(term, 9) == "line 23"
    assert term.text().splitlines()[0] == "line 0"


# ------------------------------------------------------------ scrollback


def test_scrollback_wheel_and_keys(term: TerminalWidget, qtbot: Any) -> None:
    fed(term, b"\r\n".join(b"line %d" % i for i in range(100)))
    assert len(term.term_screen.scrollback) == 100 - 24
    assert term.scroll_offset == 0
    term.scroll_lines(-10)
    assert term.scroll_offset == 10
    # New output does not yank a reader back down: the view stays anchored.
    fed(term, b"\r\nmore")
    assert term.scroll_offset == 11
    qtbot.keyClick(term._canvas, Qt.Key.Key_PageUp, C.ShiftModifier)
    assert term.scroll_offset == 11 + 23
    qtbot.keyClick(term._canvas, Qt.Key.Key_PageDown, C.ShiftModifier)
    assert term.scroll_offset == 11
    assert term._scrollbar.value() == term._scrollbar.maximum() - 11
    # Typing returns to the live screen.
    qtbot.keyClicks(term._canvas, "x")
    assert term.scroll_offset == 0


def test_wheel_scrolls(term: TerminalWidget) -> None:
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QWheelEvent

    fed(term, b"\r\n".join(b"line %d" % i for i in range(100)))
    event = QWheelEvent(
        QPointF(10, 10),
        QPointF(10, 10),
        QPoint(0, 0),
        QPoint(0, 120),
        Qt.MouseButton.NoButton,
        C.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QGuiApplication.sendEvent(term._canvas, event)
    assert term.scroll_offset == 3


def test_scrollback_bounded(qtbot: Any) -> None:
    widget = TerminalWidget(scrollback=50)
    qtbot.addWidget(widget)
    fed(widget, b"\r\n".join(b"%d" % i for i in range(1000)))
    assert len(widget.term_screen.scrollback) == 50


# ------------------------------------------------------ selection, clipboard


def test_mouse_selection_and_copy(term: TerminalWidget, qtbot: Any) -> None:
    fed(term, b"alpha beta gamma\r\nsecond row")
    qtbot.mousePress(term._canvas, Qt.MouseButton.LeftButton, pos=cell_edge(term, 6, 0))
    qtbot.mouseMove(term._canvas, cell_edge(term, 6, 1))
    qtbot.mouseRelease(term._canvas, Qt.MouseButton.LeftButton, pos=cell_edge(term, 6, 1))
    assert term.selected_text() == "beta gamma\nsecond"
    qtbot.keyClick(term._canvas, Qt.Key.Key_C, C.ControlModifier | C.ShiftModifier)
    assert QGuiApplication.clipboard().text() == "beta gamma\nsecond"


def test_double_click_selects_word(term: TerminalWidget, qtbot: Any) -> None:
    fed(term, b"run /usr/bin/env now")
    qtbot.mouseDClick(term._canvas, Qt.MouseButton.LeftButton, pos=cell_center(term, 8, 0))
    assert term.selected_text() == "/usr/bin/env"


def test_selection_survives_scrolling_output(term: TerminalWidget) -> None:
    fed(term, b"keep me\r\n")
    term.select(len(term.term_screen.scrollback), 0, 4)
    fed(term, b"\r\n".join(b"x%d" % i for i in range(40)))
    assert term.selected_text() == "keep"


def test_paste_plain_and_bracketed(term: TerminalWidget, qtbot: Any) -> None:
    sent: list[bytes] = []
    term.input_bytes.connect(sent.append)
    QGuiApplication.clipboard().setText("echo 1\necho 2")
    qtbot.keyClick(term._canvas, Qt.Key.Key_V, C.ControlModifier | C.ShiftModifier)
    assert sent[-1] == b"echo 1\recho 2"
    fed(term, b"\x1b[?2004h")
    term.paste_text("x\x1b[201~y")
    assert sent[-1] == b"\x1b[200~xy\x1b[201~"


def test_middle_click_pastes(term: TerminalWidget, qtbot: Any) -> None:
    clipboard = QGuiApplication.clipboard()
    mode = clipboard.Mode.Selection if clipboard.supportsSelection() else clipboard.Mode.Clipboard
    clipboard.setText("picked", mode)
    with qtbot.waitSignal(term.input_bytes) as blocker:
        qtbot.mouseClick(term._canvas, Qt.MouseButton.MiddleButton, pos=cell_center(term, 1, 1))
    assert blocker.args == [b"picked"]


def test_context_menu_actions(term: TerminalWidget) -> None:
    fed(term, b"menu text")
    term.select(len(term.term_screen.scrollback), 0, 4)
    menu = term._build_context_menu()
    actions = {a.text(): a for a in menu.actions() if a.text()}
    assert actions["Copy"].isEnabled()
    actions["Copy"].trigger()
    assert QGuiApplication.clipboard().text() == "menu"
    actions["Select All"].trigger()
    assert term.selected_text().startswith("menu text")
    actions["Find…"].trigger()
    assert term.find_bar.isVisible()
    actions["Clear Scrollback and Screen"].trigger()
    assert term.text() == ""


# ------------------------------------------------------------ find, save


def test_find_next_previous_wraps(term: TerminalWidget) -> None:
    lines = [b"needle %d" % i if i % 20 == 0 else b"hay %d" % i for i in range(100)]
    fed(term, b"\r\n".join(lines))
    assert term.find_next("NEEDLE")
    assert term.selected_text() == "needle"
    first = term._selection_span()
    assert term.find_next("needle")
    assert term._selection_span() != first
    found = []
    for _ in range(5):
        assert term.find_next("needle")
        span = term._selection_span()
        assert span is not None
        found.append(span[0].line)
    assert len(set(found)) == 5  # 5 matches, then it wraps around
    assert term.find_previous("needle")
    assert not term.find_next("absent")
    assert not term.find_next("Needle", case_sensitive=True)


def test_find_scrolls_match_into_view(term: TerminalWidget) -> None:
    fed(term, b"\r\n".join([b"unique-top"] + [b"filler"] * 200))
    assert term.find_previous("unique-top")
    assert term.scroll_offset > 0


def test_find_bar(term: TerminalWidget, qtbot: Any) -> None:
    fed(term, b"one two three")
    qtbot.keyClick(term._canvas, Qt.Key.Key_F, C.ControlModifier | C.ShiftModifier)
    bar = term.find_bar
    assert bar.isVisible()
    bar.edit.setText("two")  # type: ignore[attr-defined]
    qtbot.keyClick(bar.edit, Qt.Key.Key_Return)  # type: ignore[attr-defined]
    assert term.selected_text() == "two"
    bar.edit.setText("zzz")  # type: ignore[attr-defined]
    bar.next_button.click()  # type: ignore[attr-defined]
    assert bar.status.text() == "Not found"  # type: ignore[attr-defined]
    qtbot.keyClick(bar.edit, Qt.Key.Key_Escape)  # type: ignore[attr-defined]
    assert not bar.isVisible()


def test_save_text(term: TerminalWidget, tmp_path: Path) -> None:
    fed(term, b"\r\n".join(b"row %d" % i for i in range(40)) + b"\r\n\x1b[31mred\x1b[0m")
    path = tmp_path / "console.txt"
    term.save_text(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "row 0"
    assert lines[-1] == "red"
    assert len(lines) == 41


def test_clear_and_set_font(term: TerminalWidget, qtbot: Any) -> None:
    from PySide6.QtGui import QFont

    fed(term, b"\r\n".join(b"row %d" % i for i in range(40)))
    term.clear()
    assert term.text() == ""
    assert len(term.term_screen.scrollback) == 0
    big = QFont(term.terminal_font())
    big.setPointSize(big.pointSize() * 2)
    with qtbot.waitSignal(term.resized) as blocker:
        term.set_font(big)
    cols, rows = blocker.args
    assert cols < 80 and rows < 24


# ------------------------------------------------------- robustness, speed


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunks=st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_bytes_never_raise(term: TerminalWidget, chunks: list[bytes]) -> None:
    for chunk in chunks:
        term.feed(chunk)
    term.flush()
    term.grab()  # painting whatever state the bytes produced must not raise either
    assert term.size_in_cells() == (80, 24)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.sampled_from(
            [
                b"\x1b[",
                b"?",
                b"1049",
                b"h",
                b"l",
                b";",
                b"38",
                b"5",
                b"2",
                b"m",
                b"\r\n",
                b"x",
                b"\x1b[2J",
                b"\x1b[999;999H",
                b"\x1b[r",
                b"\x1b[5;3r",
                b"\x1bM",
                b"\x1bD",
                "日本".encode(),
                b"\x1b[?25l",
                b"\x1b[3J",
                b"\x1b[6n",
                b"\x1b[200~",
                b"\x1b]0;t\x07",
            ]
        ),
        max_size=60,
    )
)
def test_escape_soup_never_raises(term: TerminalWidget, parts: list[bytes]) -> None:
    fed(term, b"".join(parts))
    term.grab()


def test_flood_does_not_stall_gui(term: TerminalWidget, qtbot: Any) -> None:
    """4 MB fed in 4 KB pieces: feed() only queues, and the event loop keeps
    turning while it is parsed (a 5 ms heartbeat timer measures the longest
    gap between two turns, parse passes and repaints included)."""
    block = b"".join(
        b"\x1b[3%dmline %06d \x1b[0m some output text to fill the row a bit\r\n" % (i % 8, i)
        for i in range(1000)
    )
    payload = block * (4 * 1024 * 1024 // len(block) + 1)
    gaps: list[float] = []
    last = [time.perf_counter()]

    def beat() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    heartbeat = QTimer()
    heartbeat.setInterval(5)
    heartbeat.timeout.connect(beat)
    started = time.perf_counter()
    for offset in range(0, len(payload), 4096):
        term.feed(payload[offset : offset + 4096])
    feed_time = time.perf_counter() - started
    term.max_parse_seconds = term.max_parse_cpu_seconds = 0.0
    last[0] = time.perf_counter()
    heartbeat.start()
    qtbot.waitUntil(lambda: term.pending_bytes == 0, timeout=240_000)
    heartbeat.stop()
    assert feed_time < 1.0
    # A pass stops after 8 ms of wall time; in CPU time (immune to other load
    # on the machine) no pass may exceed a few slices.
    assert term.max_parse_cpu_seconds < 0.05
    # Wall-clock gaps include the scheduler on a busy 2-core CI (up to 0.3 s
    # seen at a load average of 50); parsing the whole flood in one call
    # would be 4+ s of CPU alone.
    assert max(gaps) < 2.0
    assert term.term_screen.cursor.y == 23
    assert row_text(term, 22).startswith("line 000999")


def test_wide_characters_select_and_find(term: TerminalWidget) -> None:
    fed(term, "ab日本語cd\r\nnext".encode())
    line = term.term_screen.buffer[0]
    assert [line[x].data for x in range(9)] == ["a", "b", "日", "", "本", "", "語", "", "c"]
    assert term.find_next("語c")
    assert term.selected_text() == "語c"
    span = term._selection_span()
    assert span is not None and (span[0].col, span[1].col) == (6, 9)
    term.select(len(term.term_screen.scrollback), 2, 4)  # columns 2..5: two wide chars
    assert term.selected_text() == "日本"


def test_title_and_coalescing(term: TerminalWidget, qtbot: Any) -> None:
    with qtbot.waitSignal(term.title_changed) as blocker:
        term.feed(b"\x1b]0;root@box: ~\x07$ ")
    assert blocker.args == ["root@box: ~"]
    assert term.title() == "root@box: ~"
    # After a flood, small feeds are coalesced again (not parsed per call).
    term.feed(b"x" * 100_000)
    qtbot.waitUntil(lambda: term.pending_bytes == 0)
    term.feed(b"a")
    assert term._timer.interval() > 0


def test_full_reset_leaves_alternate_screen(term: TerminalWidget) -> None:
    fed(term, b"main\x1b[?1049h\x1b[?25lalt\x1bc")
    assert not term.term_screen.in_alternate_screen
    assert not term.term_screen.cursor.hidden
    assert row_text(term, 0) == ""
