"""Shared fixtures for tests that boot the real guest image under QEMU.

``guest_image`` (session scope) is the directory holding the amd64 image built by
``packaging/guest/build.sh`` (``vmlinuz``, ``initrd.img``, ``rootfs.squashfs``,
``manifest.json``). It looks, in order, at:

* ``BERTH_GUEST_IMAGE_DIR`` (``BERTH_GUEST_IMAGE_DIR_ARM64`` for arm64), if set;
* ``packaging/guest/out/<arch>`` in this checkout.

With ``BERTH_BUILD_GUEST=1`` it first runs ``build.sh --out <that directory>`` (cached: it
returns at once when the recipe is unchanged and the outputs are intact, so pointing
``BERTH_GUEST_IMAGE_DIR`` at a directory outside the checkout keeps the image across
fresh clones). Without it, a missing image skips the test with the command that builds
it. ``arm64_guest_image`` is the same for arm64.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "packaging" / "guest" / "build.sh"
IMAGE_FILES = ("vmlinuz", "initrd.img", "rootfs.squashfs", "manifest.json")
# A build from scratch downloads ~150 MB of packages and compresses the root.
BUILD_TIMEOUT_S = 3600


def _image_complete(directory: Path, arch: str) -> bool:
    if not all((directory / name).is_file() for name in IMAGE_FILES):
        return False
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("arch") == arch


def _locate_or_build(arch: str) -> Path:
    variable = "BERTH_GUEST_IMAGE_DIR" if arch == "amd64" else "BERTH_GUEST_IMAGE_DIR_ARM64"
    override = os.environ.get(variable)
    directory = Path(override) if override else REPO / "packaging" / "guest" / "out" / arch
    if os.environ.get("BERTH_BUILD_GUEST"):
        if os.geteuid() != 0:
            pytest.skip("BERTH_BUILD_GUEST is set but building the guest image needs root")
        missing = [t for t in ("mmdebstrap", "mksquashfs", "cpio") if shutil.which(t) is None]
        if missing:
            pytest.skip(
                "cannot build the guest image: missing host tools "
                f"{', '.join(missing)} (see packaging/guest/README.md)"
            )
        result = subprocess.run(
            ["bash", str(BUILD_SH), "--arch", arch, "--out", str(directory)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"build.sh --arch {arch} failed (exit {result.returncode}):\n"
                f"{result.stderr[-4000:]}"
            )
    if not _image_complete(directory, arch):
        pytest.skip(
            f"no {arch} guest image in {directory}: build it with "
            f"`sudo bash packaging/guest/build.sh --arch {arch} --out {directory}` "
            "or set BERTH_BUILD_GUEST=1"
        )
    return directory


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The amd64 guest image directory (built on demand with BERTH_BUILD_GUEST=1)."""
    return _locate_or_build("amd64")


@pytest.fixture(scope="session")
def arm64_guest_image() -> Path:
    """The arm64 guest image directory (built on demand with BERTH_BUILD_GUEST=1)."""
    return _locate_or_build("arm64")
