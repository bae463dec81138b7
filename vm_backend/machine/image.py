"""The guest image files the host boots: kernel, initramfs, read-only root, manifest.

The image contract (docs/guest-image.md): ``vmlinuz``, ``initrd.img``, ``rootfs.squashfs``
and ``manifest.json`` in one directory; the root is attached read-only as the first
virtio disk. We do not validate checksums here (the installer does); we check presence
and the architecture so a wrong image fails with words instead of a silent hang.

Versions: the manifest carries the image ``version`` and ``data_disk_format`` (the layout
of the persistent data disk the image writes). Each machine's state dir holds
``image.json``, the image it last booted and the data format of its disk. At every start
:func:`adopt_image` compares them: a disk written in a newer format than the image (or
than this Berth, :data:`DATA_FORMAT`) is refused in plain words; otherwise the machine
switches to the image found now (a new bundle's image is its upgrade) and the record says
which version it came from. The data disk itself is never opened or changed here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vm_backend.errors import BerthError
from vm_backend.machine.hostinfo import Arch

# The newest data-disk layout this Berth knows (docs/guest-image.md, "Data disk").
DATA_FORMAT = 1
IMAGE_RECORD = "image.json"


class ImageError(BerthError):
    """The guest image is missing, incomplete, or for another architecture."""


class ImageFormatError(ImageError):
    """The image and the machine's data disk are of incompatible formats."""


@dataclass(frozen=True)
class GuestImage:
    """Paths of one guest image. ``cmdline`` holds extra kernel arguments, if any."""

    kernel: Path
    initrd: Path
    rootfs: Path
    arch: Arch = Arch.AMD64
    cmdline: tuple[str, ...] = field(default_factory=tuple)
    version: str = ""
    data_format: int = DATA_FORMAT

    @classmethod
    def from_dir(cls, directory: Path, arch: Arch | None = None) -> GuestImage:
        """Load an image directory; ``arch`` (if given) must match the manifest."""
        manifest_arch: Arch | None = None
        version = ""
        data_format = DATA_FORMAT
        manifest = directory / "manifest.json"
        if manifest.exists():
            try:
                data: Any = json.loads(manifest.read_text(encoding="utf-8"))
                manifest_arch = Arch(data["arch"])
                version = str(data.get("version", ""))
                data_format = int(data.get("data_disk_format", DATA_FORMAT))
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
            version=version,
            data_format=data_format,
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


@dataclass(frozen=True)
class ImageRecord:
    """What a machine booted last (``<state dir>/image.json``)."""

    version: str
    data_format: int
    directory: str
    previous_version: str = ""
    adopted_at: float = 0.0


def load_image_record(state_dir: Path) -> ImageRecord | None:
    path = state_dir / IMAGE_RECORD
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        return ImageRecord(
            version=str(data["version"]),
            data_format=int(data["data_format"]),
            directory=str(data["directory"]),
            previous_version=str(data.get("previous_version", "")),
            adopted_at=float(data.get("adopted_at", 0.0)),
        )
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise ImageError(
            f"The machine's image record {path} is damaged.",
            "Delete that file; Berth writes it again at the next start.",
        ) from exc


def save_image_record(state_dir: Path, record: ImageRecord) -> None:
    path = state_dir / IMAGE_RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True), encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def check_compatible(image: GuestImage, disk_format: int) -> None:
    """Refuse an image that cannot read a data disk of ``disk_format`` (or this Berth can't)."""
    if image.data_format > DATA_FORMAT:
        raise ImageFormatError(
            f"The guest image {image.version or image.kernel.parent} uses data format "
            f"{image.data_format}, newer than this Berth knows ({DATA_FORMAT}).",
            "Update Berth, or use the guest image that came with it.",
        )
    if disk_format > DATA_FORMAT:
        raise ImageFormatError(
            f"This machine's data disk was written by a newer Berth (data format "
            f"{disk_format}; this Berth knows up to {DATA_FORMAT}).",
            "Update Berth to use this machine; the data disk was left untouched.",
        )
    if disk_format > image.data_format:
        raise ImageFormatError(
            f"This machine's data disk is in data format {disk_format}, but the guest "
            f"image {image.version or image.kernel.parent} writes format "
            f"{image.data_format} and could damage it.",
            "Use a guest image at least as new as the one that made the disk (update "
            "Berth); the data disk was left untouched.",
        )


def adopt_image(image: GuestImage, state_dir: Path) -> ImageRecord:
    """Check ``image`` against the machine's record and make it the one the machine boots.

    A machine with no record was made before records existed: its disk is format 1. When
    the image's version differs from the record, the machine is upgraded (or moved) to it:
    the new boot files are used from the next boot on and the old version is remembered;
    the data disk is not touched (the guest migrates its layout itself if the format grew).
    """
    record = load_image_record(state_dir)
    disk_format = record.data_format if record is not None else 1
    check_compatible(image, disk_format)
    directory = str(image.kernel.parent)
    if (
        record is not None
        and record.version == image.version
        and record.directory == directory
        and record.data_format == max(disk_format, image.data_format)
    ):
        return record
    previous = record.version if record is not None else ""
    if record is not None and record.version == image.version:
        previous = record.previous_version
    new = ImageRecord(
        version=image.version,
        data_format=max(disk_format, image.data_format),
        directory=directory,
        previous_version=previous,
        adopted_at=time.time(),
    )
    save_image_record(state_dir, new)
    return new
