"""The QEMU command line, built as a list by a pure function (no I/O, no environment).

Every host is described by a :class:`HostInfo`, so the macOS and Windows lines are unit
tested on Linux by list equality (podman's ``pkg/machine/qemu/command`` test style).

Security rules enforced here, and checked by the tests:

* QMP and the console are unix sockets in the 0700 run dir (on Windows named pipes,
  named per user and home, which berthd claims as QEMU starts: ``qemu_pipes.py``);
  there is no TCP listener except the SSH forward, which binds 127.0.0.1 only. An empty
  hostfwd address would bind every interface, and with user networking every container
  can reach the host's loopback anyway, so QMP on TCP would be host code execution.
* Values inside ``-opt key=value,...`` strings are comma-escaped (``,`` → ``,,``), so a
  path with a comma cannot inject options. Nothing here goes through a shell.
"""

from __future__ import annotations

from vm_backend.machine.hostinfo import Arch, HostInfo, HostOS
from vm_backend.machine.image import GuestImage
from vm_backend.machine.paths import PIPE_PREFIX, MachinePaths
from vm_backend.machine.shares import ShareTransport, fw_cfg_shares, resolve_transport
from vm_backend.machine.spec import Accelerator, MachineSpec

FW_CFG_HOSTNAME = "opt/berth/hostname"
FW_CFG_HOST_KEY = "opt/berth/ssh_host_ed25519_key"
FW_CFG_AUTHORIZED_KEYS = "opt/berth/authorized_keys"
FW_CFG_SHARES = "opt/berth/shares"
NETDEV_ID = "net0"
# The data disk (docs/machine.md, "Disk"):
# * cache=writeback (QEMU's default, pinned): the guest's flushes reach the host disk, so
#   what the guest fsynced survives a kill -9 of QEMU (tests/vm/test_machine_faults.py);
#   cache=unsafe would drop flushes.
# * discard=unmap: fstrim in the guest punches holes in the qcow2 (berth machine reclaim);
#   detect-zeroes=unmap does the same for blocks the guest overwrites with zeros.
# * werror=enospc: a full host disk pauses the VM (BLOCK_IO_ERROR) instead of failing
#   writes in the guest; rerror=report passes read errors to the guest.
TCG_TB_SIZE_MIB = 256
DATA_DISK_OPTIONS = (
    "cache=writeback,discard=unmap,detect-zeroes=unmap,werror=enospc,rerror=report"
)


def qemu_escape(value: str) -> str:
    """Escape a value for QEMU's ``key=value,...`` option syntax."""
    return value.replace(",", ",,")


def qemu_binary(arch: Arch, host: HostInfo) -> str:
    name = arch.qemu_system
    return f"{name}.exe" if host.os is HostOS.WINDOWS else name


def _machine_args(spec: MachineSpec, host: HostInfo, accel: Accelerator) -> list[str]:
    if spec.arch is Arch.ARM64:
        # highmem lets the guest use RAM above 4 GiB (needed for >3 GiB on HVF); GICv2 only
        # addresses 8 CPUs, so ask for v3 beyond that (UTM does the same).
        machine = "virt,highmem=on"
        if accel is Accelerator.KVM:
            # Many arm64 hosts have a GICv3 without GICv2 emulation: let KVM pick
            # (podman's options_linux_arm64.go does the same).
            machine += ",gic-version=max"
        elif spec.cpus > 8:
            machine += ",gic-version=3"
        return ["-machine", machine]
    machine = "q35"
    if accel is Accelerator.TCG:
        # No vmport, and no S3/S4: nothing in our guest suspends, and under TCG the
        # fewer devices to emulate the better (Lima's TCG branch).
        machine += ",vmport=off"
    return ["-machine", machine]


def _accel_args(host: HostInfo, accel: Accelerator) -> list[str]:
    if accel is Accelerator.TCG:
        # tb-size: QEMU 5.0+ reserves a 1 GiB translation cache by default and a Docker
        # guest fills most of it while booting (dockerd and containerd are large Go
        # binaries), all of it resident. 256 MiB halves QEMU's idle RSS (1594 -> 787 MiB
        # for a 2 GiB guest) with no measurable boot-time cost (bench/bench_vm.py
        # --tb-size 0 --tb-size 256; docs/machine.md, "Disk and memory").
        return ["-accel", f"tcg,thread=multi,tb-size={TCG_TB_SIZE_MIB}"]
    if accel is Accelerator.WHPX and host.qemu_version < (11, 0):
        # Before QEMU 11 the in-kernel irqchip under WHPX hangs Linux guests
        # ("whpx: injection failed, MSI", lima#931).
        return ["-accel", "whpx,kernel-irqchip=off"]
    return ["-accel", accel.value]


def _cpu_model(spec: MachineSpec, host: HostInfo, accel: Accelerator) -> str:
    if accel is Accelerator.TCG:
        # pauth-impdef: architected pointer auth costs up to half of TCG time on arm64.
        return "max,pauth-impdef=on" if spec.arch is Arch.ARM64 else "max"
    if accel is Accelerator.WHPX:
        # WHPX has no -cpu host; 'max' minus vmx/monitor keeps x86-64-v2 (qemu64 lacks it,
        # breaking RHEL9-based images — podman#15456).
        return "max,vmx=off,monitor=off"
    if accel is Accelerator.HVF and spec.arch is Arch.AMD64 and host.os is HostOS.DARWIN:
        # Intel Macs: 1 GiB pages and AVX-512 trap under HVF (lima#1485, lima qemu.go).
        return "host,-pdpe1gb,-avx512vl"
    return "host"


def _chardev(chardev_id: str, address: str, windows: bool) -> str:
    if windows:
        # QEMU turns path=NAME into \\.\pipe\NAME itself.
        return f"pipe,id={chardev_id},path={qemu_escape(address.removeprefix(PIPE_PREFIX))}"
    return f"socket,id={chardev_id},path={qemu_escape(address)},server=on,wait=off"


def kernel_cmdline(spec: MachineSpec, image: GuestImage) -> str:
    # panic=-1 reboots at once on a kernel panic; with -no-reboot that becomes a QEMU exit
    # we detect, instead of a VM hung at a panic message.
    return " ".join([f"console={spec.arch.console_device}", "panic=-1", *image.cmdline])


def build_argv(
    spec: MachineSpec,
    host: HostInfo,
    paths: MachinePaths,
    image: GuestImage,
    *,
    accel: Accelerator,
    ssh_port: int,
) -> list[str]:
    """The full QEMU argv for ``spec`` on ``host`` under the resolved ``accel``.

    ``accel`` must be resolved (not AUTO); ``ssh_port`` is the host port actually chosen.
    The VM starts paused (``-S``): the caller attaches the console and QMP first and then
    sends ``cont``, so no early console byte is lost.
    """
    if accel is Accelerator.AUTO:
        raise ValueError("build_argv needs a resolved accelerator, not AUTO")
    windows = host.os is HostOS.WINDOWS
    argv: list[str] = [
        qemu_binary(spec.arch, host),
        "-name", f"berth-{spec.name}",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-reboot",
        "-S",
        *_machine_args(spec, host, accel),
        *_accel_args(host, accel),
        "-cpu", _cpu_model(spec, host, accel),
        "-smp", str(spec.cpus),
        "-m", f"{spec.memory_mib}M",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", kernel_cmdline(spec, image),
        "-drive", f"if=none,id=root,file={qemu_escape(str(image.rootfs))},format=raw,"
        "readonly=on",
        "-device", "virtio-blk-pci,drive=root",
        "-drive", f"if=none,id=data,file={qemu_escape(str(paths.data_disk))},format=qcow2,"
        f"{DATA_DISK_OPTIONS}",
        "-device", "virtio-blk-pci,drive=data",
        "-netdev", f"user,id={NETDEV_ID},ipv6=off,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", f"virtio-net-pci,netdev={NETDEV_ID}",
        "-device", "virtio-rng-pci",
        "-device", "virtio-balloon-pci,free-page-reporting=on",
        "-chardev", _chardev("qmp", paths.qmp_address, windows),
        "-mon", "chardev=qmp,mode=control",
        "-chardev", _chardev("console", paths.console_address, windows),
        "-serial", "chardev:console",
        "-fw_cfg", f"name={FW_CFG_HOSTNAME},string={qemu_escape(_hostname(spec))}",
        "-fw_cfg", f"name={FW_CFG_HOST_KEY},file={qemu_escape(str(paths.ssh_host_key))}",
        "-fw_cfg",
        f"name={FW_CFG_AUTHORIZED_KEYS},file={qemu_escape(str(paths.authorized_keys))}",
    ]
    # 9p is not built into QEMU for Windows: shares there (and shares asking for "sftp")
    # use reverse sshfs once SSH is up (shares.py); the guest mounts the 9p ones at boot
    # from the list in fw_cfg.
    for index, share in enumerate(spec.shares):
        if windows or resolve_transport(share, host.os) is not ShareTransport.NINEP:
            continue
        opts = (
            f"local,id=fs{index},path={qemu_escape(share.host_path)},"
            f"mount_tag={qemu_escape(share.tag)},security_model=none"
        )
        if share.read_only:
            opts += ",readonly=on"
        argv += ["-virtfs", opts]
    shares_list = fw_cfg_shares(spec, host.os)
    if shares_list:
        argv += ["-fw_cfg", f"name={FW_CFG_SHARES},string={qemu_escape(shares_list)}"]
    argv += ["-pidfile", str(paths.pidfile)]
    return argv


def _hostname(spec: MachineSpec) -> str:
    return f"berth-{spec.name}"
