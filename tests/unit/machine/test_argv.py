"""The QEMU argv builder, checked by full list equality per host (podman's style).

The expected lists are written out in full on purpose: any change to the command line
must show up here as a reviewed diff.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vm_backend.machine.argv import build_argv, qemu_escape
from vm_backend.machine.hostinfo import Arch, HostInfo, HostOS
from vm_backend.machine.image import GuestImage
from vm_backend.machine.paths import MachinePaths, pipe_stem
from vm_backend.machine.spec import Accelerator, MachineSpec, Share

LINUX_X86 = HostInfo(HostOS.LINUX, Arch.AMD64, cpus=8, memory_mib=16384, qemu_version=(7, 2))
MAC_ARM = HostInfo(HostOS.DARWIN, Arch.ARM64, cpus=10, memory_mib=32768, qemu_version=(9, 1))
MAC_X86 = HostInfo(HostOS.DARWIN, Arch.AMD64, cpus=8, memory_mib=16384, qemu_version=(9, 1))
WIN = HostInfo(HostOS.WINDOWS, Arch.AMD64, cpus=8, memory_mib=16384, qemu_version=(9, 2))
WIN11 = replace(WIN, qemu_version=(11, 0))

POSIX_PATHS = MachinePaths("dev", Path("/h/machines/dev"), Path("/h/machines/dev/run"))
WIN_PATHS = MachinePaths(
    "dev", Path("C:/Users/u/berth/machines/dev"), Path("C:/Users/u/berth/machines/dev/run"),
    windows_pipes=True,
)
IMAGE = GuestImage(Path("/img/vmlinuz"), Path("/img/initrd.img"), Path("/img/rootfs.squashfs"))
IMAGE_ARM = replace(IMAGE, arch=Arch.ARM64)
SPEC = MachineSpec(name="dev", cpus=2, memory_mib=2048, disk_gib=32)
SPEC_ARM = replace(SPEC, arch=Arch.ARM64)


def disks_and_devices(data_disk: str, port: int = 2222) -> list[str]:
    return [
        "-drive", "if=none,id=root,file=/img/rootfs.squashfs,format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=root",
        "-drive", f"if=none,id=data,file={data_disk},format=qcow2,cache=writeback,"
        "discard=unmap,detect-zeroes=unmap,werror=enospc,rerror=report",
        "-device", "virtio-blk-pci,drive=data",
        "-netdev", f"user,id=net0,ipv6=off,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        "-device", "virtio-balloon-pci,free-page-reporting=on",
    ]


def unix_channels(run: str) -> list[str]:
    return [
        "-chardev", f"socket,id=qmp,path={run}/qmp.sock,server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=console,path={run}/console.sock,server=on,wait=off",
        "-serial", "chardev:console",
    ]


def fw_cfg(state: str) -> list[str]:
    return [
        "-fw_cfg", "name=opt/berth/hostname,string=berth-dev",
        "-fw_cfg", f"name=opt/berth/ssh_host_ed25519_key,file={state}/ssh_host_ed25519_key",
        "-fw_cfg", f"name=opt/berth/authorized_keys,file={state}/authorized_keys",
    ]


def head(binary: str) -> list[str]:
    return [binary, "-name", "berth-dev", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-S"]


def test_linux_kvm_amd64() -> None:
    argv = build_argv(SPEC, LINUX_X86, POSIX_PATHS, IMAGE, accel=Accelerator.KVM, ssh_port=2222)
    assert argv == [
        *head("qemu-system-x86_64"),
        "-machine", "q35",
        "-accel", "kvm",
        "-cpu", "host",
        "-smp", "2",
        "-m", "2048M",
        "-kernel", "/img/vmlinuz",
        "-initrd", "/img/initrd.img",
        "-append", "console=ttyS0 panic=-1",
        *disks_and_devices("/h/machines/dev/data.qcow2"),
        *unix_channels("/h/machines/dev/run"),
        *fw_cfg("/h/machines/dev"),
        "-pidfile", "/h/machines/dev/run/qemu.pid",
    ]


def test_linux_tcg_amd64() -> None:
    argv = build_argv(SPEC, LINUX_X86, POSIX_PATHS, IMAGE, accel=Accelerator.TCG, ssh_port=2222)
    assert argv == [
        *head("qemu-system-x86_64"),
        "-machine", "q35,vmport=off",
        "-accel", "tcg,thread=multi,tb-size=256",
        "-cpu", "max",
        "-smp", "2",
        "-m", "2048M",
        "-kernel", "/img/vmlinuz",
        "-initrd", "/img/initrd.img",
        "-append", "console=ttyS0 panic=-1",
        *disks_and_devices("/h/machines/dev/data.qcow2"),
        *unix_channels("/h/machines/dev/run"),
        *fw_cfg("/h/machines/dev"),
        "-pidfile", "/h/machines/dev/run/qemu.pid",
    ]


def test_linux_tcg_arm64_guest_on_x86_host() -> None:
    argv = build_argv(SPEC_ARM, LINUX_X86, POSIX_PATHS, IMAGE_ARM, accel=Accelerator.TCG,
                      ssh_port=2222)
    assert argv == [
        *head("qemu-system-aarch64"),
        "-machine", "virt,highmem=on",
        "-accel", "tcg,thread=multi,tb-size=256",
        "-cpu", "max,pauth-impdef=on",
        "-smp", "2",
        "-m", "2048M",
        "-kernel", "/img/vmlinuz",
        "-initrd", "/img/initrd.img",
        "-append", "console=ttyAMA0 panic=-1",
        *disks_and_devices("/h/machines/dev/data.qcow2"),
        *unix_channels("/h/machines/dev/run"),
        *fw_cfg("/h/machines/dev"),
        "-pidfile", "/h/machines/dev/run/qemu.pid",
    ]


def test_macos_arm64_hvf_with_share() -> None:
    spec = replace(SPEC_ARM, cpus=10, shares=(Share("/Users/u", "home"),))
    argv = build_argv(spec, MAC_ARM, POSIX_PATHS, IMAGE_ARM, accel=Accelerator.HVF,
                      ssh_port=2222)
    assert argv == [
        *head("qemu-system-aarch64"),
        "-machine", "virt,highmem=on,gic-version=3",
        "-accel", "hvf",
        "-cpu", "host",
        "-smp", "10",
        "-m", "2048M",
        "-kernel", "/img/vmlinuz",
        "-initrd", "/img/initrd.img",
        "-append", "console=ttyAMA0 panic=-1",
        *disks_and_devices("/h/machines/dev/data.qcow2"),
        *unix_channels("/h/machines/dev/run"),
        *fw_cfg("/h/machines/dev"),
        "-virtfs", "local,id=fs0,path=/Users/u,mount_tag=home,security_model=none",
        "-fw_cfg", "name=opt/berth/shares,string=home\trw\t/Users/u\n",
        "-pidfile", "/h/machines/dev/run/qemu.pid",
    ]


def test_macos_x86_64_hvf() -> None:
    argv = build_argv(SPEC, MAC_X86, POSIX_PATHS, IMAGE, accel=Accelerator.HVF, ssh_port=2222)
    assert argv == [
        *head("qemu-system-x86_64"),
        "-machine", "q35",
        "-accel", "hvf",
        "-cpu", "host,-pdpe1gb,-avx512vl",
        "-smp", "2",
        "-m", "2048M",
        "-kernel", "/img/vmlinuz",
        "-initrd", "/img/initrd.img",
        "-append", "console=ttyS0 panic=-1",
        *disks_and_devices("/h/machines/dev/data.qcow2"),
        *unix_channels("/h/machines/dev/run"),
        *fw_cfg("/h/machines/dev"),
        "-pidfile", "/h/machines/dev/run/qemu.pid",
    ]


def test_windows_whpx_named_pipes_and_no_virtfs() -> None:
    spec = replace(SPEC, shares=(Share("C:/Users/u", "home"),))
    argv = build_argv(spec, WIN, WIN_PATHS, IMAGE, accel=Accelerator.WHPX, ssh_port=2222)
    state = "C:/Users/u/berth/machines/dev"
    stem = pipe_stem(Path("C:/Users/u/berth"))  # per user and home: see test_paths_state_lock
    assert [str(a) for a in argv] == [
        *head("qemu-system-x86_64.exe"),
        "-machine", "q35",
        "-accel", "whpx,kernel-irqchip=off",
        "-cpu", "max,vmx=off,monitor=off",
        "-smp", "2",
        "-m", "2048M",
        "-kernel", "/img/vmlinuz",
        "-initrd", "/img/initrd.img",
        "-append", "console=ttyS0 panic=-1",
        *disks_and_devices(f"{state}/data.qcow2"),
        "-chardev", f"pipe,id=qmp,path={stem}-dev-qmp",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"pipe,id=console,path={stem}-dev-console",
        "-serial", "chardev:console",
        *fw_cfg(state),
        "-pidfile", f"{state}/run/qemu.pid",
    ]
    assert WIN_PATHS.qmp_address == f"\\\\.\\pipe\\{stem}-dev-qmp"


def test_linux_kvm_arm64_host() -> None:
    host = HostInfo(HostOS.LINUX, Arch.ARM64, cpus=16, memory_mib=65536)
    spec = replace(SPEC_ARM, cpus=12)
    argv = build_argv(spec, host, POSIX_PATHS, IMAGE_ARM, accel=Accelerator.KVM, ssh_port=2222)
    assert argv[:17] == [
        *head("qemu-system-aarch64"),
        "-machine", "virt,highmem=on,gic-version=max",
        "-accel", "kvm",
        "-cpu", "host",
        "-smp", "12",
    ]


def test_windows_qemu_11_keeps_the_kernel_irqchip() -> None:
    argv = build_argv(SPEC, WIN11, WIN_PATHS, IMAGE, accel=Accelerator.WHPX, ssh_port=2222)
    assert argv[argv.index("-accel") + 1] == "whpx"


def test_read_only_share_and_kernel_extras() -> None:
    spec = replace(SPEC, shares=(Share("/srv/data", "data", read_only=True),))
    image = replace(IMAGE, cmdline=("quiet", "berth.debug=1"))
    argv = build_argv(spec, LINUX_X86, POSIX_PATHS, image, accel=Accelerator.KVM, ssh_port=2222)
    assert argv[argv.index("-virtfs") + 1] == (
        "local,id=fs0,path=/srv/data,mount_tag=data,security_model=none,readonly=on"
    )
    assert argv[argv.index("-append") + 1] == "console=ttyS0 panic=-1 quiet berth.debug=1"


def test_commas_in_paths_cannot_inject_options() -> None:
    paths = MachinePaths("dev", Path("/h,x=y/dev"), Path("/h,x=y/dev/run"))
    spec = replace(SPEC, shares=(Share("/a,readonly=off", "s"),))
    argv = build_argv(spec, LINUX_X86, paths, IMAGE, accel=Accelerator.KVM, ssh_port=2222)
    joined = "\n".join(argv)
    assert "file=/h,,x=y/dev/data.qcow2," in joined
    assert "path=/h,,x=y/dev/run/qmp.sock," in joined
    assert "path=/a,,readonly=off," in joined
    assert qemu_escape("a,b,,c") == "a,,b,,,,c"


def test_auto_accelerator_is_refused() -> None:
    with pytest.raises(ValueError, match="resolved"):
        build_argv(SPEC, LINUX_X86, POSIX_PATHS, IMAGE, accel=Accelerator.AUTO, ssh_port=1)


HOSTS = st.sampled_from([LINUX_X86, MAC_ARM, MAC_X86, WIN, WIN11])


@given(
    host=HOSTS,
    arch=st.sampled_from(list(Arch)),
    accel=st.sampled_from([a for a in Accelerator if a is not Accelerator.AUTO]),
    port=st.integers(1024, 65535),
    cpus=st.integers(1, 16),
    lan=st.booleans(),
)
def test_no_listener_beyond_loopback_ssh(
    host: HostInfo, arch: Arch, accel: Accelerator, port: int, cpus: int, lan: bool
) -> None:
    spec = replace(SPEC, arch=arch, cpus=cpus, expose_ports_on_lan=lan,
                   shares=(Share("/x", "x"),))
    paths = WIN_PATHS if host.os is HostOS.WINDOWS else POSIX_PATHS
    argv = build_argv(spec, host, paths, replace(IMAGE, arch=arch), accel=accel, ssh_port=port)
    joined = " ".join(argv)
    assert "hostfwd=tcp::" not in joined and "hostfwd=udp::" not in joined
    assert joined.count("hostfwd=") == 1
    assert f"hostfwd=tcp:127.0.0.1:{port}-:22" in joined
    # No TCP/UDP/telnet/websocket chardev, monitor, gdb stub, VNC or SPICE listener.
    for banned in ("tcp:", "host=", "telnet", "websocket", "-gdb", "-s ", "-vnc", "-spice",
                   "udp:", "0.0.0.0"):
        rest = joined.replace(f"hostfwd=tcp:127.0.0.1:{port}-:22", "")
        assert banned not in rest, banned
    assert argv.count("-qmp") == 0  # QMP only through the chardev above
    assert ("-virtfs" in argv) == (host.os is not HostOS.WINDOWS)
    assert argv[-2:] == ["-pidfile", str(paths.pidfile)]


@given(
    host=st.sampled_from([LINUX_X86, MAC_ARM, MAC_X86, WIN, WIN11]),
    arch=st.sampled_from(list(Arch)),
    accel=st.sampled_from([a for a in Accelerator if a is not Accelerator.AUTO]),
)
def test_data_disk_honours_flushes_and_discards(
    host: HostInfo, arch: Arch, accel: Accelerator
) -> None:
    """fsync in the guest must reach the host disk (kill -9 safety); trims must punch holes."""
    paths = WIN_PATHS if host.os is HostOS.WINDOWS else POSIX_PATHS
    argv = build_argv(replace(SPEC, arch=arch), host, paths, replace(IMAGE, arch=arch),
                      accel=accel, ssh_port=2222)
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    data = [d for d in drives if d.startswith("if=none,id=data,")]
    assert len(data) == 1
    opts = data[0].split(",")
    assert "cache=unsafe" not in opts and "cache.no-flush=on" not in opts
    assert "cache=writeback" in opts or not any(o.startswith("cache") for o in opts)
    assert "discard=unmap" in opts
