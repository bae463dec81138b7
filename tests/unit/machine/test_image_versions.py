"""Guest image versions: the machine's record, the data-format check, and an upgrade that
leaves a real qcow2 data disk byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from vm_backend.machine import image as image_mod
from vm_backend.machine.hostinfo import Arch
from vm_backend.machine.image import (
    DATA_FORMAT,
    GuestImage,
    ImageError,
    ImageFormatError,
    adopt_image,
    load_image_record,
)


def fake_image(root: Path, version: str, data_format: int = DATA_FORMAT) -> GuestImage:
    """An image folder with distinct boot files and a manifest of ``version``."""
    root.mkdir(parents=True)
    files = {}
    for name in ("vmlinuz", "initrd.img", "rootfs.squashfs"):
        data = f"{name} of {version}\n".encode()
        (root / name).write_bytes(data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = {"arch": "amd64", "version": version, "data_disk_format": data_format,
                "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return GuestImage.from_dir(root, Arch.AMD64)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_version_and_format_are_read(tmp_path: Path) -> None:
    img = fake_image(tmp_path / "v1", "20260101-aaaa", data_format=1)
    assert (img.version, img.data_format) == ("20260101-aaaa", 1)
    # The image the build produces today carries both fields.
    built = Path(__file__).resolve().parents[3] / "packaging" / "guest" / "out" / "amd64"
    if (built / "manifest.json").exists():
        real = GuestImage.from_dir(built, Arch.AMD64)
        assert real.version and real.data_format == DATA_FORMAT


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_upgrade_switches_boot_files_and_leaves_the_data_disk_alone(tmp_path: Path) -> None:
    state = tmp_path / "machine"
    state.mkdir()
    disk = state / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    # Put real bytes in the disk, so "unchanged" means something.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(disk)],
                   check=True, capture_output=True)
    before = sha256(disk)

    old = fake_image(tmp_path / "images" / "old", "20260101-aaaa")
    first = adopt_image(old, state)
    assert (first.version, first.previous_version) == ("20260101-aaaa", "")
    assert first.directory == str(old.kernel.parent)
    assert adopt_image(old, state) == first  # same image again: nothing changes

    new = fake_image(tmp_path / "images" / "new", "20270101-bbbb")
    second = adopt_image(new, state)
    assert (second.version, second.previous_version) == ("20270101-bbbb", "20260101-aaaa")
    assert second.directory == str(new.kernel.parent)
    assert load_image_record(state) == second
    assert sha256(disk) == before
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(disk)], check=True, capture_output=True,
        text=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 1 << 30


def test_machine_without_record_is_format_one(tmp_path: Path) -> None:
    record = adopt_image(fake_image(tmp_path / "img", "v1", data_format=1), tmp_path)
    assert record.data_format == 1


def test_newer_disk_format_is_refused_in_plain_words(tmp_path: Path) -> None:
    state = tmp_path / "machine"
    state.mkdir()
    image_mod.save_image_record(state, image_mod.ImageRecord(
        version="future", data_format=DATA_FORMAT + 1, directory="/elsewhere"))
    with pytest.raises(ImageFormatError) as info:
        adopt_image(fake_image(tmp_path / "img", "v1"), state)
    assert "written by a newer Berth" in info.value.message
    assert "Update Berth" in info.value.hint and "untouched" in info.value.hint
    assert load_image_record(state).version == "future"  # type: ignore[union-attr]


def test_image_older_than_the_disk_is_refused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A Berth that knows format 2, a disk in format 2, an old image writing format 1.
    monkeypatch.setattr(image_mod, "DATA_FORMAT", 2)
    state = tmp_path / "machine"
    state.mkdir()
    adopt_image(fake_image(tmp_path / "v2", "v2", data_format=2), state)
    with pytest.raises(ImageFormatError, match="could damage it"):
        adopt_image(fake_image(tmp_path / "v1", "v1", data_format=1), state)
    # Going forward (format 1 disk, format 2 image) is allowed: the guest migrates it.
    other = tmp_path / "other"
    other.mkdir()
    adopt_image(fake_image(tmp_path / "o1", "o1", data_format=1), other)
    forward = adopt_image(fake_image(tmp_path / "o2", "o2", data_format=2), other)
    assert forward.data_format == 2 and forward.previous_version == "o1"


def test_image_newer_than_this_berth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match="newer than this Berth knows"):
        adopt_image(fake_image(tmp_path / "img", "v9", data_format=DATA_FORMAT + 1), tmp_path)


def test_damaged_record_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / image_mod.IMAGE_RECORD).write_text("{not json", encoding="utf-8")
    with pytest.raises(ImageError, match="damaged") as info:
        adopt_image(fake_image(tmp_path / "img", "v1"), tmp_path)
    assert "Delete that file" in info.value.hint


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_machine_start_refuses_before_launching_qemu(tmp_path: Path) -> None:
    from vm_backend.machine.hostinfo import HostInfo, HostOS
    from vm_backend.machine.machine import Machine
    from vm_backend.machine.spec import MachineSpec

    launched: list[list[str]] = []

    def launcher(argv: list[str], log: Path) -> object:
        launched.append(argv)
        raise AssertionError("QEMU must not be launched")

    home = tmp_path / "home"
    m = Machine("img", image=fake_image(tmp_path / "img", "v1"), home=home,
                host=HostInfo(HostOS.LINUX, Arch.AMD64, 2, 4096),
                launcher=launcher)  # type: ignore[arg-type]
    try:
        m.create(MachineSpec(name="img", cpus=1, memory_mib=512, disk_gib=4))
        disk_before = sha256(m.paths.data_disk)
        image_mod.save_image_record(m.paths.state_dir, image_mod.ImageRecord(
            version="future", data_format=DATA_FORMAT + 1, directory="/elsewhere"))
        with pytest.raises(ImageFormatError, match="written by a newer Berth"):
            m.start()
        assert launched == [] and sha256(m.paths.data_disk) == disk_before
    finally:
        m.close()
