"""QEMU lookup per OS, against a fake file tree under tmp_path (no macOS or Windows needed)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePath

import pytest

from vm_backend.machine import accel as accel_mod
from vm_backend.machine import qemu_lookup as ql
from vm_backend.machine.accel import AcceleratorProbe
from vm_backend.machine.hostinfo import Arch, HostInfo, HostOS
from vm_backend.machine.spec import Accelerator

FS = Callable[[PurePath], bool]


def fake_tree(tmp_path: Path, *programs: str, executable: bool = True) -> FS:
    """Create ``programs`` (absolute POSIX or Windows paths) under tmp_path; return a checker
    that answers "is this path an executable file?" inside that fake tree."""

    def local(path: PurePath) -> Path:
        parts = [p.rstrip(":\\/") for p in path.parts if p.rstrip(":\\/")]
        return tmp_path.joinpath("fs", *parts)

    for program in programs:
        cls = ql.PureWindowsPath if "\\" in program else PurePath
        target = local(cls(program))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\n")
        if executable:
            target.chmod(target.stat().st_mode | stat.S_IXUSR)

    def check(path: PurePath) -> bool:
        target = local(path)
        return target.is_file() and os.access(target, os.X_OK)

    return check


def find(name: str, host_os: HostOS, fs: FS, env: dict[str, str] | None = None,
         **kwargs: str) -> str | None:
    found = ql.find_program(name, host_os=host_os, env=env or {}, is_executable=fs, **kwargs)
    return None if found is None else str(found)


# ---- macOS -------------------------------------------------------------------------------

def test_macos_homebrew_apple_silicon_before_intel_and_macports(tmp_path: Path) -> None:
    fs = fake_tree(tmp_path, "/opt/homebrew/bin/qemu-system-aarch64",
                   "/usr/local/bin/qemu-system-aarch64", "/opt/local/bin/qemu-system-aarch64")
    assert find("qemu-system-aarch64", HostOS.DARWIN, fs) == "/opt/homebrew/bin/qemu-system-aarch64"


def test_macos_intel_homebrew_then_macports(tmp_path: Path) -> None:
    fs = fake_tree(tmp_path, "/usr/local/bin/qemu-img", "/opt/local/bin/qemu-system-x86_64")
    assert find("qemu-img", HostOS.DARWIN, fs) == "/usr/local/bin/qemu-img"
    assert find("qemu-system-x86_64", HostOS.DARWIN, fs) == "/opt/local/bin/qemu-system-x86_64"


def test_macos_finder_path_lacks_homebrew_but_we_still_find_it(tmp_path: Path) -> None:
    fs = fake_tree(tmp_path, "/opt/homebrew/bin/qemu-system-aarch64")
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}  # what an app started from Finder gets
    assert find("qemu-system-aarch64", HostOS.DARWIN, fs, env) == (
        "/opt/homebrew/bin/qemu-system-aarch64"
    )


def test_macos_app_bundle_qemu_comes_first(tmp_path: Path) -> None:
    app = "/Applications/Berth.app/Contents"
    fs = fake_tree(tmp_path, f"{app}/Resources/qemu/bin/qemu-system-aarch64",
                   "/opt/homebrew/bin/qemu-system-aarch64")
    found = find("qemu-system-aarch64", HostOS.DARWIN, fs,
                 executable=f"{app}/MacOS/berth", meipass=f"{app}/Frameworks")
    assert found == f"{app}/Resources/qemu/bin/qemu-system-aarch64"


def test_macos_order_of_folders() -> None:
    dirs = ql.search_dirs(HostOS.DARWIN, {"PATH": "/usr/bin:/opt/homebrew/bin"},
                          meipass="/B/Contents/Frameworks", executable="/B/Contents/MacOS/berth")
    assert [str(d) for d in dirs] == [
        "/B/Contents/Frameworks/qemu/bin", "/B/Contents/Frameworks/qemu",
        "/B/Contents/MacOS/qemu/bin", "/B/Contents/MacOS/qemu",
        "/B/Contents/Resources/qemu/bin", "/B/Contents/Resources/qemu",
        "/opt/homebrew/bin", "/usr/local/bin", "/opt/local/bin", "/usr/bin",
    ]


# ---- Windows -----------------------------------------------------------------------------

def test_windows_installer_folder_and_exe_suffix(tmp_path: Path) -> None:
    fs = fake_tree(tmp_path, "C:\\Program Files\\qemu\\qemu-system-x86_64.exe",
                   "C:\\Program Files\\qemu\\qemu-img.exe")
    assert find("qemu-system-x86_64", HostOS.WINDOWS, fs) == (
        "C:\\Program Files\\qemu\\qemu-system-x86_64.exe"
    )
    assert find("qemu-img", HostOS.WINDOWS, fs) == "C:\\Program Files\\qemu\\qemu-img.exe"


def test_windows_program_files_from_environment_then_default(tmp_path: Path) -> None:
    env = {"ProgramFiles": "D:\\Apps", "PATH": "C:\\Windows;C:\\tools\\qemu"}
    dirs = [str(d) for d in ql.search_dirs(HostOS.WINDOWS, env)]
    assert dirs == ["D:\\Apps\\qemu", "C:\\Program Files\\qemu", "C:\\Windows", "C:\\tools\\qemu"]
    fs = fake_tree(tmp_path, "C:\\tools\\qemu\\qemu-system-aarch64.exe")
    assert find("qemu-system-aarch64", HostOS.WINDOWS, fs, env) == (
        "C:\\tools\\qemu\\qemu-system-aarch64.exe"
    )


def test_windows_bundled_qemu_next_to_berth_exe_wins(tmp_path: Path) -> None:
    fs = fake_tree(tmp_path, "C:\\Program Files\\Berth\\qemu\\qemu-system-x86_64.exe",
                   "C:\\Program Files\\qemu\\qemu-system-x86_64.exe")
    found = find("qemu-system-x86_64", HostOS.WINDOWS, fs,
                 executable="C:\\Program Files\\Berth\\berth.exe")
    assert found == "C:\\Program Files\\Berth\\qemu\\qemu-system-x86_64.exe"


# ---- Linux -------------------------------------------------------------------------------

def test_linux_uses_path_in_order_and_skips_non_executables(tmp_path: Path) -> None:
    fs = fake_tree(tmp_path, "/usr/local/bin/qemu-system-x86_64")
    fake_tree(tmp_path, "/home/u/bin/qemu-system-x86_64", executable=False)
    env = {"PATH": "/home/u/bin:/usr/local/bin:/usr/bin"}
    assert find("qemu-system-x86_64", HostOS.LINUX, fs, env) == (
        "/usr/local/bin/qemu-system-x86_64"
    )
    # Linux does not look in Homebrew's folders.
    brew = fake_tree(tmp_path / "b", "/opt/homebrew/bin/qemu-img")
    assert find("qemu-img", HostOS.LINUX, brew, {"PATH": "/usr/bin"}) is None


def test_override_folder_comes_first(tmp_path: Path) -> None:
    fs = fake_tree(tmp_path, "/custom/qemu-img", "/usr/bin/qemu-img")
    env = {"BERTH_QEMU_DIR": "/custom", "PATH": "/usr/bin"}
    assert find("qemu-img", HostOS.LINUX, fs, env) == "/custom/qemu-img"


def test_real_lookup_finds_installed_qemu_on_this_machine() -> None:
    # The default arguments describe this process; CI installs qemu (dev-setup.sh).
    found = ql.find_program("qemu-img")
    if found is None:
        pytest.skip("qemu-img is not installed here")
    assert Path(found).is_file() and os.access(found, os.X_OK)


# ---- the first-run message ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("host_os", "program", "words"),
    [
        (HostOS.DARWIN, "qemu-system-aarch64", "brew install qemu"),
        (HostOS.WINDOWS, "qemu-system-x86_64",
         "winget install SoftwareFreedomConservancy.QEMU"),
        (HostOS.LINUX, "qemu-system-x86_64", "sudo apt install qemu-system-x86"),
        (HostOS.LINUX, "qemu-system-aarch64", "sudo apt install qemu-system-arm"),
        (HostOS.LINUX, "qemu-img", "sudo apt install qemu-utils"),
    ],
)
def test_missing_qemu_names_what_to_install(tmp_path: Path, host_os: HostOS, program: str,
                                            words: str) -> None:
    empty = fake_tree(tmp_path)
    with pytest.raises(ql.QemuMissingError) as info:
        ql.require_program(program, host_os=host_os, env={"PATH": "/usr/bin"},
                           is_executable=empty)
    assert info.value.message.startswith(ql.program_name(program, host_os) + " is not installed")
    assert words in info.value.hint
    if host_os is HostOS.WINDOWS:
        assert ql.QEMU_WINDOWS_URL in info.value.hint


def test_probe_without_qemu_raises_the_lookup_message(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """AcceleratorProbe.choose goes through the lookup; an empty PATH means a plain error."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("BERTH_QEMU_DIR", raising=False)
    host = HostInfo(HostOS.LINUX, Arch.AMD64, 2, 4096)
    probe = AcceleratorProbe(host, tmp_path / "cache.json")
    with pytest.raises(accel_mod.QemuMissingError, match="qemu-system-x86_64 is not installed"):
        probe.choose(Accelerator.AUTO, Arch.AMD64, None)
