"""Host folders shared with the guest at the same path (docs/shares.md).

Two transports:

* **9p** (macOS and Linux hosts): QEMU's ``-virtfs`` device (see ``argv.py``); the guest's
  init mounts each share before the engine starts, from the list this module writes into
  fw_cfg (:func:`fw_cfg_shares`). berthd reads the guest's result
  (``/run/berth/shares.status``) once SSH is up.
* **Reverse SFTP** (Windows hosts, where QEMU has no 9p, or ``transport: "sftp"``): berthd
  execs ``sshfs -o passive`` in the guest on an SSH session channel and serves that
  channel with paramiko's :class:`~paramiko.SFTPServer`, driven by
  :class:`ConfinedSFTP`, an SFTP backend confined to the share's folder that refuses
  every write on a read-only share.

The pure part (:func:`plan_shares`, :func:`guest_path_for`, :func:`fw_cfg_shares`) has no
I/O, so ``argv.py`` stays a pure function.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import posixpath
import stat as stat_mod
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import paramiko
from paramiko import SFTPAttributes, SFTPHandle, SFTPServer, SFTPServerInterface
from paramiko.sftp import SFTP_OK, SFTP_OP_UNSUPPORTED, SFTP_PERMISSION_DENIED

from vm_backend.errors import BerthError
from vm_backend.machine.hostinfo import HostOS
from vm_backend.machine.spec import guest_path_for, reserved_guest_path
from vm_backend.machine.ssh import SSHState

if TYPE_CHECKING:
    from paramiko import Channel

    from vm_backend.machine.spec import MachineSpec, Share
    from vm_backend.machine.ssh import GuestSSH

log = logging.getLogger(__name__)

#: Where the guest init writes the result of each 9p mount (TAG, ok|failed, detail).
GUEST_STATUS_FILE = "/run/berth/shares.status"
#: How long an sshfs mount may take to appear (TCG under load is slow to start sshfs).
#: After its channel closes an SFTP share is mounted again, up to this many times in a
#: row for mounts that lived less than REMOUNT_RESET_S each.
REMOUNT_MAX_TRIES = 5
REMOUNT_RESET_S = 60.0
SFTP_MOUNT_TIMEOUT_S = 60.0

class ShareTransport(enum.Enum):
    NINEP = "9p"
    SFTP = "sftp"


class ShareState(enum.Enum):
    PENDING = "pending"
    MOUNTED = "mounted"
    FAILED = "failed"
    STOPPED = "stopped"


class ShareError(BerthError):
    """A share could not be mounted or served."""


@dataclass(frozen=True)
class PlannedShare:
    """A share with its transport resolved and its guest path decided."""

    tag: str
    host_path: str
    guest_path: str
    read_only: bool
    transport: ShareTransport
    problem: str = ""  # non-empty: this share cannot be mounted (why)


@dataclass(frozen=True)
class ShareStatus:
    """One row of ``status_json()["shares"]``."""

    tag: str
    host_path: str
    guest_path: str
    read_only: bool
    transport: str
    state: str
    error: str = ""


# ---- the pure part ------------------------------------------------------------------------
def resolve_transport(share: Share, host_os: HostOS) -> ShareTransport:
    if share.transport == "sftp" or host_os is HostOS.WINDOWS:
        return ShareTransport.SFTP
    return ShareTransport.NINEP


def plan_shares(spec: MachineSpec, host_os: HostOS) -> list[PlannedShare]:
    out = []
    for share in spec.shares:
        guest = guest_path_for(share.host_path, host_os)
        problem = ""
        if reserved_guest_path(guest):
            problem = (
                f"{guest} is a system folder inside the VM; share a folder below it instead"
            )
        out.append(
            PlannedShare(
                tag=share.tag,
                host_path=share.host_path,
                guest_path=guest,
                read_only=share.read_only,
                transport=resolve_transport(share, host_os),
                problem=problem,
            )
        )
    return out


def fw_cfg_shares(spec: MachineSpec, host_os: HostOS) -> str:
    """The 9p list for the guest init: ``TAG<TAB>ro|rw<TAB>GUEST-PATH`` lines ("" if none).

    Tabs and line breaks cannot occur: ``spec.validate`` refuses them in paths and tags.
    """
    lines = [
        f"{p.tag}\t{'ro' if p.read_only else 'rw'}\t{p.guest_path}\n"
        for p in plan_shares(spec, host_os)
        if p.transport is ShareTransport.NINEP and not p.problem
    ]
    return "".join(lines)


def parse_guest_status(text: str) -> dict[str, tuple[bool, str]]:
    """``/run/berth/shares.status`` → {tag: (mounted, detail)}."""
    out: dict[str, tuple[bool, str]] = {}
    for line in text.splitlines():
        fields = line.split("\t", 2)
        if len(fields) == 3:
            out[fields[0]] = (fields[1] == "ok", fields[2])
    return out


# ---- the SFTP server ----------------------------------------------------------------------
class _Denied(Exception):
    """A path that leaves the share's folder."""


def _errno(e: OSError) -> int:
    return int(SFTPServer.convert_errno(e.errno or errno.EIO))


def _has(attr: SFTPAttributes, flag: int) -> bool:
    return bool(getattr(attr, "_flags", 0) & flag)


def _is_write(flags: int) -> bool:
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC))


class _Handle(SFTPHandle):
    def __init__(self, host_path: str, flags: int, read_only: bool) -> None:
        super().__init__(flags)
        self.host_path = host_path
        self.read_only = read_only

    def stat(self) -> SFTPAttributes | int:
        try:
            return SFTPAttributes.from_stat(os.fstat(self._fd()))
        except OSError as e:
            return _errno(e)

    def chattr(self, attr: SFTPAttributes) -> int:
        if self.read_only:
            return SFTP_PERMISSION_DENIED
        return _apply_attr(self.host_path, attr)

    def _fd(self) -> int:
        f = getattr(self, "writefile", None) or getattr(self, "readfile", None)
        if f is None:
            raise OSError(errno.EBADF, "closed")
        return int(f.fileno())


def _apply_attr(path: str, attr: SFTPAttributes) -> int:
    try:
        if _has(attr, attr.FLAG_SIZE) and attr.st_size is not None:
            os.truncate(path, attr.st_size)
        if _has(attr, attr.FLAG_PERMISSIONS) and attr.st_mode is not None:
            os.chmod(path, stat_mod.S_IMODE(attr.st_mode))
        if _has(attr, attr.FLAG_AMTIME) and attr.st_atime is not None:
            os.utime(path, (attr.st_atime, attr.st_mtime or attr.st_atime))
        if _has(attr, attr.FLAG_UIDGID) and hasattr(os, "chown"):
            # Like 9p's security_model=none: files stay the user's when the guest asks
            # for another owner and the host refuses.
            try:
                os.chown(path, attr.st_uid or -1, attr.st_gid or -1)
            except PermissionError:
                pass
    except OSError as e:
        return _errno(e)
    return SFTP_OK


class ConfinedSFTP(SFTPServerInterface):
    """An SFTP backend that serves one host folder as ``/`` and nothing outside it.

    Every client path is normalised (``..`` cannot climb above ``/``) and resolved through
    the host's symlinks with :func:`os.path.realpath`; a result outside the folder is
    refused with PERMISSION_DENIED. Operations on a link itself (lstat, remove, rename,
    readlink) resolve the parent only. Files are opened with ``O_NOFOLLOW`` on the resolved
    path, so a symlink swapped in after the check is not followed either. On a read-only
    share every request that would change something is refused with PERMISSION_DENIED.
    """

    def __init__(self, server: Any, root: str, read_only: bool = False) -> None:
        super().__init__(server)
        self.root = os.path.realpath(root)
        self.read_only = read_only

    # ---- path mapping ---------------------------------------------------------------------
    def _host(self, path: str) -> str:
        parts = [p for p in posixpath.normpath("/" + path.lstrip("/")).split("/") if p]
        return os.path.join(self.root, *parts) if parts else self.root

    def _inside(self, real: str) -> bool:
        root = os.path.normcase(self.root)
        real = os.path.normcase(real)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def _follow(self, path: str) -> str:
        real = os.path.realpath(self._host(path))
        if not self._inside(real):
            raise _Denied(path)
        return real

    def _nofollow(self, path: str) -> str:
        host = self._host(path)
        if host == self.root:
            return self.root
        parent = os.path.realpath(os.path.dirname(host))
        if not self._inside(parent):
            raise _Denied(path)
        return os.path.join(parent, os.path.basename(host))

    def _guest_view(self, real: str) -> str:
        rel = os.path.relpath(real, self.root)
        return "/" if rel == "." else "/" + rel.replace(os.sep, "/")

    # ---- SFTPServerInterface --------------------------------------------------------------
    def canonicalize(self, path: str) -> str:
        return posixpath.normpath("/" + path.lstrip("/"))

    def open(self, path: str, flags: int, attr: SFTPAttributes) -> SFTPHandle | int:
        if self.read_only and _is_write(flags):
            return SFTP_PERMISSION_DENIED
        try:
            real = self._follow(path)
            mode = 0o666
            if attr is not None and _has(attr, attr.FLAG_PERMISSIONS) and attr.st_mode:
                mode = stat_mod.S_IMODE(attr.st_mode)
            extra = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
            fd = os.open(real, flags | extra, mode)
        except _Denied:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return _errno(e)
        access = flags & (os.O_WRONLY | os.O_RDWR)
        append = bool(flags & os.O_APPEND)
        if access == os.O_RDWR:
            fmode = "a+b" if append else "r+b"
        elif access == os.O_WRONLY:
            fmode = "ab" if append else "wb"
        else:
            fmode = "rb"
        handle = _Handle(real, flags, self.read_only)
        fobj = os.fdopen(fd, fmode)
        if "r" in fmode or "+" in fmode:
            setattr(handle, "readfile", fobj)  # noqa: B010 (SFTPHandle's contract)
        if fmode != "rb":
            setattr(handle, "writefile", fobj)  # noqa: B010
        return handle

    def list_folder(self, path: str) -> list[SFTPAttributes] | int:
        try:
            real = self._follow(path)
            out = []
            for name in os.listdir(real):
                try:
                    st = os.lstat(os.path.join(real, name))
                except OSError:
                    continue
                out.append(SFTPAttributes.from_stat(st, name))
            return out
        except _Denied:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return _errno(e)

    def stat(self, path: str) -> SFTPAttributes | int:
        try:
            return SFTPAttributes.from_stat(os.stat(self._follow(path)))
        except _Denied:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return _errno(e)

    def lstat(self, path: str) -> SFTPAttributes | int:
        try:
            return SFTPAttributes.from_stat(os.lstat(self._nofollow(path)))
        except _Denied:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return _errno(e)

    def _change(self, fn: Any, *paths: str, follow: bool = False) -> int:
        if self.read_only:
            return SFTP_PERMISSION_DENIED
        try:
            resolved = [self._follow(p) if follow else self._nofollow(p) for p in paths]
            if any(r == self.root for r in resolved) and fn is not os.mkdir:
                return SFTP_PERMISSION_DENIED  # the share's folder itself stays
            fn(*resolved)
        except _Denied:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return _errno(e)
        return SFTP_OK

    def remove(self, path: str) -> int:
        return self._change(os.remove, path)

    def rename(self, oldpath: str, newpath: str) -> int:
        return self._change(os.rename, oldpath, newpath)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self._change(os.replace, oldpath, newpath)

    def mkdir(self, path: str, attr: SFTPAttributes) -> int:
        mode = 0o777
        if attr is not None and _has(attr, attr.FLAG_PERMISSIONS) and attr.st_mode:
            mode = stat_mod.S_IMODE(attr.st_mode)
        return self._change(lambda p: os.mkdir(p, mode), path)

    def rmdir(self, path: str) -> int:
        return self._change(os.rmdir, path)

    def chattr(self, path: str, attr: SFTPAttributes) -> int:
        if self.read_only:
            return SFTP_PERMISSION_DENIED
        try:
            real = self._follow(path)
        except _Denied:
            return SFTP_PERMISSION_DENIED
        return _apply_attr(real, attr)

    def symlink(self, target_path: str, path: str) -> int:
        if not hasattr(os, "symlink"):
            return SFTP_OP_UNSUPPORTED
        # The target is stored as given: following it is confined like any other path.
        return self._change(lambda p: os.symlink(target_path, p), path)

    def readlink(self, path: str) -> str | int:
        try:
            target = os.readlink(self._nofollow(path))
        except _Denied:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return _errno(e)
        if os.path.isabs(target):
            real = os.path.normpath(target)
            if self._inside(real):
                return self._guest_view(real)
        return target.replace(os.sep, "/")


def serve_sftp(channel: Any, root: str, read_only: bool) -> None:
    """Serve ``root`` over SFTP on ``channel`` until the peer closes it (blocking).

    ``channel`` is any paramiko channel (here, a client-side session channel whose remote
    end is ``sshfs -o passive``). The channel is closed on return.
    """
    server = SFTPServer(
        channel, "sftp", paramiko.ServerInterface(), ConfinedSFTP, root=root, read_only=read_only
    )
    try:
        server.start_subsystem("sftp", channel.get_transport(), channel)
    finally:
        server.finish_subsystem()


# ---- the manager berthd runs --------------------------------------------------------------
def sshfs_argv(plan: PlannedShare) -> list[str]:
    """The guest command of a reverse-SFTP mount (quoted with shlex by GuestSSH)."""
    opts = "passive,allow_other,dir_cache=no,attr_timeout=1,entry_timeout=1"
    if plan.read_only:
        opts += ",ro"
    return ["sshfs", "-f", "-o", opts, "berth-host:/", plan.guest_path]


# Prepares a mount point: $1 is the path, passed as an argument, never spliced in.
_PREPARE_SCRIPT = (
    'modprobe -q fuse 2>/dev/null; umount -l "$1" 2>/dev/null; mkdir -p "$1"'
)


class _SftpMount:
    def __init__(self, channel: Channel, thread: threading.Thread) -> None:
        self.channel = channel
        self.thread = thread
        self.started = time.monotonic()


class ShareManager:
    """Brings a machine's shares up after SSH connects and down on stop; thread-safe."""

    def __init__(self, ssh: GuestSSH, spec: MachineSpec, host_os: HostOS) -> None:
        self.ssh = ssh
        self.plans = plan_shares(spec, host_os)
        self._lock = threading.Lock()
        self._status: dict[str, ShareStatus] = {
            p.tag: ShareStatus(
                p.tag, p.host_path, p.guest_path, p.read_only, p.transport.value,
                ShareState.PENDING.value,
            )
            for p in self.plans
        }
        self._mounts: dict[str, _SftpMount] = {}
        self._stopping = threading.Event()
        self._remounts: dict[str, int] = {}  # tag → remounts in a row of short-lived mounts

    def table(self) -> list[ShareStatus]:
        with self._lock:
            return [self._status[p.tag] for p in self.plans]

    def _set(self, tag: str, state: ShareState, error: str = "") -> None:
        with self._lock:
            self._status[tag] = replace(self._status[tag], state=state.value, error=error)

    def start(self) -> None:
        """Check the 9p mounts the guest made and mount the SFTP ones. Never raises."""
        ninep = [p for p in self.plans if p.transport is ShareTransport.NINEP]
        if ninep:
            self._read_9p_status(ninep)
        for plan in self.plans:
            if plan.transport is ShareTransport.SFTP:
                try:
                    self._mount_sftp(plan)
                except BerthError as err:
                    log.warning("share %s not mounted: %s", plan.tag, err)
                    self._set(plan.tag, ShareState.FAILED, str(err))

    def _read_9p_status(self, plans: list[PlannedShare]) -> None:
        try:
            result = self.ssh.exec(["cat", GUEST_STATUS_FILE], timeout=30)
            guest = parse_guest_status(result.out.decode("utf-8", "replace"))
        except BerthError as err:
            for plan in plans:
                self._set(plan.tag, ShareState.FAILED, f"cannot read the guest's result: {err}")
            return
        for plan in plans:
            if plan.problem:
                self._set(plan.tag, ShareState.FAILED, plan.problem)
            elif plan.tag not in guest:
                self._set(
                    plan.tag, ShareState.FAILED,
                    "the VM did not mount this share (it was added after the VM started: "
                    "restart the machine)",
                )
            else:
                ok, detail = guest[plan.tag]
                if ok:
                    self._set(plan.tag, ShareState.MOUNTED)
                else:
                    self._set(plan.tag, ShareState.FAILED, f"the VM could not mount it: {detail}")

    def _mount_sftp(self, plan: PlannedShare) -> None:
        if plan.problem:
            raise ShareError(plan.problem, "Change the shared folders.")
        if not os.path.isdir(plan.host_path):
            raise ShareError(
                f"The shared folder {plan.host_path} does not exist.",
                "Create it, or remove it from the shares, and restart the machine.",
            )
        prep = self.ssh.exec(["sh", "-c", _PREPARE_SCRIPT, "sh", plan.guest_path], timeout=30)
        if prep.rc != 0:
            raise ShareError(
                f"Cannot create {plan.guest_path} in the VM: "
                f"{prep.err.decode('utf-8', 'replace').strip()}",
                "See the VM's logs (berth machine logs).",
            )
        channel = self.ssh.open_stdio(sshfs_argv(plan))
        thread = threading.Thread(
            target=self._serve, args=(plan, channel), name=f"sftp-share-{plan.tag}", daemon=True
        )
        thread.start()
        with self._lock:
            self._mounts[plan.tag] = _SftpMount(channel, thread)
        deadline = time.monotonic() + SFTP_MOUNT_TIMEOUT_S
        while time.monotonic() < deadline:
            if not thread.is_alive():
                break
            check = self.ssh.exec(["mountpoint", "-q", plan.guest_path], timeout=30)
            if check.rc == 0:
                self._set(plan.tag, ShareState.MOUNTED)
                return
            time.sleep(0.2)
        stderr = b""
        with contextlib.suppress(Exception):
            while channel.recv_stderr_ready():
                stderr += channel.recv_stderr(4096)
        self._drop(plan.tag)
        raise ShareError(
            f"sshfs did not mount {plan.guest_path} in the VM"
            + (f": {stderr.decode('utf-8', 'replace').strip()}" if stderr else "."),
            "See docs/shares.md; check that the image has sshfs and the fuse module.",
        )

    def _serve(self, plan: PlannedShare, channel: Channel) -> None:
        try:
            serve_sftp(channel, plan.host_path, plan.read_only)
        except Exception:
            log.debug("SFTP server for %s ended with an error", plan.tag, exc_info=True)
        finally:
            with self._lock:
                current = self._status.get(plan.tag)
                mount = self._mounts.get(plan.tag)
                still_ours = mount is not None and mount.channel is channel
            mounted = current is not None and current.state == ShareState.MOUNTED.value
            if still_ours and mounted and not self._stopping.is_set():
                # The SSH session dropped (or sshfs ended): mount it again once SSH is back.
                self._set(
                    plan.tag, ShareState.FAILED,
                    "the SSH channel serving it closed; mounting it again when SSH is back",
                )
                threading.Thread(
                    target=self._remount, args=(plan, channel),
                    name=f"sftp-remount-{plan.tag}", daemon=True,
                ).start()

    def _remount(self, plan: PlannedShare, dead: Channel) -> None:
        """Mount ``plan`` again after its channel closed; gives up after a few mounts in a
        row that each ended within a minute (sshfs failing, not a dropped session)."""
        with self._lock:
            mount = self._mounts.get(plan.tag)
            if mount is None or mount.channel is not dead:
                return  # stopped, or mounted again meanwhile
            del self._mounts[plan.tag]
            lived = time.monotonic() - mount.started
            tries = 0 if lived > REMOUNT_RESET_S else self._remounts.get(plan.tag, 0)
            self._remounts[plan.tag] = tries + 1
        with contextlib.suppress(Exception):
            mount.channel.close()
        if tries >= REMOUNT_MAX_TRIES:
            self._set(
                plan.tag, ShareState.FAILED,
                "the SSH channel serving it keeps closing; restart the machine to mount it",
            )
            return
        self._stopping.wait(min(2.0**tries, 30.0))
        while not self._stopping.is_set():
            try:
                self.ssh.wait_connected(timeout=60)
                self._mount_sftp(plan)
                log.info("share %s mounted again after its SSH channel closed", plan.tag)
                return
            except BerthError as err:
                if self.ssh.state is SSHState.CONNECTED:  # SSH is fine: the mount is not
                    log.warning("share %s not mounted again: %s", plan.tag, err)
                    self._set(plan.tag, ShareState.FAILED, str(err))
                    return
            self._stopping.wait(1.0)

    def _drop(self, tag: str) -> None:
        with self._lock:
            mount = self._mounts.pop(tag, None)
        if mount is not None:
            mount.channel.close()
            mount.thread.join(timeout=5)

    def stop(self) -> None:
        """Unmount the SFTP shares (the 9p ones go with the VM) and end their servers."""
        self._stopping.set()
        with self._lock:
            tags = list(self._mounts)
        for tag in tags:
            plan = next(p for p in self.plans if p.tag == tag)
            if self.ssh.state is SSHState.CONNECTED:  # a dead VM needs no unmount
                with contextlib.suppress(Exception):
                    self.ssh.exec(["umount", "-l", plan.guest_path], timeout=10)
            self._drop(tag)
        for plan in self.plans:
            self._set(plan.tag, ShareState.STOPPED)

