"""The packaging recipes at the level of paths and arguments (fast; runs on Linux CI).

The macOS and Windows specs are executed here with recording stand-ins for PyInstaller's
Analysis/EXE/COLLECT/BUNDLE, so their layout (programs, icons, both guest images, signing
inputs) is checked without a Mac or a Windows machine. The signing/notarisation commands
are pure functions of the environment and are checked as argv lists.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("berth_packaging_build",
                                                  ROOT / "packaging" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_build()


@pytest.fixture
def guest_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two small fake guest images with correct manifests."""
    import hashlib

    for arch in ("amd64", "arm64"):
        d = tmp_path / "out" / arch
        d.mkdir(parents=True)
        files = {}
        for name in ("vmlinuz", "initrd.img", "rootfs.squashfs"):
            data = f"{arch} {name}".encode()
            (d / name).write_bytes(data)
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        (d / "manifest.json").write_text(json.dumps(
            {"arch": arch, "version": "t", "data_disk_format": 1, "files": files}))
    monkeypatch.setenv("BERTH_GUEST_OUT", str(tmp_path / "out"))
    return tmp_path / "out"


# ---- icons -------------------------------------------------------------------------------

def test_generated_icons_match_the_svg_sources(qapp: object) -> None:
    """assets/icons is what `build.py icons` makes from the two SVGs today.

    (``qapp``: rendering needs a Qt application; left to build.py it would make a
    QGuiApplication, and later widget tests in the same process would abort.)
    """
    pytest.importorskip("PySide6.QtSvg")
    files = build.icon_files(build.SOURCE_SVG.read_bytes(), build.SYMBOLIC_SVG.read_bytes())
    for rel, data in files.items():
        path = build.ICONS / rel
        assert path.is_file(), f"{rel} missing: run python3 packaging/build.py icons"
        if rel.endswith(".png"):
            assert build.png_size(path.read_bytes()) == build.png_size(data)
    for size in build.HICOLOR_SIZES:
        png = (build.ICONS / f"hicolor/{size}x{size}/apps/berth.png").read_bytes()
        assert build.png_size(png) == (size, size)


def test_ico_and_icns_hold_every_size() -> None:
    ico = build.read_ico((build.ICONS / "berth.ico").read_bytes())
    assert [size for size, _ in ico] == list(build.ICO_SIZES)
    assert all(build.png_size(png) == (size, size) for size, png in ico)
    icns = build.read_icns((build.ICONS / "berth.icns").read_bytes())
    assert [kind for kind, _ in icns] == [kind for kind, _ in build.ICNS_TYPES]
    for (kind, png), (_, size) in zip(icns, build.ICNS_TYPES, strict=True):
        assert build.png_size(png) == (size, size), kind


def test_ico_writer_round_trip() -> None:
    fake_png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 256, 256)
    data = build.ico_bytes([fake_png + b"rest"])
    assert build.read_ico(data) == [(256, fake_png + b"rest")]


def test_tray_glyphs_are_monochrome_and_not_blank() -> None:
    pytest.importorskip("PySide6.QtGui")
    from PySide6.QtGui import QImage

    for shade, rgb in (("dark", (0, 0, 0)), ("light", (255, 255, 255))):
        image = QImage(str(build.ICONS / "tray" / f"berth-tray-{shade}-32.png"))
        colours = set()
        opaque = 0
        for y in range(image.height()):
            for x in range(image.width()):
                c = image.pixelColor(x, y)
                if c.alpha() > 200:
                    opaque += 1
                    colours.add((c.red(), c.green(), c.blue()))
        assert opaque > 100 and colours == {rgb}


# ---- guest image data --------------------------------------------------------------------

def test_bundles_carry_both_guest_images_with_checked_manifests(guest_out: Path) -> None:
    datas = build._bundle_datas({})
    assert (str(build.ASSETS), "assets") in datas
    for arch in ("amd64", "arm64"):
        for name in ("vmlinuz", "initrd.img", "rootfs.squashfs", "manifest.json"):
            assert (str(guest_out / arch / name), f"guest/{arch}") in datas
    (guest_out / "arm64" / "vmlinuz").write_bytes(b"tampered")
    with pytest.raises(SystemExit, match="does not match its manifest"):
        build._bundle_datas({})


def test_missing_arm64_image_is_said_plainly(guest_out: Path) -> None:
    (guest_out / "arm64" / "manifest.json").unlink()
    with pytest.raises(SystemExit, match=r"missing: arm64 \(bash packaging/guest/build.sh"):
        build._bundle_datas({})


# ---- the specs, executed with recording stand-ins ------------------------------------------

Log = list[tuple[str, tuple[Any, ...], dict[str, Any]]]


class Recorder:
    def __init__(self, kind: str, log: Log) -> None:
        self.kind, self.log = kind, log

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.log.append((self.kind, args, kwargs))
        result = type(self.kind, (), {})()
        result.pure = result.scripts = result.binaries = result.datas = []
        result.name = kwargs.get("name")
        return result


def run_spec(os_name: str) -> Log:
    pytest.importorskip("PyInstaller")
    log: Log = []
    spec = ROOT / "packaging" / os_name / "berth.spec"
    names = {n: Recorder(n, log) for n in ("Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE")}
    sys.modules.pop("build", None)
    try:
        exec(compile(spec.read_text(), str(spec), "exec"),
             {"SPECPATH": str(spec.parent), "__name__": "spec", **names})
    finally:
        sys.modules.pop("build", None)
        if str(ROOT / "packaging") in sys.path:
            sys.path.remove(str(ROOT / "packaging"))
    return log


def calls(log: Log, kind: str) -> list[dict[str, Any]]:
    return [kwargs for k, _, kwargs in log if k == kind]


def test_macos_spec_layout_and_signing_inputs(guest_out: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BERTH_CODESIGN_IDENTITY", raising=False)
    log = run_spec("macos")
    exes = calls(log, "EXE")
    assert [e["name"] for e in exes] == ["berth", "berthd"]
    assert all(e["codesign_identity"] is None and e["entitlements_file"] is None for e in exes)
    bundle = calls(log, "BUNDLE")[0]
    assert bundle["name"] == "Berth.app" and bundle["icon"].endswith("assets/icons/berth.icns")
    assert bundle["bundle_identifier"] == "io.github.berth.Berth"
    assert bundle["info_plist"]["CFBundleShortVersionString"] == build.project_version()
    gui = calls(log, "Analysis")[0]
    assert gui["datas"][0] == (str(build.ASSETS), "assets")
    assert {dest for _, dest in gui["datas"]} == {"assets", "guest/amd64", "guest/arm64"}
    daemon = calls(log, "Analysis")[1]
    assert "PySide6" in daemon["excludes"]

    monkeypatch.setenv("BERTH_CODESIGN_IDENTITY", "Developer ID Application: Test (ABC)")
    monkeypatch.setenv("BERTH_TARGET_ARCH", "universal2")
    exes = calls(run_spec("macos"), "EXE")
    assert all(e["codesign_identity"] == "Developer ID Application: Test (ABC)" for e in exes)
    assert all(e["target_arch"] == "universal2" for e in exes)
    assert all(Path(e["entitlements_file"]).is_file() for e in exes)


def test_windows_spec_layout(guest_out: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    qemu = tmp_path / "qemu"
    qemu.mkdir()
    monkeypatch.setenv("BERTH_QEMU_BUNDLE_DIR", str(qemu))
    log = run_spec("windows")
    exes = calls(log, "EXE")
    assert [(e["name"], e["console"]) for e in exes] == [
        ("berth", True), ("berth-window", False), ("berthd", False)]
    assert all(e["icon"].endswith("assets/icons/berth.ico") for e in exes)
    datas = calls(log, "Analysis")[0]["datas"]
    assert (str(qemu), "qemu") in datas
    assert calls(log, "COLLECT")[0]["name"] == "Berth"


def test_linux_spec_carries_the_host_image_by_default(guest_out: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_GUEST_ARCHES", "amd64")
    gui = calls(run_spec("linux"), "Analysis")[0]
    assert {dest for _, dest in gui["datas"]} == {"assets", "guest/amd64"}
    monkeypatch.setenv("BERTH_GUEST_ARCHES", "amd64 arm64")
    gui = calls(run_spec("linux"), "Analysis")[0]
    assert {dest for _, dest in gui["datas"]} == {"assets", "guest/amd64", "guest/arm64"}


# ---- signing and notarisation commands ---------------------------------------------------

def test_macos_unsigned_build_says_so_and_only_makes_the_dmg(tmp_path: Path) -> None:
    app = tmp_path / "Berth.app"
    commands, notes = build.macos_commands(app, tmp_path, {})
    version = build.project_version()
    assert commands == [["hdiutil", "create", "-volname", "Berth", "-srcfolder", str(app),
                         "-ov", "-format", "UDZO",
                         str(tmp_path / f"Berth-{version}-macos-native.dmg")]]
    assert any("NOT signed" in n for n in notes)
    assert any("notarisation skipped" in n for n in notes)


def test_macos_signed_and_notarised(tmp_path: Path) -> None:
    app = tmp_path / "Berth.app"
    env = {"BERTH_CODESIGN_IDENTITY": "Developer ID Application: T (X)",
           "BERTH_NOTARY_PROFILE": "berth-notary", "BERTH_TARGET_ARCH": "arm64",
           "BERTH_QEMU_BUNDLE_DIR": str(tmp_path)}
    commands, notes = build.macos_commands(app, tmp_path, env)
    dmg = str(tmp_path / f"Berth-{build.project_version()}-macos-arm64.dmg")
    sign = ["codesign", "--force", "--timestamp", "--options", "runtime", "--sign",
            "Developer ID Application: T (X)"]
    qemu_bin = app / "Contents" / "Resources" / "qemu" / "bin"
    qemu_ent = str(ROOT / "packaging" / "macos" / "qemu-entitlements.plist")
    assert commands == [
        [*sign, "--entitlements", qemu_ent, str(qemu_bin / "qemu-system-x86_64")],
        [*sign, "--entitlements", qemu_ent, str(qemu_bin / "qemu-system-aarch64")],
        [*sign, "--entitlements", str(ROOT / "packaging" / "macos" / "entitlements.plist"),
         str(app)],
        ["codesign", "--verify", "--deep", "--strict", str(app)],
        ["hdiutil", "create", "-volname", "Berth", "-srcfolder", str(app), "-ov", "-format",
         "UDZO", dmg],
        ["codesign", "--force", "--timestamp", "--sign", "Developer ID Application: T (X)", dmg],
        ["xcrun", "notarytool", "submit", dmg, "--keychain-profile", "berth-notary", "--wait"],
        ["xcrun", "stapler", "staple", dmg],
    ]
    assert notes == []


def test_windows_signing_inputs(tmp_path: Path) -> None:
    folder = tmp_path / "Berth"
    commands, notes = build.windows_commands(folder, tmp_path, {})
    assert commands == [] and any("NOT signed" in n for n in notes)
    commands, notes = build.windows_commands(folder, tmp_path, {"BERTH_SIGN_CERT_SHA1": "ab12"})
    exes = [str(folder / n) for n in ("berth.exe", "berth-window.exe", "berthd.exe")]
    assert commands == [
        ["signtool", "sign", "/sha1", "ab12", "/fd", "SHA256", "/tr",
         build.DEFAULT_TIMESTAMP_URL, "/td", "SHA256", *exes],
        ["signtool", "verify", "/pa", *exes],
    ]
    assert notes == []
