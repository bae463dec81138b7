"""Settings: theme, start at login, confirmations, log buffer, default engine, tray.

Every change is applied at once and saved (atomically, on a worker thread) to the
platform's config dir through :class:`vm_backend.settings.Settings`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.pages.registry import register_page
from app.theme import apply_theme
from vm_backend.engine.models import Endpoint
from vm_backend.settings import Settings

if TYPE_CHECKING:
    from app.context import AppContext

THEMES = (("system", "Follow the system"), ("light", "Light"), ("dark", "Dark"))


def autostart_file() -> Path:
    """The XDG autostart entry (Linux desktops start it at login)."""
    import os

    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "autostart" / "berth.desktop"


def set_start_at_login(enabled: bool) -> str:
    """Create or remove the login item; returns a note for the user ("" when done)."""
    if not sys.platform.startswith("linux"):
        return (
            "Start at login is set by the installer's login item on this system; "
            "the choice is saved and used by it."
        )
    path = autostart_file()
    if enabled:
        path.parent.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else Path("berth")
        command = str(exe) if exe.name == "berth" else "berth"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            "[Desktop Entry]\nType=Application\nName=Berth\n"
            "Comment=Container manager\n"
            f"Exec={command}\nIcon=berth\nX-GNOME-Autostart-enabled=true\n",
            encoding="utf-8",
        )
        tmp.replace(path)
    else:
        path.unlink(missing_ok=True)
    return ""


class SettingsPage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.settings: Settings = ctx.settings
        layout = QVBoxLayout(self)
        title = QLabel("Settings")
        title.setStyleSheet("font-size: 16pt; font-weight: 600;")
        layout.addWidget(title)
        where = QLabel(f"Saved in {Settings.path()}")
        where.setObjectName("muted")
        where.setTextFormat(Qt.TextFormat.PlainText)
        where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(where)

        form = QFormLayout()
        self.theme = QComboBox()
        for key, label in THEMES:
            self.theme.addItem(label, key)
        self.theme.setCurrentIndex(max(0, [k for k, _ in THEMES].index(self.settings.theme)))
        self.theme.currentIndexChanged.connect(self._theme_changed)
        form.addRow("Theme", self.theme)

        self.start_at_login = QCheckBox("Start Berth when I log in")
        self.start_at_login.setChecked(self.settings.start_at_login)
        self.start_at_login.toggled.connect(self._login_changed)
        form.addRow("", self.start_at_login)

        self.close_to_tray = QCheckBox("Closing the window keeps Berth in the tray")
        self.close_to_tray.setChecked(self.settings.close_to_tray)
        self.close_to_tray.toggled.connect(lambda v: self._set("close_to_tray", v))
        form.addRow("", self.close_to_tray)

        self.confirm = QCheckBox("Ask before destructive actions (kill, remove, prune)")
        self.confirm.setChecked(self.settings.confirm_destructive)
        self.confirm.toggled.connect(lambda v: self._set("confirm_destructive", v))
        form.addRow("", self.confirm)

        self.notify = QCheckBox("Notify me when a container fails or the engine goes away")
        self.notify.setChecked(self.settings.notify_failures)
        self.notify.toggled.connect(lambda v: self._set("notify_failures", v))
        form.addRow("", self.notify)

        self.log_lines = QSpinBox()
        self.log_lines.setRange(1000, 10_000_000)
        self.log_lines.setSingleStep(10_000)
        self.log_lines.setGroupSeparatorShown(True)
        self.log_lines.setSuffix(" lines")
        self.log_lines.setValue(self.settings.log_buffer_lines)
        self.log_lines.valueChanged.connect(lambda v: self._set("log_buffer_lines", int(v)))
        form.addRow("Log buffer", self.log_lines)

        self.engine = QComboBox()
        self.engine.currentIndexChanged.connect(self._engine_changed)
        form.addRow("Default engine", self.engine)
        layout.addLayout(form)

        self.status = QLabel("")
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

        ctx.endpoints_changed.connect(self._fill_engines)
        self._fill_engines(ctx.endpoints)

    def _fill_engines(self, endpoints: list[Endpoint]) -> None:
        self.engine.blockSignals(True)
        self.engine.clear()
        self.engine.addItem("First engine that answers (discovery order)", "")
        for ep in endpoints:
            label = f"{ep.name} — {ep.url}" + ("" if ep.usable else f" ({ep.status.value})")
            self.engine.addItem(label, ep.url)
        current = self.settings.default_engine
        if current and self.engine.findData(current) < 0:
            self.engine.addItem(f"{current} (not found now)", current)
        self.engine.setCurrentIndex(max(0, self.engine.findData(current)))
        self.engine.blockSignals(False)

    def _engine_changed(self) -> None:
        self._set("default_engine", str(self.engine.currentData() or ""))

    def _theme_changed(self) -> None:
        theme = str(self.theme.currentData())
        app = QApplication.instance()
        if isinstance(app, QApplication):
            apply_theme(app, theme)
        self._set("theme", theme)

    def _login_changed(self, enabled: bool) -> None:
        self._set("start_at_login", enabled)

        def done(note: str) -> None:
            self.status.setText(
                note
                or ("Berth will start at login." if enabled else "Berth will not start at login.")
            )

        Op(set_start_at_login, enabled).success(done).failure(
            lambda err: self.status.setText(f"Could not change the login item: {user_message(err)}")
        ).run(self)

    def _set(self, key: str, value: object) -> None:
        setattr(self.settings, key, value)
        Op(self.settings.save).success(lambda _: self.status.setText("Saved.")).failure(
            lambda err: self.status.setText(f"Could not save the settings: {user_message(err)}")
        ).run(self)


register_page("settings", "Settings", SettingsPage, "preferences-system")
