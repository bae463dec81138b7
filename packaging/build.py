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
carry (manifests checked); ``deb-depends BUNDLE`` prints the Debian packages owning the
system libraries a Linux bundle loads; ``macos`` / ``windows`` build Berth.app + .dmg / the
Windows folder + .zip on those systems (signing when the documented inputs are set).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
from collections.abc import Iterable, Mapping, Sequence
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


# ---- macOS and Windows recipes ------------------------------------------------------------
# Plans (what the specs bundle) and the post-build commands are pure functions of the
# environment, so they are unit tested on Linux (tests/packaging/test_recipes.py); only a
# Mac / a Windows machine runs them (``build.py macos`` / ``build.py windows``).

BUNDLE_ID = "io.github.berth.Berth"
DEFAULT_TIMESTAMP_URL = "http://timestamp.digicert.com"


def _bundle_datas(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """assets, both guest images (required, manifests checked), and an optional QEMU."""
    images = guest_image_dirs(GUEST_ARCHES)
    missing = [arch for arch in GUEST_ARCHES if arch not in images]
    if missing:
        raise SystemExit(
            f"the macOS and Windows bundles carry both guest images; missing: "
            f"{', '.join(missing)} (bash packaging/guest/build.sh --arch {missing[0]})"
        )
    datas = [(str(ASSETS), "assets")]
    for arch, directory in images.items():
        check_manifest(directory)
        for name in ("vmlinuz", "initrd.img", "rootfs.squashfs", "manifest.json"):
            datas.append((str(directory / name), f"guest/{arch}"))
    qemu = env.get("BERTH_QEMU_BUNDLE_DIR")
    if qemu:
        if not Path(qemu).is_dir():
            raise SystemExit(f"BERTH_QEMU_BUNDLE_DIR={qemu} is not a folder")
        datas.append((qemu, "qemu"))
    return datas


def macos_bundle_plan(env: Mapping[str, str]) -> dict[str, object]:
    version = project_version()
    identity = env.get("BERTH_CODESIGN_IDENTITY") or None
    return {
        "datas": _bundle_datas(env),
        "version": version,
        "bundle_id": BUNDLE_ID,
        "icon": str(ICONS / "berth.icns"),
        "target_arch": env.get("BERTH_TARGET_ARCH") or None,
        "codesign_identity": identity,
        "entitlements": str(ROOT / "packaging" / "macos" / "entitlements.plist")
        if identity
        else None,
        "info_plist": {
            "CFBundleName": "Berth",
            "CFBundleDisplayName": "Berth",
            "CFBundleShortVersionString": version,
            "CFBundleVersion": version,
            "LSMinimumSystemVersion": "12.0",
            "NSHighResolutionCapable": True,
            "LSApplicationCategoryType": "public.app-category.developer-tools",
        },
    }


def windows_bundle_plan(env: Mapping[str, str]) -> dict[str, object]:
    return {
        "datas": _bundle_datas(env),
        "version": project_version(),
        "icon": str(ICONS / "berth.ico"),
    }


def macos_commands(app: Path, dist: Path, env: Mapping[str, str]) -> tuple[list[list[str]],
                                                                         list[str]]:
    """Post-build commands for Berth.app (signing, notarisation, .dmg) and notes.

    PyInstaller already signs every binary when BERTH_CODESIGN_IDENTITY is set; here a
    bundled QEMU gets the hypervisor entitlement, the whole app is signed deep with the
    hardened runtime, the .dmg is made and, with BERTH_NOTARY_PROFILE (a ``notarytool
    store-credentials`` keychain profile), notarised and stapled.
    """
    version = project_version()
    dmg = dist / f"Berth-{version}-macos-{env.get('BERTH_TARGET_ARCH') or 'native'}.dmg"
    identity = env.get("BERTH_CODESIGN_IDENTITY")
    profile = env.get("BERTH_NOTARY_PROFILE")
    commands: list[list[str]] = []
    notes: list[str] = []
    if identity:
        sign = ["codesign", "--force", "--timestamp", "--options", "runtime", "--sign", identity]
        if env.get("BERTH_QEMU_BUNDLE_DIR"):
            entitlements = ROOT / "packaging" / "macos" / "qemu-entitlements.plist"
            for arch in GUEST_ARCHES:
                program = "qemu-system-aarch64" if arch == "arm64" else "qemu-system-x86_64"
                commands.append([*sign, "--entitlements", str(entitlements),
                                 str(app / "Contents" / "Resources" / "qemu" / "bin" / program)])
        commands.append([
            *sign, "--entitlements", str(ROOT / "packaging" / "macos" / "entitlements.plist"),
            str(app),
        ])
        commands.append(["codesign", "--verify", "--deep", "--strict", str(app)])
    else:
        notes.append("BERTH_CODESIGN_IDENTITY is not set: Berth.app is NOT signed "
                     "(Gatekeeper will block it on other Macs)")
    commands.append(["hdiutil", "create", "-volname", "Berth", "-srcfolder", str(app),
                     "-ov", "-format", "UDZO", str(dmg)])
    if identity:
        commands.append(["codesign", "--force", "--timestamp", "--sign", identity, str(dmg)])
    if identity and profile:
        commands.append(["xcrun", "notarytool", "submit", str(dmg), "--keychain-profile",
                         profile, "--wait"])
        commands.append(["xcrun", "stapler", "staple", str(dmg)])
    elif identity:
        notes.append("BERTH_NOTARY_PROFILE is not set: the .dmg is signed but NOT notarised")
    else:
        notes.append("notarisation skipped (needs BERTH_CODESIGN_IDENTITY and "
                     "BERTH_NOTARY_PROFILE)")
    return commands, notes


def windows_commands(folder: Path, dist: Path, env: Mapping[str, str]) -> tuple[
        list[list[str]], list[str]]:
    """Post-build commands for the Windows folder (Authenticode signing) and notes.

    The folder is then zipped by :func:`main` (``shutil.make_archive``). No installer is
    made: an Inno Setup/WiX recipe was not written because it could not be built or
    tested here (docs/packaging.md).
    """
    thumbprint = env.get("BERTH_SIGN_CERT_SHA1")
    commands: list[list[str]] = []
    notes: list[str] = []
    programs = [folder / name for name in ("berth.exe", "berth-window.exe", "berthd.exe")]
    if thumbprint:
        url = env.get("BERTH_TIMESTAMP_URL") or DEFAULT_TIMESTAMP_URL
        commands.append(["signtool", "sign", "/sha1", thumbprint, "/fd", "SHA256",
                         "/tr", url, "/td", "SHA256", *map(str, programs)])
        commands.append(["signtool", "verify", "/pa", *map(str, programs)])
    else:
        notes.append("BERTH_SIGN_CERT_SHA1 is not set: the .exe files are NOT signed "
                     "(SmartScreen will warn)")
    return commands, notes


def run_recipe(os_name: str) -> int:
    """Build the macOS or Windows bundle on that OS: PyInstaller, then the post steps."""
    import shutil
    import subprocess

    dist = ROOT / "dist"
    work = ROOT / "build" / os_name
    spec = ROOT / "packaging" / os_name / "berth.spec"
    subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--distpath",
                    str(work / "bundle"), "--workpath", str(work / "work"), str(spec)],
                   check=True)
    dist.mkdir(exist_ok=True)
    if os_name == "macos":
        commands, notes = macos_commands(work / "bundle" / "Berth.app", dist, os.environ)
    else:
        commands, notes = windows_commands(work / "bundle" / "Berth", dist, os.environ)
    for note in notes:
        print(f"note: {note}")
    for command in commands:
        print("+ " + " ".join(command))
        subprocess.run(command, check=True)
    if os_name == "windows":
        archive = shutil.make_archive(
            str(dist / f"Berth-{project_version()}-windows-amd64"), "zip",
            work / "bundle", "Berth")
        print(archive)
    return 0


# ---- Debian dependencies ------------------------------------------------------------------


def elf_files(bundle: Path) -> list[Path]:
    out = []
    for path in sorted(bundle.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    out.append(path)
    return out


def outside_libraries(bundle: Path) -> tuple[set[str], set[str]]:
    """(system libraries the bundle's ELF files load from outside it, names not found).

    ``ldd`` runs with every bundle folder holding a ``.so`` on ``LD_LIBRARY_PATH``, the way
    the bootloader and Qt's plugin loader find them at run time.
    """
    import subprocess

    lib_dirs = sorted({str(p.parent) for p in bundle.rglob("*.so*")})
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(lib_dirs))
    outside: set[str] = set()
    missing: set[str] = set()
    root = str(bundle.resolve())
    for elf in elf_files(bundle):
        result = subprocess.run(
            ["ldd", str(elf)], capture_output=True, text=True, env=env, check=False
        )
        for line in result.stdout.splitlines():
            parts = line.split()
            if "=>" not in parts:
                continue
            name, target = parts[0], parts[parts.index("=>") + 1]
            if target == "not":
                missing.add(name)
            elif target.startswith("/") and not os.path.realpath(target).startswith(root):
                outside.add(os.path.realpath(target))
    return outside, missing


def deb_depends(bundle: Path) -> list[str]:
    """The Debian packages owning the libraries the bundle loads from the system."""
    import subprocess

    outside, missing = outside_libraries(bundle)
    if missing:
        raise SystemExit(
            "libraries the bundle needs are not installed on the build host: "
            + ", ".join(sorted(missing))
        )
    packages: set[str] = set()
    for path in sorted(outside):
        result = subprocess.run(
            ["dpkg-query", "-S", path], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            # usrmerge: dpkg knows /lib/x86_64-linux-gnu/x, ldd says /usr/lib/...
            alt = path.removeprefix("/usr") if path.startswith("/usr/lib") else "/usr" + path
            result = subprocess.run(
                ["dpkg-query", "-S", alt], capture_output=True, text=True, check=False
            )
        if result.returncode != 0:
            raise SystemExit(f"no Debian package owns {path}")
        packages.add(result.stdout.split(":", 1)[0].strip())
    out = []
    for package in sorted(packages):
        if package == "libc6":
            version = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "libc6"],
                capture_output=True, text=True, check=True,
            ).stdout.split("-")[0]
            out.append(f"libc6 (>= {version})")
        else:
            out.append(package)
    return out


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
    if command in ("macos", "windows"):
        return run_recipe(command)
    if command == "deb-depends" and len(argv) == 2:
        print(", ".join(deb_depends(Path(argv[1]))))
        return 0
    print("usage: build.py icons | version | guest-datas | deb-depends BUNDLE | macos | windows",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
