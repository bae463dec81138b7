"""app/icons.py: the generated icons load from the checkout and from a bundle."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QSize

from app import icons


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    icons.app_icon.cache_clear()
    icons.symbolic_icon.cache_clear()


def test_app_icon_has_every_generated_size(qapp: object) -> None:
    icon = icons.app_icon()
    sizes = {(s.width(), s.height()) for s in icon.availableSizes()}
    assert {(n, n) for n in icons.HICOLOR_SIZES} <= sizes
    assert not icon.pixmap(QSize(32, 32)).isNull()


def test_tray_icon_per_platform(qapp: object) -> None:
    mac = icons.tray_icon("darwin")
    assert mac.isMask() and not mac.isNull()
    assert {(s.width(), s.height()) for s in mac.availableSizes()} == {
        (n, n) for n in icons.TRAY_SIZES}
    linux = icons.tray_icon("linux")
    assert not linux.isMask() and not linux.isNull()
    light = icons.symbolic_icon(light=True).pixmap(QSize(22, 22)).toImage()
    opaque = [light.pixelColor(x, y) for x in range(22) for y in range(22)
              if light.pixelColor(x, y).alpha() > 200]
    assert opaque and all(c.red() == c.green() == c.blue() == 255 for c in opaque)


def test_assets_found_in_a_frozen_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         qapp: object) -> None:
    shutil.copytree(icons.assets_dir(), tmp_path / "assets")
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert icons.assets_dir() == tmp_path / "assets"
    assert not icons.app_icon().isNull()
