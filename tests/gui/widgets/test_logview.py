"""LogModel / LogView / LogToolbar: ring buffer, dropped count, filter,
highlight, follow, timestamps, copy, save, clear, plain-text rendering."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QFontMetrics, QGuiApplication, QImage

from app.widgets.logview import LogLine, LogModel, LogPanel, LogView, clean_text, display_text


def numbered(n: int, start: int = 0, stream: str = "stdout") -> list[tuple[str, str, str]]:
    return [
        (f"2026-01-01T00:00:{i % 60:02d}Z", stream, f"line {i}") for i in range(start, start + n)
    ]


@pytest.fixture
def panel(qtbot: Any) -> LogPanel:
    widget = LogPanel(capacity=1000)
    qtbot.addWidget(widget)
    widget.resize(1000, 400)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


# ------------------------------------------------------------------ model


def test_model_tester_through_appends_drops_filter_and_clear(qtmodeltester: Any) -> None:
    """The tester stays connected after check(): every later signal is verified."""
    model = LogModel(capacity=50)
    model.append_lines(numbered(30))
    qtmodeltester.check(model, force_py=True)
    model.append_lines(numbered(40, 30))  # overflow: rows removed, then inserted
    model.set_filter("1")
    model.append_lines(numbered(25, 70))  # filtered drops and inserts
    model.set_show_timestamps(True)
    model.set_filter("")
    model.clear()
    model.append_lines(numbered(5))


def test_ring_buffer_drops_oldest_and_counts(qtbot: Any) -> None:
    model = LogModel(capacity=100)
    removed: list[tuple[int, int]] = []
    model.rowsRemoved.connect(lambda _p, first, last: removed.append((first, last)))
    with qtbot.waitSignal(model.dropped_changed) as blocker:
        model.append_lines(numbered(80))
        model.append_lines(numbered(50, 80))
    assert blocker.args == [30]
    assert model.rowCount() == 100
    assert model.dropped == 30
    assert model.line_at(0).text == "line 30"
    assert model.line_at(99).text == "line 129"
    assert removed == [(0, 29)]  # one batched removal, not one per line
    # A batch larger than the capacity keeps only its own newest lines.
    model.append_lines(numbered(250, 1000))
    assert model.line_at(0).text == "line 1150"
    assert model.dropped == 30 + 100 + 150


def test_line_inputs_and_stderr_tint() -> None:
    model = LogModel()
    model.append_lines(["bare", ("ts", "stderr", "err"), LogLine(None, "stdout", "obj")])
    assert model.line_at(0) == LogLine(None, "stdout", "bare")
    assert model.line_at(1).stream == "stderr"
    assert model.data(model.index(1), Qt.ItemDataRole.ForegroundRole) is not None
    assert model.data(model.index(0), Qt.ItemDataRole.ForegroundRole) is None
    with pytest.raises(AttributeError):  # frozen
        model.line_at(0).text = "x"  # type: ignore[misc]


def test_filter_substring_regex_and_invalid() -> None:
    model = LogModel()
    model.append_lines(["GET /a 200", "POST /b 500", "get /c 404", "DELETE /d 200"])
    model.set_filter("get")
    assert [model.line_at(r).text for r in range(model.rowCount())] == ["GET /a 200", "get /c 404"]
    model.set_filter("get", case_sensitive=True)
    assert model.rowCount() == 1
    model.set_filter(r"\s(4|5)\d\d$", regex=True)
    assert model.rowCount() == 2
    with pytest.raises(re.error):
        model.set_filter("(", regex=True)
    assert model.rowCount() == 2  # previous filter kept
    model.set_filter("(")  # plain substring: parentheses are literal
    assert model.rowCount() == 0
    model.set_filter("")
    assert model.rowCount() == 4


def test_filter_tracks_appends_and_drops(qtmodeltester: Any) -> None:
    model = LogModel(capacity=10)
    model.set_filter("even")
    for i in range(30):
        model.append_lines([f"{'even' if i % 2 == 0 else 'odd'} {i}"])
    assert [model.line_at(r).text for r in range(model.rowCount())] == [
        f"even {i}" for i in range(20, 30, 2)
    ]
    assert model.dropped == 20
    qtmodeltester.check(model, force_py=True)


def test_plain_text_only() -> None:
    model = LogModel()
    model.append_lines(
        [
            "<b>bold?</b> <img src=x onerror=alert(1)>",
            "\x1b[31mred\x1b[0m ok",
            "bell\x07 nul\x00 del\x7f",
        ]
    )
    shown = [model.data(model.index(r)) for r in range(3)]
    assert shown[0] == "<b>bold?</b> <img src=x onerror=alert(1)>"
    assert shown[1] == "red ok"  # ANSI colour codes stripped
    assert shown[2] == "bell\\x07 nul\\x00 del\\x7f"  # other controls escaped
    assert display_text("a\tb") == "a       b"
    long = display_text("x" * 5000)
    assert long.endswith("(904 more characters)")


def test_timestamps_toggle() -> None:
    model = LogModel()
    model.append_lines([("2026-01-01T00:00:00Z", "stdout", "hello"), (None, "stdout", "bare")])
    assert model.data(model.index(0)) == "hello"
    model.set_show_timestamps(True)
    assert model.data(model.index(0)) == "2026-01-01T00:00:00Z hello"
    assert model.data(model.index(1)) == "bare"
    assert model.format_line(model.line_at(0)) == "2026-01-01T00:00:00Z hello"


def test_save_all_and_filtered(tmp_path: Path) -> None:
    model = LogModel()
    model.append_lines(["alpha", "beta", "alphabet", "<b>x</b>"])
    model.set_filter("alpha")
    assert model.save(tmp_path / "all.log") == 4
    assert (tmp_path / "all.log").read_text() == "alpha\nbeta\nalphabet\n<b>x</b>\n"
    assert model.save(tmp_path / "f.log", filtered=True) == 2
    assert (tmp_path / "f.log").read_text() == "alpha\nalphabet\n"


def test_memory_bounded_by_capacity() -> None:
    model = LogModel(capacity=1000)
    for batch in range(50):
        model.append_lines([f"{batch}-{i}" for i in range(1000)])
    assert model.line_count() == 1000
    assert len(model._ring._items) == 1000
    assert sum(item is not None for item in model._ring._items) == 1000
    assert model.dropped == 49_000


# ------------------------------------------------------------------- view


def test_follow_pauses_on_scroll_up_and_resumes_at_end(panel: LogPanel, qtbot: Any) -> None:
    view = panel.view
    panel.append_lines(numbered(500))
    bar = view.verticalScrollBar()
    assert view.follows() and bar.value() == bar.maximum() > 0
    with qtbot.waitSignal(view.follow_changed) as blocker:
        bar.triggerAction(bar.SliderAction.SliderPageStepSub)
    assert blocker.args == [False]
    assert not panel.toolbar.follow.isChecked()
    top = view.top_row()
    panel.append_lines(numbered(10, 500))
    assert view.top_row() == top  # a paused view stays put
    # Lines falling off the front do not move the lines being read.
    first_seen = view.log_model().line_at(top).text
    panel.append_lines(numbered(600, 510))
    assert view.log_model().line_at(view.top_row()).text == first_seen
    with qtbot.waitSignal(view.follow_changed) as blocker:
        bar.triggerAction(bar.SliderAction.SliderToMaximum)
    assert blocker.args == [True]
    assert panel.toolbar.follow.isChecked()
    panel.toolbar.follow.click()  # the button pauses...
    assert not view.follows()
    panel.toolbar.follow.click()  # ...and resumes, jumping to the end
    assert view.follows() and bar.value() == bar.maximum()


def test_toolbar_filter_regex_message(panel: LogPanel) -> None:
    panel.append_lines(["error: disk", "info: ok", "error: net"])
    bar = panel.toolbar
    bar.filter_edit.setText("error")
    assert panel.model.rowCount() == 2
    bar.regex.setChecked(True)
    bar.filter_edit.setText("error: (disk")
    assert "Invalid regex" in bar.message.text()
    assert panel.model.rowCount() == 2  # previous filter kept
    bar.filter_edit.setText("error: (disk|net)")
    assert bar.message.text() == ""
    assert panel.model.rowCount() == 2
    bar.filter_edit.clear()
    assert panel.model.rowCount() == 3


def test_toolbar_timestamps_dropped_and_clear(qtbot: Any) -> None:
    panel = LogPanel(capacity=10)
    qtbot.addWidget(panel)
    panel.show()
    panel.append_lines(numbered(25))
    assert panel.toolbar.dropped.text() == "15 lines dropped"
    assert panel.toolbar.dropped.isVisible()
    panel.toolbar.timestamps.click()
    assert panel.model.show_timestamps()
    assert panel.model.data(panel.model.index(0)).startswith("2026-01-01T")
    panel.toolbar.clear.click()
    assert panel.model.rowCount() == 0
    assert panel.toolbar.dropped.text() == ""


def row_point(view: LogView, row: int) -> QPoint:
    return QPoint(20, (row - view.top_row()) * view.row_height() + view.row_height() // 2)


def test_mouse_selection_copy_and_shortcut(panel: LogPanel, qtbot: Any) -> None:
    view = panel.view
    panel.append_lines(["one", "two", "three", ("t", "stderr", "four")])
    viewport = view.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=row_point(view, 1))
    qtbot.mouseMove(viewport, row_point(view, 3))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=row_point(view, 3))
    assert view.selected_text() == "two\nthree\nfour"
    panel.toolbar.copy.click()
    assert QGuiApplication.clipboard().text() == "two\nthree\nfour"
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=row_point(view, 0))
    qtbot.mouseClick(
        viewport,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.ShiftModifier,
        pos=row_point(view, 1),
    )
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert QGuiApplication.clipboard().text() == "one\ntwo"
    qtbot.keyClick(view, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    assert view.selected_text().count("\n") == 3


def test_selection_stays_on_lines_while_old_ones_drop(qtbot: Any) -> None:
    panel = LogPanel(capacity=20)
    qtbot.addWidget(panel)
    panel.append_lines(numbered(20))
    panel.view.select_rows(15, 16)
    panel.append_lines(numbered(5, 20))
    assert panel.view.selected_text() == "line 15\nline 16"


def test_toolbar_save(panel: LogPanel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PySide6.QtWidgets import QFileDialog

    panel.append_lines(["keep 1", "drop", "keep 2"])
    panel.toolbar.filter_edit.setText("keep")
    target = tmp_path / "saved.log"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    panel.toolbar.save.click()
    assert target.read_text() == "keep 1\nkeep 2\n"


def _ink_columns(image: QImage, y0: int, y1: int, background: int) -> int:
    """How many pixel columns in rows y0..y1 differ from the background."""
    count = 0
    for x in range(image.width()):
        if any(image.pixel(x, y) != background for y in range(y0, y1)):
            count += 1
    return count


def test_html_is_drawn_literally(qtbot: Any) -> None:
    """'<b>x</b>' must paint as 8 glyphs, not as a bold 'x'."""
    view = LogView()
    qtbot.addWidget(view)
    view.resize(400, 100)
    view.show()
    qtbot.waitExposed(view)
    view.append_lines(["<b>x</b>", "x"])
    image = view.viewport().grab().toImage()
    background = image.pixel(image.width() - 2, image.height() - 2)
    h = view.row_height()
    literal = _ink_columns(image, 0, h, background)
    single = _ink_columns(image, h, 2 * h, background)
    assert literal > 5 * single


def test_highlight_paints_matches_only(panel: LogPanel) -> None:
    view = panel.view
    panel.append_lines(["no match here", "find the NEEDLE now"])
    panel.toolbar.highlight_edit.setText("needle")
    assert view.highlight_pattern() is not None
    image = view.viewport().grab().toImage()
    h = view.row_height()
    metrics = QFontMetrics(view.font())
    x = 4 + metrics.horizontalAdvance("find the ") + 2
    hit = image.pixelColor(x, h + h // 2 - 1)
    miss = image.pixelColor(x, h // 2 - 1)
    assert hit.name() != miss.name()
    assert panel.model.rowCount() == 2  # highlight does not filter
    panel.toolbar.regex.setChecked(True)
    panel.toolbar.highlight_edit.setText("[")
    assert "Invalid regex" in panel.toolbar.message.text()


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(1, 40),
    batches=st.lists(
        st.lists(st.sampled_from(["a", "b", "ab", "<b>", "\x1b[1mx", "c"]), max_size=60),
        max_size=12,
    ),
    pattern=st.sampled_from(["", "a", "b", "<", "x"]),
)
def test_ring_matches_reference(capacity: int, batches: list[list[str]], pattern: str) -> None:
    """Whatever the batches: the buffer is the newest `capacity` lines, the
    dropped count adds up, and the filtered rows are those a plain scan finds."""
    model = LogModel(capacity=capacity)
    model.set_filter(pattern)
    every: list[str] = []
    for batch in batches:
        model.append_lines(batch)
        every.extend(batch)
    kept = [clean_text(t) for t in every[-capacity:]] if every else []
    assert [line.text for line in model.all_lines()] == kept
    assert model.dropped == max(0, len(every) - capacity)
    shown = [model.line_at(r).text for r in range(model.rowCount())]
    assert shown == [t for t in kept if pattern in t]


def test_keyboard_scrolling_and_context_menu(panel: LogPanel, qtbot: Any) -> None:
    view = panel.view
    panel.append_lines(numbered(300))
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_PageUp)
    assert not view.follows()
    qtbot.keyClick(view, Qt.Key.Key_End, Qt.KeyboardModifier.ControlModifier)
    assert view.follows()
    qtbot.keyClick(view, Qt.Key.Key_Home, Qt.KeyboardModifier.ControlModifier)
    assert view.top_row() == 0 and not view.follows()
    view.select_rows(0, 1)
    menu = view._build_context_menu()
    actions = {a.text(): a for a in menu.actions()}
    actions["Copy"].trigger()
    assert QGuiApplication.clipboard().text() == "line 0\nline 1"
    actions["Select All"].trigger()
    assert len(view.selected_rows()) == 300
    actions["Follow"].trigger()
    assert view.follows()
    qtbot.keyClick(view, Qt.Key.Key_Escape)
    assert len(view.selected_rows()) == 0
