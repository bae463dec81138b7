"""Light and dark looks: the Fusion style with a palette, chosen from the settings.

"system" follows the desktop's colour scheme when Qt can tell (Qt 6.5+ style hints);
otherwise it keeps the platform palette. The small style sheet only adds what palettes
cannot say (the sidebar, the engine-down banner, placeholder badges).
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

_STYLE = """
QListWidget#sidebar { border: none; padding-top: 6px; outline: 0; }
QListWidget#sidebar::item { padding: 7px 12px; border-radius: 4px; margin: 1px 6px; }
QListWidget#sidebar::item:selected {
    background: palette(highlight); color: palette(highlighted-text);
}
QListWidget#sidebar::item:hover:!selected { background: palette(alternate-base); }
QFrame#engineBanner { background: %(banner_bg)s; border-bottom: 1px solid %(banner_border)s; }
QFrame#engineBanner QLabel { color: %(banner_fg)s; }
QLabel#comingBadge { color: %(muted)s; font-style: italic; }
QLabel#fieldError { color: %(error)s; }
QLabel#muted { color: %(muted)s; }
"""


def is_dark(theme: str) -> bool:
    if theme == "dark":
        return True
    if theme == "light":
        return False
    hints = QGuiApplication.styleHints()
    scheme = getattr(hints, "colorScheme", None)
    return bool(scheme is not None and scheme() == Qt.ColorScheme.Dark)


def dark_palette() -> QPalette:
    p = QPalette()
    base, window, text = QColor(30, 31, 34), QColor(43, 45, 48), QColor(223, 225, 229)
    disabled = QColor(128, 130, 135)
    p.setColor(QPalette.ColorRole.Window, window)
    p.setColor(QPalette.ColorRole.WindowText, text)
    p.setColor(QPalette.ColorRole.Base, base)
    p.setColor(QPalette.ColorRole.AlternateBase, QColor(37, 38, 41))
    p.setColor(QPalette.ColorRole.ToolTipBase, window)
    p.setColor(QPalette.ColorRole.ToolTipText, text)
    p.setColor(QPalette.ColorRole.PlaceholderText, disabled)
    p.setColor(QPalette.ColorRole.Text, text)
    p.setColor(QPalette.ColorRole.Button, window)
    p.setColor(QPalette.ColorRole.ButtonText, text)
    p.setColor(QPalette.ColorRole.BrightText, QColor(255, 90, 90))
    p.setColor(QPalette.ColorRole.Link, QColor(110, 170, 255))
    p.setColor(QPalette.ColorRole.Highlight, QColor(53, 116, 240))
    p.setColor(QPalette.ColorRole.HighlightedText, QColor(255, 255, 255))
    # Frame and bevel shades: the light defaults would draw bright lines on dark.
    p.setColor(QPalette.ColorRole.Light, QColor(70, 72, 76))
    p.setColor(QPalette.ColorRole.Midlight, QColor(58, 60, 64))
    p.setColor(QPalette.ColorRole.Mid, QColor(50, 52, 56))
    p.setColor(QPalette.ColorRole.Dark, QColor(24, 25, 27))
    p.setColor(QPalette.ColorRole.Shadow, QColor(12, 12, 14))
    for role in (
        QPalette.ColorRole.Text,
        QPalette.ColorRole.ButtonText,
        QPalette.ColorRole.WindowText,
    ):
        p.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    return p


def apply_theme(app: QApplication, theme: str) -> bool:
    """Apply ``theme`` (system, light or dark); returns whether the result is dark."""
    dark = is_dark(theme)
    app.setStyle("Fusion")
    app.setPalette(dark_palette() if dark else app.style().standardPalette())
    colours = (
        {
            "banner_bg": "#5c2b29",
            "banner_border": "#7a3a37",
            "banner_fg": "#ffe9e7",
            "muted": "#9a9ca1",
            "error": "#ff8a80",
        }
        if dark
        else {
            "banner_bg": "#fdecea",
            "banner_border": "#f5c2bd",
            "banner_fg": "#611a15",
            "muted": "#6b6e75",
            "error": "#b3261e",
        }
    )
    app.setStyleSheet(_STYLE % colours)
    return dark
