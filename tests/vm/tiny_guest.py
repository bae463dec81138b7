"""A tiny stand-in guest for machine tests: a Debian kernel and a busybox initramfs.

It boots in about 6 s under TCG and behaves like the real guest where the host can see it:
it prints ``BERTH-STAGE <stage> <uptime>`` for every stage on the console, powers off on
the ACPI power button, and leaves an interactive shell on the serial console (so typing
can be tested). Kernel arguments change its behaviour for fault tests:

* ``berthtest.fail=<stage>``  print ``BERTH-FAIL <stage> injected`` instead of that stage
* ``berthtest.hang=<stage>``  stop printing markers before that stage

The kernel comes from ``$BERTH_TEST_KERNEL_DEB`` (a linux-image .deb), or a cache in
``~/.cache/berth/tiny-guest``, or ``apt-get download`` of the package behind
``linux-image-amd64``. Nothing from this module is used by the product.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
# Input event devices and the ACPI power button: enough for system_powerdown to work.
MODULES = ("drivers/input/evdev.ko", "drivers/acpi/button.ko")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "berth" / "tiny-guest"

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
up() { cut -d' ' -f1 /proc/uptime; }
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1"=*) echo "${w#*=}";; esac; done; }
FAIL=$(arg berthtest.fail)
HANG=$(arg berthtest.hang)
insmod /lib/evdev.ko 2>/dev/null
insmod /lib/button.ko 2>/dev/null
# Power off on the ACPI power button (QMP system_powerdown): block on the button's
# input device and power off when it reports anything.
# Stages are printed only once the watcher is about to read, so a powerdown sent right
# after "ready" is not lost (an input event with no reader is dropped).
(
  for ev in /sys/class/input/event*; do
    if grep -q "Power Button" "$ev/device/name" 2>/dev/null; then
      node="/dev/input/${ev##*/}"
      # devtmpfs creates the node asynchronously: wait for it, or dd fails at once
      # and the guest would power off by mistake.
      while [ ! -e "$node" ]; do usleep 10000; done
      touch /tmp/power-watch
      # Tests create /tmp/ignore-power to play a guest that ignores the button.
      if dd if="$node" of=/dev/null bs=24 count=1 2>/dev/null && [ ! -e /tmp/ignore-power ]; then
        echo "tiny-guest: power button, powering off"
        poweroff -f
      fi
    fi
  done
  touch /tmp/power-watch
) &
while [ ! -e /tmp/power-watch ]; do usleep 10000; done
for stage in init network datadisk sshd engine agent ready; do
  if [ "$stage" = "$HANG" ]; then break; fi
  if [ "$stage" = "$FAIL" ]; then echo "BERTH-FAIL $stage injected"; break; fi
  echo "BERTH-STAGE $stage $(up)"
done
while true; do setsid cttyhack sh -i; done
"""


@dataclass(frozen=True)
class TinyGuest:
    """Files of the tiny guest (same shape as the real image directory)."""

    directory: Path
    kernel: Path
    initrd: Path
    rootfs: Path


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 1) -> bytes:
    """One 'newc' cpio record (the format the kernel unpacks for an initramfs)."""
    name_bytes = name.encode() + b"\0"
    fields = [
        0x070701, ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0,
    ]
    header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields[1:])
    out = header + name_bytes
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def build_initramfs(modules: list[Path]) -> bytes:
    entries: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("lib", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()),
    ]
    for module in modules:
        entries.append((f"lib/{module.name}", stat.S_IFREG | 0o644, module.read_bytes()))
    buf = io.BytesIO()
    for ino, (name, mode, data) in enumerate(entries, start=1):
        buf.write(_cpio_entry(name, mode, data, ino))
    buf.write(_cpio_entry("TRAILER!!!", 0, b"", 0))
    return gzip.compress(buf.getvalue(), compresslevel=1)


def _kernel_package() -> str | None:
    try:
        out = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split(":", 1)[1].strip()
    return None


def decompress_bzimage(bzimage: bytes) -> bytes | None:
    """The ELF vmlinux inside an xz-compressed bzImage, or None if it is not one.

    QEMU boots the ELF directly through its PVH entry point. Under TCG this skips the
    in-guest xz decompression, which costs 7-13 s per boot on our CI machines.
    """
    start = bzimage.find(b"\xfd7zXZ\x00")
    if start < 0:
        return None
    try:
        elf = lzma.LZMADecompressor().decompress(bzimage[start:])
    except lzma.LZMAError:
        return None
    return elf if elf.startswith(b"\x7fELF") else None


def _extract_kernel(deb: Path, dest: Path) -> None:
    tree = dest / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True, timeout=300)
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))[0]
    elf = decompress_bzimage(vmlinuz.read_bytes())
    if elf is not None:
        (dest / "vmlinuz").write_bytes(elf)
    else:
        shutil.copy(vmlinuz, dest / "vmlinuz")
    for module in MODULES:
        found = sorted(tree.glob(f"lib/modules/*/kernel/{module}"))
        if found:
            shutil.copy(found[0], dest / found[0].name)
    shutil.rmtree(tree)


def ensure_kernel() -> Path | None:
    """A directory with ``vmlinuz`` (and ``button.ko``), or None if none can be had."""
    kernel_dir = CACHE / "kernel-v3"
    if (kernel_dir / "vmlinuz").exists():
        return kernel_dir
    kernel_dir.mkdir(parents=True, exist_ok=True)
    deb_env = os.environ.get("BERTH_TEST_KERNEL_DEB")
    if deb_env:
        _extract_kernel(Path(deb_env), kernel_dir)
        return kernel_dir
    package = _kernel_package()
    if package is None or shutil.which("apt-get") is None:
        return None
    download = CACHE / "download"
    download.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["apt-get", "download", package], cwd=download, capture_output=True, timeout=600,
        check=False,
    )
    debs = sorted(download.glob("linux-image-*.deb"))
    if result.returncode != 0 or not debs:
        return None
    _extract_kernel(debs[0], kernel_dir)
    shutil.rmtree(download)
    return kernel_dir


def arm64_console_program(text: str) -> bytes:
    """A raw aarch64 program that writes ``text`` to the virt board's PL011 and spins.

    No Linux kernel for arm64 is needed to exercise Berth's arm64 ``virt`` command line,
    chardevs, QMP and console path under TCG: QEMU loads a raw image and jumps to it.
    """
    words = [0xD2A12000]  # movz x0, #0x0900, lsl #16  (PL011 data register, 0x09000000)
    for byte in text.encode():
        words.append(0x52800001 | (byte << 5))  # movz w1, #byte
        words.append(0x39000001)  # strb w1, [x0]
    words.append(0x14000000)  # b .
    return b"".join(w.to_bytes(4, "little") for w in words)


def build_arm64_probe_guest(directory: Path) -> TinyGuest:
    """An arm64 'guest' that prints the kernel banner and every BERTH-STAGE line."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["Linux version 0.0-raw-arm64"]
    lines += [f"BERTH-STAGE {stage} 0.{i}" for i, stage in enumerate(
        ("init", "network", "datadisk", "sshd", "engine", "agent", "ready"), start=1)]
    kernel = directory / "Image"
    kernel.write_bytes(arm64_console_program("\r\n".join(lines) + "\r\n"))
    initrd = directory / "initrd.img"
    initrd.write_bytes(b"\0" * 512)
    rootfs = directory / "rootfs.squashfs"
    with rootfs.open("wb") as fh:
        fh.truncate(1024 * 1024)
    return TinyGuest(directory, kernel, initrd, rootfs)


def build_tiny_guest(directory: Path) -> TinyGuest | None:
    """Write vmlinuz, initrd.img and a dummy rootfs into ``directory``."""
    if not BUSYBOX.exists():
        return None
    kernel_dir = ensure_kernel()
    if kernel_dir is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    kernel = directory / "vmlinuz"
    shutil.copy(kernel_dir / "vmlinuz", kernel)
    modules = [kernel_dir / Path(m).name for m in MODULES if (kernel_dir / Path(m).name).exists()]
    initrd = directory / "initrd.img"
    initrd.write_bytes(build_initramfs(modules))
    rootfs = directory / "rootfs.squashfs"
    with rootfs.open("wb") as fh:
        fh.truncate(1024 * 1024)  # only attached, never read by the tiny guest
    return TinyGuest(directory, kernel, initrd, rootfs)
