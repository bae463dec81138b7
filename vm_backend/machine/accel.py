"""Choose how QEMU runs guest code: HVF (macOS), WHPX (Windows), KVM (Linux) or TCG.

``/dev/kvm`` opening is not proof that KVM works: nested or broken hosts open it and
then hang the guest or stop it with "KVM internal error". So on Linux the probe boots the
guest kernel for a few seconds under ``-accel kvm`` and requires the kernel's
"Linux version" banner on the serial port. The verdict is cached per boot (the kernel
module and the hypervisor cannot change without a reboot) in ``<home>/accel-probe.json``;
a KVM failure seen later at run time is written to the same cache.

Every choice carries a plain-words reason, so the UI can show "slow mode" and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from vm_backend.machine.hostinfo import Arch, HostInfo, HostOS
from vm_backend.machine.qemu_lookup import QemuMissingError, qemu_system
from vm_backend.machine.spec import Accelerator

KVM_INTERNAL_ERROR = "KVM internal error"
_BANNER = b"Linux version"


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator to use, why, and whether the UI should warn about slow mode."""

    accelerator: Accelerator
    reason: str

    @property
    def slow(self) -> bool:
        return self.accelerator is Accelerator.TCG


def boot_id() -> str:
    """Identifies the current host boot; probe verdicts are only valid within one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return f"boot-{psutil.boot_time():.0f}"


def qemu_accelerators(binary: str) -> frozenset[str]:
    """Accelerators compiled into ``binary`` (``-accel help``); empty if QEMU is missing."""
    try:
        out = subprocess.run(
            [binary, "-accel", "help"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    names = {line.strip() for line in out.stdout.splitlines()[1:]}
    return frozenset(n for n in names if n)


def macos_hv_support() -> bool:
    try:
        out = subprocess.run(
            ["sysctl", "-n", "kern.hv_support"], capture_output=True, text=True, timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "1"


def kvm_device_error(device: str = "/dev/kvm") -> str | None:
    """None if ``device`` opens read-write, else why not (in words)."""
    try:
        fd = os.open(device, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return "/dev/kvm does not exist (no virtualization support or module not loaded)"
    except PermissionError:
        return "no permission to open /dev/kvm (add yourself to the 'kvm' group)"
    except OSError as exc:
        return f"/dev/kvm cannot be opened ({exc.strerror})"
    os.close(fd)
    return None


def kvm_functional_probe(
    qemu: str, arch: Arch, kernel: Path, timeout: float = 8.0
) -> str | None:
    """Boot ``kernel`` under KVM; None if its banner appears within ``timeout``, else why not."""
    with tempfile.TemporaryDirectory(prefix="berth-kvm-probe-") as tmp:
        console = Path(tmp) / "console"
        console.touch()
        board = "q35" if arch is Arch.AMD64 else "virt,gic-version=max"
        machine = ["-machine", board]
        argv = [
            qemu, "-accel", "kvm", *machine, "-cpu", "host", "-nodefaults", "-no-user-config",
            "-display", "none", "-m", "256", "-no-reboot", "-kernel", str(kernel),
            "-append", f"console={arch.console_device} panic=-1",
            "-serial", f"file:{console}",
        ]
        errlog = Path(tmp) / "stderr"
        with errlog.open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                stderr = errlog.read_bytes()
                if KVM_INTERNAL_ERROR.encode() in stderr:
                    return KVM_INTERNAL_ERROR
                if _BANNER in console.read_bytes():
                    return None
                if proc.poll() is not None:
                    tail = stderr.decode(errors="replace").strip().splitlines()[-1:]
                    return "QEMU exited under KVM" + (f": {tail[0]}" if tail else "")
                time.sleep(0.05)
            return f"the guest made no progress under KVM in {timeout:.0f} s"
        finally:
            proc.kill()
            proc.wait()


class AcceleratorProbe:
    """Chooses an accelerator for a host; the slow KVM boot test runs once per host boot."""

    def __init__(self, host: HostInfo, cache_file: Path, qemu_binary: str | None = None) -> None:
        self.host = host
        self.cache_file = cache_file
        self.qemu_binary = qemu_binary

    def choose(self, requested: Accelerator, guest_arch: Arch, kernel: Path | None) -> AccelChoice:
        if requested is Accelerator.TCG:
            return AccelChoice(Accelerator.TCG, "TCG requested in the machine settings (slow mode)")
        if guest_arch is not self.host.arch:
            return AccelChoice(
                Accelerator.TCG,
                f"an {guest_arch.value} guest on an {self.host.arch.value} host can only be "
                "emulated — running in slow mode (TCG)",
            )
        # The bundled QEMU first, then Homebrew/MacPorts, the Windows installer's folder, PATH
        # (qemu_lookup); a missing QEMU is a QemuMissingError naming what to install.
        qemu = self.qemu_binary or self.locate_qemu(guest_arch)
        native = {
            HostOS.LINUX: Accelerator.KVM,
            HostOS.DARWIN: Accelerator.HVF,
            HostOS.WINDOWS: Accelerator.WHPX,
        }[self.host.os]
        available = self.available_accelerators(qemu)
        if not available:
            raise QemuMissingError(
                f"{qemu} is not installed or does not run.",
                "Install QEMU (Debian/Ubuntu: qemu-system-x86 or qemu-system-arm; macOS: "
                "brew install qemu; Windows: the QEMU installer) and make sure it is on PATH.",
            )
        if native.value not in available:
            return self._slow(f"{native.value.upper()} unusable: this QEMU was built without it")
        problem = self.native_problem(native, qemu, guest_arch, kernel)
        if problem is not None:
            return self._slow(f"{native.value.upper()} unusable: {problem}")
        return AccelChoice(native, f"{native.value.upper()} hardware acceleration")

    @staticmethod
    def _slow(why: str) -> AccelChoice:
        return AccelChoice(Accelerator.TCG, f"{why} — running in slow mode (TCG)")

    # The methods below touch the host; tests replace them.

    def locate_qemu(self, arch: Arch) -> str:
        return str(qemu_system(arch, host_os=self.host.os))

    def available_accelerators(self, qemu: str) -> frozenset[str]:
        return qemu_accelerators(qemu)

    def native_problem(
        self, native: Accelerator, qemu: str, arch: Arch, kernel: Path | None
    ) -> str | None:
        if native is Accelerator.HVF:
            return None if macos_hv_support() else "kern.hv_support is 0 (running inside a VM?)"
        if native is Accelerator.WHPX:
            return None  # listed by -accel help; enabling the feature is the user's side
        device_problem = kvm_device_error()
        if device_problem is not None:
            return device_problem
        cached = self.cached_kvm_verdict()
        if cached is not None:
            return cached or None
        if kernel is None:
            # Without a kernel to boot we cannot tell a working KVM from one that hangs.
            return None
        problem = kvm_functional_probe(qemu, arch, kernel)
        self.record_kvm_verdict(problem)
        return problem

    def cached_kvm_verdict(self) -> str | None:
        """'' if KVM was proven to work this boot, a reason if it failed, None if unknown."""
        try:
            data: Any = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict) or data.get("boot_id") != boot_id():
            return None
        problem = data.get("kvm_problem")
        return problem if isinstance(problem, str) else None

    def record_kvm_verdict(self, problem: str | None) -> None:
        """Remember the verdict for this boot ('' means KVM works)."""
        payload = {"boot_id": boot_id(), "kvm_problem": problem or "", "at": time.time()}
        tmp = self.cache_file.with_name(self.cache_file.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(payload), encoding="utf-8")
            os.replace(tmp, self.cache_file)
        except OSError:
            # A cache we cannot write only costs a re-probe next time.
            return


__all__ = [
    "KVM_INTERNAL_ERROR",
    "AccelChoice",
    "AcceleratorProbe",
    "QemuMissingError",
    "boot_id",
    "kvm_device_error",
    "kvm_functional_probe",
    "qemu_accelerators",
]
