"""The plain-text message boxes: engine text stays literal, Cancel is the default."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox, QPushButton
from pytestqt.qtbot import QtBot

from app.widgets.boxes import ask_destructive, plain_box


def answer_with(label: str, seen: list[QMessageBox]) -> None:
    """Click the button named ``label`` (or Cancel: "") of the box once it is open."""

    def click() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(10, click)
            return
        seen.append(box)
        if not label:
            box.reject()
            return
        for button in box.findChildren(QPushButton):
            if button.text() == label:
                button.click()
                return

    QTimer.singleShot(0, click)


def test_plain_box_never_renders_rich_text(qtbot: QtBot) -> None:
    box = plain_box(None, "t", "<b>name</b>")
    qtbot.addWidget(box)
    assert box.textFormat() == Qt.TextFormat.PlainText
    assert box.text() == "<b>name</b>"


def test_ask_destructive_is_true_only_for_its_button(qtbot: QtBot) -> None:
    seen: list[QMessageBox] = []
    answer_with("Delete", seen)
    assert ask_destructive(None, "Delete", "Delete <i>x</i>?", "Delete") is True
    box = seen[0]
    assert box.textFormat() == Qt.TextFormat.PlainText
    assert box.defaultButton() is box.button(QMessageBox.StandardButton.Cancel)
    answer_with("", seen)
    assert ask_destructive(None, "Delete", "Delete x?", "Delete") is False
