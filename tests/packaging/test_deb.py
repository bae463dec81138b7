"""The Linux .deb, end to end: build it, install it into a clean Debian root, run it there.

Opt-in (``pytest -m packaging tests/packaging``; needs root, mmdebstrap and the Debian
mirror): it builds the bundle and the .deb with ``packaging/linux/build.sh`` (or takes
``BERTH_DEB``), makes a fresh ``mmdebstrap --variant=apt`` bookworm root and installs the
.deb there with ``apt-get install ./berth.deb`` (so apt resolves the declared Depends,
nothing else). Then, with no source checkout anywhere in that root:

* ``berth --version`` and ``berth --screenshot DIR`` (offscreen) run from /usr/bin;
* the PNGs exist and are not blank;
* the bundle carries the guest image and its files match the manifest's sha256s;
* without QEMU (only recommended), the VM verbs say what to install;
* the bundled ``berth`` starts its bundled ``berthd``, which boots the bundled guest image
  under the host's QEMU (TCG) until the engine answers, and ``berth machine ssh`` reads
  the image version inside the guest. (QEMU is only a Recommends of the .deb, so the boot
  runs the installed files from the host side, where QEMU is.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 1800
ROOTFS_TIMEOUT_S = 1800
BOOT_TIMEOUT_S = 900


def _build_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("berth_packaging_build",
                                                  ROOT / "packaging" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _build_module()


def _timed(label: str, argv: list[str], timeout: float, **kwargs: object) -> str:
    start = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            check=False, **kwargs)  # type: ignore[call-overload]
    print(f"{label}: {time.monotonic() - start:.0f} s")
    tail = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{label} failed:\n{tail}"
    return str(result.stdout)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("BERTH_DEB")
    if given:
        return Path(given)
    if os.geteuid() != 0:
        pytest.skip("building the .deb installs build packages: run as root")
    work = tmp_path_factory.mktemp("debbuild")
    env = dict(os.environ, BERTH_BUILD_DIR=str(work / "build"), BERTH_DIST_DIR=str(work))
    out = _timed("build.sh", ["bash", str(ROOT / "packaging" / "linux" / "build.sh")],
                 BUILD_TIMEOUT_S, env=env)
    print(out[-600:])
    debs = sorted(work.glob("berth_*.deb"))
    assert len(debs) == 1
    return debs[0]


@pytest.fixture(scope="module")
def clean_root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        pytest.skip("needs root and mmdebstrap")
    target = tmp_path_factory.mktemp("cleanroot") / "root"
    _timed("mmdebstrap + apt-get install ./berth.deb", [
        "mmdebstrap", "--variant=apt", "--quiet",
        f"--customize-hook=upload {deb} /root/berth.deb",
        '--customize-hook=chroot "$1" env DEBIAN_FRONTEND=noninteractive '
        "apt-get install -y -q --no-install-recommends /root/berth.deb",
        '--customize-hook=rm "$1/root/berth.deb"',
        "bookworm", str(target),
    ], ROOTFS_TIMEOUT_S)
    return target


def in_root(root: Path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` chrooted in ``root`` with a private /proc and a bare environment."""
    return subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", f"--mount-proc={root / 'proc'}",
         "chroot", str(root), "env", "-i", "PATH=/usr/bin:/bin", "HOME=/root",
         "QT_QPA_PLATFORM=offscreen", *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_installed_layout(clean_root: Path) -> None:
    assert os.readlink(clean_root / "usr/bin/berth") == "../../opt/berth/berth"
    assert (clean_root / "opt/berth/berthd").is_file()
    assert (clean_root / "usr/share/applications/io.github.berth.Berth.desktop").is_file()
    metainfo = clean_root / "usr/share/metainfo/io.github.berth.Berth.metainfo.xml"
    assert f'version="{build.project_version()}"' in metainfo.read_text()
    for size in build.HICOLOR_SIZES:
        assert (clean_root / f"usr/share/icons/hicolor/{size}x{size}/apps/berth.png").is_file()
    # No source checkout in the root: the programs run from the bundle alone.
    assert not (clean_root / "work").exists()
    assert not list((clean_root / "opt/berth").rglob("*.py"))
    status = (clean_root / "var/lib/dpkg/status").read_text()
    assert "Package: berth\nStatus: install ok installed" in status


def test_version_from_installed_files(clean_root: Path) -> None:
    result = in_root(clean_root, "/usr/bin/berth", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"berth {build.project_version()}"


def test_screenshots_from_installed_files(clean_root: Path) -> None:
    shots = clean_root / "tmp" / "shots"
    shutil.rmtree(shots, ignore_errors=True)
    result = in_root(clean_root, "/usr/bin/berth", "--screenshot", "/tmp/shots")
    assert result.returncode == 0, result.stderr[-3000:]
    pngs = sorted(shots.glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"containers", "images", "volumes", "networks", "machine", "settings"} <= names

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QImage

    for png in pngs:
        image = QImage(str(png))
        assert image.width() >= 800 and image.height() >= 500, png
        colours = {image.pixel(x, y) for x in range(0, image.width(), 7)
                   for y in range(0, image.height(), 7)}
        assert len(colours) > 20, f"{png.name} looks blank ({len(colours)} colours)"


def test_bundle_carries_the_guest_image(clean_root: Path) -> None:
    guest = clean_root / "opt/berth/_internal/guest/amd64"
    manifest = build.check_manifest(guest)  # sizes and sha256s, or SystemExit
    assert manifest["arch"] == "amd64"
    source = ROOT / "packaging" / "guest" / "out" / "amd64" / "manifest.json"
    if source.exists():
        assert manifest == json.loads(source.read_text())


def test_first_run_without_qemu_says_what_to_install(clean_root: Path) -> None:
    """QEMU is only recommended, so the clean root has none: the VM verbs must say so."""
    assert not (clean_root / "usr/bin/qemu-img").exists()
    said = ""
    for verb in (["init", "--accel", "tcg"], ["start"]):
        result = in_root(clean_root, "/usr/bin/berth", "machine", *verb, timeout=300)
        said += result.stdout + result.stderr
        if result.returncode != 0:
            break
    assert result.returncode != 0, said
    assert "is not installed (Berth needs QEMU" in said, said
    assert "sudo apt install qemu-" in said, said


@pytest.fixture
def berth_home(tmp_path: Path) -> Iterator[Path]:
    home = Path(f"/tmp/berth-pkg-{os.getpid()}")  # short: socket paths
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o700)
    yield home
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if str(home) in cmdline and any(c.endswith("berthd") for c in cmdline[:1]):
            with contextlib.suppress(psutil.Error):
                proc.terminate()
                proc.wait(10)
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_bundled_image_boots_with_bundled_berthd(clean_root: Path, berth_home: Path) -> None:
    berth = clean_root / "opt/berth/berth"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(berth_home),
           "BERTH_HOME": str(berth_home)}

    def run(*args: str, timeout: float = 120) -> str:
        result = subprocess.run([str(berth), *args], capture_output=True, text=True,
                                env=env, cwd=berth_home, timeout=timeout, check=False)
        said = f"{result.stdout}\n{result.stderr}"
        assert result.returncode == 0, f"berth {' '.join(args)}:\n{said}"
        return result.stdout

    run("machine", "init", "--cpus", "1", "--memory", "1024", "--disk", "4", "--accel", "tcg")
    try:
        start = time.monotonic()
        out = run("machine", "start", timeout=BOOT_TIMEOUT_S)
        print(f"boot of the bundled image (TCG): {time.monotonic() - start:.0f} s\n{out}")
        version = run("machine", "ssh", "--", "cat", "/etc/berth-image-version").strip()
        manifest = json.loads(
            (clean_root / "opt/berth/_internal/guest/amd64/manifest.json").read_text())
        assert version == manifest["version"]
        record = json.loads((berth_home / "machines/default/image.json").read_text())
        assert record["directory"] == str(clean_root / "opt/berth/_internal/guest/amd64")
    finally:
        subprocess.run([str(berth), "machine", "rm", "--force"], env=env, timeout=300,
                       capture_output=True, check=False)
