"""Find the QEMU programs: the bundled copy first, then where each OS's installers put them.

Order, per host OS (the first folder holding an executable of that name wins):

* ``BERTH_QEMU_DIR`` (an override for tests and unusual installs);
* the bundle: ``<bundle>/qemu/bin`` and ``<bundle>/qemu`` where ``<bundle>`` is
  PyInstaller's ``sys._MEIPASS`` and the folder of the frozen executable (a macOS
  ``.app`` also looks in ``Contents/Resources/qemu/bin`` and ``Contents/MacOS``);
* macOS: Homebrew (``/opt/homebrew/bin`` on Apple Silicon, ``/usr/local/bin`` on Intel),
  MacPorts (``/opt/local/bin``), then ``PATH`` — an app started from Finder gets a bare
  ``PATH`` without Homebrew's folder, which is why those are listed explicitly;
* Windows: the QEMU installer's folder (``%ProgramFiles%\\qemu``, default
  ``C:\\Program Files\\qemu``), then ``PATH``; names end in ``.exe``;
* Linux: ``PATH``.

Nothing here runs QEMU; every host fact is a parameter so the macOS and Windows orders are
unit tested on Linux with a fake file tree.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath, PureWindowsPath

from vm_backend.errors import BerthError
from vm_backend.machine.hostinfo import Arch, HostOS

QEMU_IMG = "qemu-img"
HOMEBREW_DIRS = ("/opt/homebrew/bin", "/usr/local/bin")
MACPORTS_DIRS = ("/opt/local/bin",)
WINDOWS_DEFAULT_PROGRAM_FILES = "C:\\Program Files"
QEMU_WINDOWS_URL = "https://qemu.weilnetz.de/w64/"


class QemuMissingError(BerthError):
    """A QEMU program is not installed (or not where Berth looks)."""


def current_os() -> HostOS:
    if sys.platform == "darwin":
        return HostOS.DARWIN
    if sys.platform == "win32":
        return HostOS.WINDOWS
    return HostOS.LINUX


def program_name(name: str, host_os: HostOS) -> str:
    return f"{name}.exe" if host_os is HostOS.WINDOWS else name


def bundle_dirs(
    host_os: HostOS, meipass: str | None, executable: str | None
) -> list[PurePath]:
    """Folders inside a frozen bundle where a bundled QEMU may be."""
    cls = PureWindowsPath if host_os is HostOS.WINDOWS else PurePath
    roots: list[PurePath] = []
    if meipass:
        roots.append(cls(meipass))
    if executable:
        exe_dir = cls(executable).parent
        roots.append(exe_dir)
        if host_os is HostOS.DARWIN and exe_dir.name == "MacOS":
            roots.append(exe_dir.parent / "Resources")  # Berth.app/Contents/Resources
    out: list[PurePath] = []
    for root in roots:
        for candidate in (root / "qemu" / "bin", root / "qemu"):
            if candidate not in out:
                out.append(candidate)
    return out


def search_dirs(
    host_os: HostOS,
    env: Mapping[str, str],
    *,
    meipass: str | None = None,
    executable: str | None = None,
) -> list[PurePath]:
    """Every folder to look in, in order, for ``host_os`` (pure: no file is touched)."""
    cls = PureWindowsPath if host_os is HostOS.WINDOWS else PurePath
    out: list[PurePath] = []

    def add(path: str | PurePath) -> None:
        p = cls(path)
        if str(p) and p not in out:
            out.append(p)

    if env.get("BERTH_QEMU_DIR"):
        add(env["BERTH_QEMU_DIR"])
    for path in bundle_dirs(host_os, meipass, executable):
        add(path)
    if host_os is HostOS.DARWIN:
        for d in (*HOMEBREW_DIRS, *MACPORTS_DIRS):
            add(d)
    elif host_os is HostOS.WINDOWS:
        program_files = env.get("ProgramFiles") or env.get("PROGRAMFILES")
        add(cls(program_files or WINDOWS_DEFAULT_PROGRAM_FILES) / "qemu")
        if program_files and program_files.lower() != WINDOWS_DEFAULT_PROGRAM_FILES.lower():
            add(cls(WINDOWS_DEFAULT_PROGRAM_FILES) / "qemu")
    separator = ";" if host_os is HostOS.WINDOWS else ":"
    for entry in env.get("PATH", "").split(separator):
        if entry:
            add(entry)
    return out


def install_hint(name: str, host_os: HostOS) -> str:
    """What the user should install to get ``name``, in the words of their OS."""
    if host_os is HostOS.DARWIN:
        return (
            "Install QEMU with Homebrew: brew install qemu (or MacPorts: sudo port install "
            "qemu)."
        )
    if host_os is HostOS.WINDOWS:
        return (
            "Install QEMU: winget install SoftwareFreedomConservancy.QEMU, or the installer "
            f"from {QEMU_WINDOWS_URL} (into C:\\Program Files\\qemu)."
        )
    if name == QEMU_IMG:
        package = "qemu-utils"
    elif name == Arch.ARM64.qemu_system:
        package = "qemu-system-arm"
    else:
        package = "qemu-system-x86"
    return f"Install QEMU: sudo apt install {package} (Fedora: sudo dnf install qemu)."


def _is_executable(path: PurePath) -> bool:
    real = Path(path)
    return real.is_file() and os.access(real, os.X_OK)


def find_program(
    name: str,
    *,
    host_os: HostOS | None = None,
    env: Mapping[str, str] | None = None,
    meipass: str | None = None,
    executable: str | None = None,
    is_executable: Callable[[PurePath], bool] = _is_executable,
) -> PurePath | None:
    """The first ``name`` (``.exe`` added on Windows) in :func:`search_dirs`, or None.

    With no arguments, describes this process: its OS, ``os.environ``, and — when frozen —
    its bundle.
    """
    host_os = host_os or current_os()
    if env is None:
        env = os.environ
    if meipass is None and executable is None and getattr(sys, "frozen", False):
        meipass = getattr(sys, "_MEIPASS", None)
        executable = sys.executable
    filename = program_name(name, host_os)
    for directory in search_dirs(host_os, env, meipass=meipass, executable=executable):
        candidate = directory / filename
        if is_executable(candidate):
            return candidate
    return None


def require_program(
    name: str,
    *,
    host_os: HostOS | None = None,
    env: Mapping[str, str] | None = None,
    meipass: str | None = None,
    executable: str | None = None,
    is_executable: Callable[[PurePath], bool] = _is_executable,
) -> PurePath:
    """Like :func:`find_program`, but a missing program is a plain :class:`QemuMissingError`."""
    host_os = host_os or current_os()
    found = find_program(
        name, host_os=host_os, env=env, meipass=meipass, executable=executable,
        is_executable=is_executable,
    )
    if found is None:
        raise QemuMissingError(
            f"{program_name(name, host_os)} is not installed (Berth needs QEMU to run its "
            "helper VM).",
            install_hint(name, host_os),
        )
    return found


def qemu_system(arch: Arch, *, host_os: HostOS | None = None) -> PurePath:
    """``qemu-system-x86_64`` or ``qemu-system-aarch64`` for a guest of ``arch``."""
    return require_program(arch.qemu_system, host_os=host_os)


def qemu_img(*, host_os: HostOS | None = None) -> PurePath:
    return require_program(QEMU_IMG, host_os=host_os)
