#!/usr/bin/env python3
"""Packaging helpers shared by the Linux build script and the PyInstaller specs.

``python3 packaging/build.py icons`` regenerates every icon under ``assets/icons/`` from the
two sources ``assets/berth.svg`` (the colour icon) and ``assets/berth-symbolic.svg`` (the
monochrome tray/menu-bar glyph), with Qt's SVG renderer (QtSvg ships in
PySide6-Essentials, so no extra tool is needed):

* ``hicolor/<N>x<N>/apps/berth.png`` for the freedesktop sizes, plus ``scalable``;
* ``tray/berth-tray-{dark,light}-<N>.png``: the glyph in black (for light panels, and the
  macOS menu-bar template image) and in white (for dark panels);
* ``berth.ico`` (Windows: PNG-compressed entries, 16–256) and ``berth.icns`` (macOS:
  16–1024, PNG entries) — both written here byte by byte, so they are built and checked
  on Linux.

``python3 packaging/build.py guest-datas`` prints the guest image folders a bundle would
carry; the specs import :func:`guest_image_dirs` and :func:`check_manifest` directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
ICONS = ASSETS / "icons"
SOURCE_SVG = ASSETS / "berth.svg"
SYMBOLIC_SVG = ASSETS / "berth-symbolic.svg"

HICOLOR_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)
TRAY_SIZES = (16, 22, 32, 44, 64)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
# ICNS element types holding PNG data, by pixel size (Apple's iconutil writes these).
ICNS_TYPES: tuple[tuple[bytes, int], ...] = (
    (b"icp4", 16),
    (b"icp5", 32),
    (b"icp6", 64),
    (b"ic07", 128),
    (b"ic08", 256),
    (b"ic09", 512),
    (b"ic10", 1024),
    (b"ic11", 32),  # 16@2x
    (b"ic12", 64),  # 32@2x
    (b"ic13", 256),  # 128@2x
    (b"ic14", 512),  # 256@2x
)
GUEST_ARCHES = ("amd64", "arm64")


# ---- version ------------------------------------------------------------------------------


def project_version() -> str:
    """The version in pyproject.toml (the one ``berth --version`` prints)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise SystemExit("no version in pyproject.toml")
    return match.group(1)


# ---- icons --------------------------------------------------------------------------------


def render_svg(svg: bytes, size: int) -> bytes:
    """Render SVG source to a ``size``×``size`` PNG (transparent background)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    if QGuiApplication.instance() is None:
        render_svg.app = QGuiApplication([])  # type: ignore[attr-defined]
    renderer = QSvgRenderer(QByteArray(svg))
    if not renderer.isValid():
        raise SystemExit("the SVG source does not parse")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(buffer.data().data())


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def ico_bytes(pngs: Sequence[bytes]) -> bytes:
    """A Windows .ico holding each PNG as a PNG-compressed entry (Vista and later)."""
    header = struct.pack("<HHH", 0, 1, len(pngs))
    offset = len(header) + 16 * len(pngs)
    entries = b""
    for png in pngs:
        width, height = png_size(png)
        # 256 is written as 0 in the one-byte fields.
        entries += struct.pack(
            "<BBBBHHII", width % 256, height % 256, 0, 0, 1, 32, len(png), offset
        )
        offset += len(png)
    return header + entries + b"".join(pngs)


def read_ico(data: bytes) -> list[tuple[int, bytes]]:
    """(size, PNG) per entry of an .ico written by :func:`ico_bytes`."""
    reserved, kind, count = struct.unpack("<HHH", data[:6])
    if reserved != 0 or kind != 1:
        raise ValueError("not an icon file")
    out = []
    for i in range(count):
        width, _h, _c, _r, _p, _bpp, length, offset = struct.unpack(
            "<BBBBHHII", data[6 + 16 * i : 22 + 16 * i]
        )
        out.append((width or 256, data[offset : offset + length]))
    return out


def icns_bytes(elements: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A macOS .icns from (type, PNG) elements."""
    body = b"".join(kind + struct.pack(">I", len(png) + 8) + png for kind, png in elements)
    return b"icns" + struct.pack(">I", len(body) + 8) + body


def read_icns(data: bytes) -> list[tuple[bytes, bytes]]:
    if data[:4] != b"icns" or struct.unpack(">I", data[4:8])[0] != len(data):
        raise ValueError("not an icns file")
    out, pos = [], 8
    while pos < len(data):
        kind = data[pos : pos + 4]
        (length,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        out.append((kind, data[pos + 8 : pos + length]))
        pos += length
    return out


def icon_files(source: bytes, symbolic: bytes) -> dict[str, bytes]:
    """Every generated icon file, by path relative to ``assets/icons``."""
    cache: dict[tuple[str, int], bytes] = {}

    def color(size: int) -> bytes:
        key = ("color", size)
        if key not in cache:
            cache[key] = render_svg(source, size)
        return cache[key]

    files: dict[str, bytes] = {}
    for size in HICOLOR_SIZES:
        files[f"hicolor/{size}x{size}/apps/berth.png"] = color(size)
    files["hicolor/scalable/apps/berth.svg"] = source
    white = symbolic.replace(b'fill="#000000"', b'fill="#ffffff"')
    for size in TRAY_SIZES:
        files[f"tray/berth-tray-dark-{size}.png"] = render_svg(symbolic, size)
        files[f"tray/berth-tray-light-{size}.png"] = render_svg(white, size)
    files["berth.ico"] = ico_bytes([color(size) for size in ICO_SIZES])
    files["berth.icns"] = icns_bytes((kind, color(size)) for kind, size in ICNS_TYPES)
    return files


def write_icons(out: Path = ICONS) -> list[Path]:
    files = icon_files(SOURCE_SVG.read_bytes(), SYMBOLIC_SVG.read_bytes())
    written = []
    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append(path)
    return written


# ---- guest images -------------------------------------------------------------------------


def guest_out_dir() -> Path:
    return Path(os.environ.get("BERTH_GUEST_OUT", ROOT / "packaging" / "guest" / "out"))


def guest_image_dirs(arches: Sequence[str] = GUEST_ARCHES) -> dict[str, Path]:
    """The built guest image folders (by arch) that exist, each with a manifest."""
    found = {}
    for arch in arches:
        directory = guest_out_dir() / arch
        if (directory / "manifest.json").is_file():
            found[arch] = directory
    return found


def check_manifest(directory: Path) -> dict[str, object]:
    """Verify every file a guest manifest lists (size and sha256); returns the manifest."""
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise SystemExit(f"{directory}/manifest.json lists no files")
    for name, meta in files.items():
        path = directory / name
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != meta["sha256"] or path.stat().st_size != meta["size"]:
            raise SystemExit(f"{path} does not match its manifest (rebuild the guest image)")
    return dict(manifest)


def main(argv: Sequence[str]) -> int:
    command = argv[0] if argv else "icons"
    if command == "icons":
        for path in write_icons():
            print(path.relative_to(ROOT))
        return 0
    if command == "version":
        print(project_version())
        return 0
    if command == "guest-datas":
        for arch, directory in guest_image_dirs().items():
            check_manifest(directory)
            print(f"{arch}\t{directory}")
        return 0
    print("usage: build.py icons | version | guest-datas", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
