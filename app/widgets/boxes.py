"""Message boxes with plain text only (their text often quotes the engine or the VM)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget


def plain_box(
    parent: QWidget | None,
    title: str,
    text: str,
    icon: QMessageBox.Icon = QMessageBox.Icon.Warning,
) -> QMessageBox:
    """A message box that never interprets ``text`` as rich text."""
    box = QMessageBox(parent)
    box.setIcon(icon)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setWindowTitle(title)
    box.setText(text)
    return box


def ask_destructive(parent: QWidget | None, title: str, text: str, ok_text: str) -> bool:
    """Ask before something that cannot be undone; Cancel is the default (blocking)."""
    box = plain_box(parent, title, text)
    box.setStandardButtons(QMessageBox.StandardButton.Cancel)
    ok = box.addButton(ok_text, QMessageBox.ButtonRole.DestructiveRole)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is ok
