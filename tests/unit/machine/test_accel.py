"""Accelerator choice: per host, with the host-touching parts replaced by fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm_backend.machine import accel as accel_mod
from vm_backend.machine.accel import AccelChoice, AcceleratorProbe
from vm_backend.machine.hostinfo import Arch, HostInfo, HostOS
from vm_backend.machine.spec import Accelerator

LINUX = HostInfo(HostOS.LINUX, Arch.AMD64, 4, 8192)
MAC = HostInfo(HostOS.DARWIN, Arch.ARM64, 8, 16384)
WIN = HostInfo(HostOS.WINDOWS, Arch.AMD64, 8, 16384)
KERNEL = Path("/img/vmlinuz")


class FakeProbe(AcceleratorProbe):
    def __init__(self, host: HostInfo, cache: Path, accels: frozenset[str],
                 problem: str | None = None) -> None:
        super().__init__(host, cache)
        self.accels = accels
        self.problem = problem
        self.calls = 0

    def locate_qemu(self, arch: Arch) -> str:
        return arch.qemu_system  # the lookup itself is tested in test_qemu_lookup.py

    def available_accelerators(self, qemu: str) -> frozenset[str]:
        return self.accels

    def native_problem(self, native: Accelerator, qemu: str, arch: Arch,
                       kernel: Path | None) -> str | None:
        self.calls += 1
        return self.problem


def test_tcg_requested(tmp_path: Path) -> None:
    probe = FakeProbe(LINUX, tmp_path / "c", frozenset({"kvm", "tcg"}))
    choice = probe.choose(Accelerator.TCG, Arch.AMD64, KERNEL)
    assert choice.accelerator is Accelerator.TCG and choice.slow
    assert probe.calls == 0


@pytest.mark.parametrize(
    ("host", "native"),
    [(LINUX, Accelerator.KVM), (MAC, Accelerator.HVF), (WIN, Accelerator.WHPX)],
)
def test_native_accelerator_per_host(tmp_path: Path, host: HostInfo,
                                     native: Accelerator) -> None:
    probe = FakeProbe(host, tmp_path / "c", frozenset({native.value, "tcg"}))
    choice = probe.choose(Accelerator.AUTO, host.arch, KERNEL)
    assert choice == AccelChoice(native, f"{native.value.upper()} hardware acceleration")
    assert not choice.slow


def test_foreign_arch_is_emulated(tmp_path: Path) -> None:
    probe = FakeProbe(LINUX, tmp_path / "c", frozenset({"kvm", "tcg"}))
    choice = probe.choose(Accelerator.AUTO, Arch.ARM64, KERNEL)
    assert choice.accelerator is Accelerator.TCG
    assert "arm64 guest on an amd64 host can only be emulated" in choice.reason


def test_qemu_without_the_accelerator(tmp_path: Path) -> None:
    probe = FakeProbe(MAC, tmp_path / "c", frozenset({"tcg"}))
    choice = probe.choose(Accelerator.AUTO, Arch.ARM64, KERNEL)
    assert choice.reason == (
        "HVF unusable: this QEMU was built without it — running in slow mode (TCG)"
    )


def test_broken_kvm_says_why_and_slow_mode(tmp_path: Path) -> None:
    probe = FakeProbe(LINUX, tmp_path / "c", frozenset({"kvm", "tcg"}), "KVM internal error")
    choice = probe.choose(Accelerator.AUTO, Arch.AMD64, KERNEL)
    assert choice == AccelChoice(
        Accelerator.TCG, "KVM unusable: KVM internal error — running in slow mode (TCG)"
    )
    assert choice.slow


def test_kvm_verdict_is_cached_per_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[Path] = []

    def fake_boot(qemu: str, arch: Arch, kernel: Path, timeout: float = 8.0) -> str | None:
        runs.append(kernel)
        return "KVM internal error"

    monkeypatch.setattr(accel_mod, "kvm_device_error", lambda device="/dev/kvm": None)
    monkeypatch.setattr(accel_mod, "kvm_functional_probe", fake_boot)
    monkeypatch.setattr(accel_mod, "boot_id", lambda: "boot-1")
    probe = AcceleratorProbe(LINUX, tmp_path / "cache.json")
    monkeypatch.setattr(probe, "available_accelerators", lambda q: frozenset({"kvm"}))
    first = probe.choose(Accelerator.AUTO, Arch.AMD64, KERNEL)
    second = probe.choose(Accelerator.AUTO, Arch.AMD64, KERNEL)
    assert first == second and first.accelerator is Accelerator.TCG
    assert len(runs) == 1
    monkeypatch.setattr(accel_mod, "boot_id", lambda: "boot-2")  # after a reboot: re-probe
    probe.choose(Accelerator.AUTO, Arch.AMD64, KERNEL)
    assert len(runs) == 2


def test_kvm_success_is_cached_and_runtime_failure_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel_mod, "kvm_device_error", lambda device="/dev/kvm": None)
    monkeypatch.setattr(accel_mod, "kvm_functional_probe", lambda *a, **k: None)
    probe = AcceleratorProbe(LINUX, tmp_path / "cache.json")
    monkeypatch.setattr(probe, "available_accelerators", lambda q: frozenset({"kvm"}))
    assert probe.choose(Accelerator.AUTO, Arch.AMD64, KERNEL).accelerator is Accelerator.KVM
    assert probe.cached_kvm_verdict() == ""
    probe.record_kvm_verdict("KVM internal error")
    assert probe.choose(Accelerator.AUTO, Arch.AMD64, KERNEL).reason.startswith(
        "KVM unusable: KVM internal error"
    )


def test_unopenable_dev_kvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel_mod, "kvm_device_error",
                        lambda device="/dev/kvm": "no permission to open /dev/kvm")
    probe = AcceleratorProbe(LINUX, tmp_path / "cache.json")
    monkeypatch.setattr(probe, "available_accelerators", lambda q: frozenset({"kvm"}))
    choice = probe.choose(Accelerator.AUTO, Arch.AMD64, KERNEL)
    assert choice.reason.startswith("KVM unusable: no permission to open /dev/kvm")


def test_kvm_device_error_words(tmp_path: Path) -> None:
    assert "does not exist" in (accel_mod.kvm_device_error(str(tmp_path / "nope")) or "")
    plain = tmp_path / "plain"
    plain.write_text("")
    assert accel_mod.kvm_device_error(str(plain)) is None


def test_missing_qemu_is_said_plainly(tmp_path: Path) -> None:
    probe = AcceleratorProbe(LINUX, tmp_path / "c", qemu_binary=str(tmp_path / "no-qemu"))
    with pytest.raises(accel_mod.QemuMissingError, match="not installed") as info:
        probe.choose(Accelerator.AUTO, Arch.AMD64, KERNEL)
    assert "Install QEMU" in info.value.hint
