"""The guest image files the host boots: kernel, initramfs, read-only root, manifest.

The image contract (docs/guest-image.md): ``vmlinuz``, ``initrd.img``, ``rootfs.squashfs``
and ``manifest.json`` in one directory; the root is attached read-only as the first
virtio disk. We do not validate checksums here (the installer does); we check presence
and the architecture so a wrong image fails with words instead of a silent hang.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vm_backend.errors import BerthError
from vm_backend.machine.hostinfo import Arch


class ImageError(BerthError):
    """The guest image is missing, incomplete, or for another architecture."""


@dataclass(frozen=True)
class GuestImage:
    """Paths of one guest image. ``cmdline`` holds extra kernel arguments, if any."""

    kernel: Path
    initrd: Path
    rootfs: Path
    arch: Arch = Arch.AMD64
    cmdline: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_dir(cls, directory: Path, arch: Arch | None = None) -> GuestImage:
        """Load an image directory; ``arch`` (if given) must match the manifest."""
        manifest_arch: Arch | None = None
        manifest = directory / "manifest.json"
        if manifest.exists():
            try:
                data: Any = json.loads(manifest.read_text(encoding="utf-8"))
                manifest_arch = Arch(data["arch"])
            except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
                raise ImageError(
                    f"The guest image manifest {manifest} is damaged.",
                    "Reinstall or rebuild the guest image (packaging/guest/build.sh).",
                ) from exc
        if arch is not None and manifest_arch is not None and arch is not manifest_arch:
            raise ImageError(
                f"The guest image in {directory} is for {manifest_arch.value}, "
                f"not {arch.value}.",
                f"Install the {arch.value} guest image.",
            )
        image = cls(
            kernel=directory / "vmlinuz",
            initrd=directory / "initrd.img",
            rootfs=directory / "rootfs.squashfs",
            arch=arch or manifest_arch or Arch.AMD64,
        )
        image.check()
        return image

    def check(self) -> None:
        for path in (self.kernel, self.initrd, self.rootfs):
            if not path.is_file():
                raise ImageError(
                    f"The guest image file {path} is missing.",
                    "Reinstall or rebuild the guest image (packaging/guest/build.sh).",
                )
