"""Berth's own icons (window, tray), loaded from the checkout or from a bundle.

The PNGs under ``assets/icons`` are generated from ``assets/berth.svg`` and
``assets/berth-symbolic.svg`` by ``python3 packaging/build.py icons``. A PyInstaller bundle
carries ``assets/`` at its root (``sys._MEIPASS``); a checkout or a wheel has it next to
``app/``.

The tray uses the colour icon on Linux and Windows (what their trays show for other apps)
and, on macOS, the black glyph marked as a template (mask) image so the menu bar tints it
for light and dark mode. :func:`symbolic_icon` gives the white or black glyph for callers
that know the panel colour.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

from PySide6.QtGui import QIcon

HICOLOR_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)
TRAY_SIZES = (16, 22, 32, 44, 64)


def assets_dir() -> Path:
    """``assets/`` of the bundle (when frozen) or of the checkout."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidate = Path(bundle) / "assets"
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parent.parent / "assets"


def _icon_from(paths: list[Path], fallback: Path | None = None) -> QIcon:
    icon = QIcon()
    for path in paths:
        if path.is_file():
            icon.addFile(str(path))
    if icon.isNull() and fallback is not None and fallback.is_file():
        icon = QIcon(str(fallback))
    if icon.isNull():
        icon = QIcon.fromTheme("berth", QIcon.fromTheme("application-x-executable"))
    return icon


@cache
def app_icon() -> QIcon:
    """The colour icon in every generated size (the SVG if the PNGs are missing)."""
    root = assets_dir()
    sizes = [root / "icons" / "hicolor" / f"{n}x{n}" / "apps" / "berth.png" for n in HICOLOR_SIZES]
    return _icon_from(sizes, root / "berth.svg")


@cache
def symbolic_icon(light: bool) -> QIcon:
    """The monochrome glyph: white (``light``, for dark panels) or black (for light ones)."""
    shade = "light" if light else "dark"
    root = assets_dir()
    sizes = [root / "icons" / "tray" / f"berth-tray-{shade}-{n}.png" for n in TRAY_SIZES]
    return _icon_from(sizes, root / "berth-symbolic.svg")


def tray_icon(platform: str = sys.platform) -> QIcon:
    """The icon for the system tray / menu bar on ``platform``."""
    if platform == "darwin":
        icon = QIcon(symbolic_icon(light=False))
        icon.setIsMask(True)  # a template image: macOS tints it for the menu bar
        return icon
    return app_icon()
