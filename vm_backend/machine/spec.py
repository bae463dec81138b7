"""The user-facing description of a helper VM (:class:`MachineSpec`), validated, on disk.

A spec says what the user asked for; what actually ran (the accelerator chosen, the SSH
port picked) is recorded separately in the run record (see ``state.py``).
"""

from __future__ import annotations

import enum
import json
import ntpath
import os
import posixpath
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vm_backend.errors import InputError
from vm_backend.machine.hostinfo import Arch, HostInfo, HostOS, current_host_os

MIN_MEMORY_MIB = 512
MIN_DISK_GIB = 4
MAX_DISK_GIB = 4096
DEFAULT_SSH_PORT = 0  # 0: pick a free port at start

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,31}$")


class Accelerator(enum.Enum):
    """How QEMU executes guest code. ``AUTO`` asks the probe to choose."""

    AUTO = "auto"
    KVM = "kvm"
    HVF = "hvf"
    WHPX = "whpx"
    TCG = "tcg"


SHARE_TRANSPORTS = ("auto", "9p", "sftp")

# Guest paths the VM needs for itself; the guest init (vm_backend/guest/init/shares)
# refuses the same list. A share appears in the guest at its host path (guest_path_for).
_RESERVED_EXACT = frozenset({"/", "/tmp", "/var", "/var/lib", "/mnt", "/media"})
_RESERVED_TREES = (
    "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/usr", "/etc", "/boot", "/proc", "/sys",
    "/dev", "/run", "/root", "/var/lib/docker", "/var/lib/containerd", "/var/lib/berth",
    "/var/log", "/var/run", "/mnt/data", "/media/root-ro", "/media/root-rw",
)
DEFAULT_SHARE_TAG = "home"


def guest_path_for(host_path: str, host_os: HostOS) -> str:
    """The path a host folder gets in the guest: the same path, or ``/c/Users/x`` on Windows.

    On Windows the drive letter becomes the first component (the MSYS / Git Bash spelling,
    which Docker's CLI accepts in ``-v /c/Users/x:/data``).
    """
    if host_os is HostOS.WINDOWS:
        drive, rest = ntpath.splitdrive(host_path)
        parts = [p for p in rest.replace("\\", "/").split("/") if p]
        letter = drive.rstrip(":").lower()
        return posixpath.normpath("/" + "/".join([letter, *parts] if letter else parts))
    return posixpath.normpath("/" + host_path.lstrip("/"))


def reserved_guest_path(path: str) -> bool:
    """True when mounting at ``path`` would hide something the guest itself needs."""
    if path in _RESERVED_EXACT:
        return True
    return any(path == tree or path.startswith(tree + "/") for tree in _RESERVED_TREES)


def default_shares(
    home: Path | None = None, host_os: HostOS | None = None
) -> tuple[Share, ...]:
    """A new machine shares the user's home folder at the same path (docs/shares.md), so
    ``docker run -v "$PWD":/src`` works from anywhere below it; none when the home folder
    is missing or is a folder the guest needs itself (root's /root)."""
    home = Path.home() if home is None else home
    if not home.is_absolute() or not home.is_dir():
        return ()
    if reserved_guest_path(guest_path_for(str(home), host_os or current_host_os())):
        return ()
    return (Share(host_path=str(home), tag=DEFAULT_SHARE_TAG),)


@dataclass(frozen=True)
class Share:
    """A host folder offered to the guest at the same path (docs/shares.md).

    ``transport``: ``auto`` is 9p where the host's QEMU has it (macOS, Linux) and reverse
    SFTP elsewhere (Windows); ``9p`` or ``sftp`` force one.
    """

    host_path: str
    tag: str
    read_only: bool = False
    transport: str = "auto"


@dataclass(frozen=True)
class MachineSpec:
    """What the user asked for. Build with keyword arguments; check with :func:`validate`."""

    name: str = "default"
    arch: Arch = Arch.AMD64
    cpus: int = 2
    memory_mib: int = 2048
    disk_gib: int = 32
    accelerator: Accelerator = Accelerator.AUTO
    ssh_port: int = DEFAULT_SSH_PORT
    shares: tuple[Share, ...] = field(default_factory=tuple)
    expose_ports_on_lan: bool = False


def validate(spec: MachineSpec, host: HostInfo, previous: MachineSpec | None = None) -> None:
    """Raise :class:`InputError` naming the first field that cannot work on ``host``.

    ``previous`` is the spec currently on disk: the data disk can grow but never shrink
    (shrinking a qcow2 under a live filesystem destroys data).
    """
    if not _NAME_RE.match(spec.name):
        raise InputError(
            f"Machine name {spec.name!r} is not allowed.",
            "Use 1 to 31 lowercase letters, digits or dashes, starting with a letter or digit.",
        )
    if not 1 <= spec.cpus <= host.cpus:
        raise InputError(
            f"{spec.cpus} CPUs requested, but this computer has {host.cpus}.",
            f"Choose between 1 and {host.cpus} CPUs.",
        )
    if not MIN_MEMORY_MIB <= spec.memory_mib <= host.memory_mib:
        raise InputError(
            f"{spec.memory_mib} MiB of memory requested; the VM needs at least {MIN_MEMORY_MIB} "
            f"MiB and this computer has {host.memory_mib} MiB.",
            f"Choose between {MIN_MEMORY_MIB} and {host.memory_mib} MiB.",
        )
    if not MIN_DISK_GIB <= spec.disk_gib <= MAX_DISK_GIB:
        raise InputError(
            f"A {spec.disk_gib} GiB data disk is outside the supported range.",
            f"Choose between {MIN_DISK_GIB} and {MAX_DISK_GIB} GiB.",
        )
    if previous is not None and spec.disk_gib < previous.disk_gib:
        raise InputError(
            f"The data disk cannot shrink from {previous.disk_gib} GiB to {spec.disk_gib} GiB.",
            "Disks can only grow. To start smaller, delete the machine and create it again.",
        )
    if previous is not None and spec.arch is not previous.arch:
        raise InputError(
            "The architecture of an existing machine cannot change.",
            "Create a new machine for the other architecture.",
        )
    if not (spec.ssh_port == 0 or 1024 <= spec.ssh_port <= 65535):
        raise InputError(
            f"SSH port {spec.ssh_port} is not usable.",
            "Use 0 (pick automatically) or a port between 1024 and 65535.",
        )
    _validate_accelerator(spec, host)
    _validate_shares(spec, host)


def _validate_accelerator(spec: MachineSpec, host: HostInfo) -> None:
    allowed = {
        "linux": {Accelerator.KVM},
        "darwin": {Accelerator.HVF},
        "windows": {Accelerator.WHPX},
    }[host.os.value] | {Accelerator.AUTO, Accelerator.TCG}
    if spec.accelerator not in allowed:
        raise InputError(
            f"The {spec.accelerator.value} accelerator does not exist on {host.os.value}.",
            "Use 'auto' to let Berth choose.",
        )
    if spec.arch is not host.arch and spec.accelerator not in (Accelerator.AUTO, Accelerator.TCG):
        raise InputError(
            f"An {spec.arch.value} VM on an {host.arch.value} computer can only be emulated.",
            "Use accelerator 'auto' or 'tcg' (slow).",
        )


def _validate_shares(spec: MachineSpec, host: HostInfo) -> None:
    tags: set[str] = set()
    for share in spec.shares:
        if not _TAG_RE.match(share.tag):
            raise InputError(
                f"Share tag {share.tag!r} is not allowed.",
                "Use up to 31 letters, digits, dashes or underscores.",
            )
        if share.tag in tags:
            raise InputError(f"Share tag {share.tag!r} is used twice.", "Give each share a tag.")
        tags.add(share.tag)
        if share.transport not in SHARE_TRANSPORTS:
            raise InputError(
                f"Share transport {share.transport!r} is not known.",
                "Use 'auto', '9p' or 'sftp'.",
            )
        if share.transport == "9p" and host.os.value == "windows":
            raise InputError(
                "QEMU for Windows has no 9p file sharing.",
                "Use transport 'auto' or 'sftp' for shares on Windows.",
            )
        if any(c in share.host_path for c in "\t\n\r\0"):
            raise InputError(
                f"Shared folder {share.host_path!r} has a tab or line break in its path.",
                "Rename the folder or share its parent.",
            )
        if not os.path.isabs(share.host_path):
            raise InputError(
                f"Shared folder {share.host_path!r} is not an absolute path.",
                "Choose the folder with its full path.",
            )
        if not os.path.isdir(share.host_path):
            raise InputError(
                f"Shared folder {share.host_path!r} does not exist.",
                "Create it or remove it from the shares.",
            )
        if reserved_guest_path(guest_path_for(share.host_path, host.os)):
            raise InputError(
                f"Shared folder {share.host_path!r} cannot be shared: the VM needs"
                f" {guest_path_for(share.host_path, host.os)} for itself, and a share"
                " appears in the VM at the same path.",
                "Share a folder below your home folder instead.",
            )


def spec_to_json(spec: MachineSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["arch"] = spec.arch.value
    data["accelerator"] = spec.accelerator.value
    data["shares"] = [asdict(s) for s in spec.shares]
    data["version"] = 1
    return data


def spec_from_json(data: dict[str, Any]) -> MachineSpec:
    """Rebuild a spec from its JSON form; unknown keys are ignored for forward compatibility."""
    try:
        return MachineSpec(
            name=str(data["name"]),
            arch=Arch(data.get("arch", "amd64")),
            cpus=int(data.get("cpus", 2)),
            memory_mib=int(data.get("memory_mib", 2048)),
            disk_gib=int(data.get("disk_gib", 32)),
            accelerator=Accelerator(data.get("accelerator", "auto")),
            ssh_port=int(data.get("ssh_port", DEFAULT_SSH_PORT)),
            shares=tuple(
                Share(
                    str(s["host_path"]),
                    str(s["tag"]),
                    bool(s.get("read_only", False)),
                    str(s.get("transport", "auto")),
                )
                for s in data.get("shares", [])
            ),
            expose_ports_on_lan=bool(data.get("expose_ports_on_lan", False)),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(
            f"The machine settings file is damaged ({exc}).",
            "Fix or delete machine.json in the machine's folder.",
        ) from exc


def save_spec(spec: MachineSpec, path: Path) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a spec."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(spec_to_json(spec), fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_spec(path: Path) -> MachineSpec:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(
            f"No machine settings at {path}.", "Create the machine first."
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"The machine settings file {path} is not valid JSON.",
            "Fix or delete it and create the machine again.",
        ) from exc
    if not isinstance(data, dict):
        raise InputError(f"The machine settings file {path} is damaged.", "Delete it.")
    return spec_from_json(data)
