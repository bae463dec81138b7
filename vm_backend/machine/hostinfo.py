"""What the host looks like to the VM layer: OS, CPU architecture, cores, RAM, QEMU.

A frozen :class:`HostInfo` is passed into the pure argv builder and the spec validator so
both can be tested for every host (macOS, Windows, Linux) from one Linux CI machine.
"""

from __future__ import annotations

import enum
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass

import psutil


class HostOS(enum.Enum):
    """The host operating systems Berth supports."""

    LINUX = "linux"
    DARWIN = "darwin"
    WINDOWS = "windows"


class Arch(enum.Enum):
    """CPU architectures, named the way Debian names them (guests and hosts alike)."""

    AMD64 = "amd64"
    ARM64 = "arm64"

    @property
    def qemu_system(self) -> str:
        """The QEMU system emulator binary name for a guest of this architecture."""
        return "qemu-system-x86_64" if self is Arch.AMD64 else "qemu-system-aarch64"

    @property
    def console_device(self) -> str:
        """The guest kernel's name for the first serial port on our machine types."""
        return "ttyS0" if self is Arch.AMD64 else "ttyAMA0"


@dataclass(frozen=True)
class HostInfo:
    """Facts about the host that shape the QEMU command line and the limits of a spec."""

    os: HostOS
    arch: Arch
    cpus: int
    memory_mib: int
    qemu_version: tuple[int, int] = (7, 2)

    @property
    def is_windows(self) -> bool:
        return self.os is HostOS.WINDOWS


def _host_os() -> HostOS:
    system = platform.system().lower()
    if system == "darwin":
        return HostOS.DARWIN
    if system == "windows":
        return HostOS.WINDOWS
    return HostOS.LINUX


def current_host_os() -> HostOS:
    """The operating system Berth runs on."""
    return _host_os()


def _host_arch() -> Arch:
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return Arch.ARM64
    return Arch.AMD64


_VERSION_RE = re.compile(r"version (\d+)\.(\d+)")


def parse_qemu_version(text: str) -> tuple[int, int] | None:
    """Parse ``qemu-system-* --version`` output into (major, minor)."""
    match = _VERSION_RE.search(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def qemu_version(binary: str) -> tuple[int, int] | None:
    """Ask a QEMU binary for its version; None when it is missing or says nothing useful."""
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_qemu_version(out.stdout)


def detect_host() -> HostInfo:
    """Describe the machine we are running on."""
    arch = _host_arch()
    from vm_backend.machine.qemu_lookup import find_program  # imports this module

    found = find_program(arch.qemu_system)
    version = (qemu_version(str(found)) if found else None) or (7, 2)
    return HostInfo(
        os=_host_os(),
        arch=arch,
        cpus=os.cpu_count() or 1,
        memory_mib=psutil.virtual_memory().total // (1024 * 1024),
        qemu_version=version,
    )
