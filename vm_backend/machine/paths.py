"""Where a machine's files live: a private state dir and a short private run dir.

Layout (``$BERTH_HOME`` overrides the platform user-data dir, for tests)::

    <home>/machines/<name>/          0700  state dir
        machine.json                       the spec
        data.qcow2                         persistent data disk
        qemu.log, qemu.log.1               QEMU's stderr (one older generation kept)
        console.log, console.log.1         serial console (bounded, rotated)
        run.json                           what the current/last run used (pid, accel, port)
        lock                               flock held by start/stop/delete
        ssh_host_ed25519_key, authorized_keys   written by keys.py, passed via fw_cfg
    <run dir>                        0700  sockets, kept short (sun_path is 104 bytes on macOS)
        qmp.sock, console.sock, qemu.pid

The run dir is ``<state dir>/run`` when that keeps every socket path under the limit,
otherwise ``<tmp>/berth-<uid>/<hash of state dir>``.

On Windows QMP and the console are named pipes instead of sockets, and so is the engine
socket. Pipe names are global to the computer, so every Berth pipe starts with
:func:`pipe_stem` (``berth-<user>-<sha256(home)[:12]>``)::

    \\\\.\\pipe\\<stem>-berthd                          berthd (:func:`daemon_pipe_name`)
    \\\\.\\pipe\\<stem>-<name>-qmp, <stem>-<name>-console   made by QEMU (-chardev pipe)
    \\\\.\\pipe\\<stem>-<name>-docker                   the engine (npipe:////./pipe/...)

Two users, or two homes of one user, with a machine called "default" never meet on a name.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from vm_backend.errors import BerthError

# macOS sun_path is 104 bytes including the NUL; Linux is 108. Use the smaller everywhere
# so a state dir that works on Linux CI also works on a Mac.
SOCKET_PATH_LIMIT = 103
_LONGEST_SOCKET_NAME = "console.sock"
PIPE_PREFIX = "\\\\.\\pipe\\"
PIPE_NAME_LIMIT = 256  # characters, prefix included: CreateNamedPipe's limit


def pipe_stem(home: Path) -> str:
    """``berth-<user>-<sha256(home)[:12]>``: how every pipe name of one Berth home starts.

    Pipe names are global to the machine, so the user name and a hash of the home folder
    keep two users, or two homes of one user (tests, ``BERTH_HOME``), apart. The name only
    avoids collisions, it is no secret: access is what :mod:`vm_backend.winpipe` (owner-only
    DACL) and the first-client guard of :mod:`vm_backend.machine.qemu_pipes` protect.
    """
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "user"
    # ASCII only: QEMU takes the pipe name from its command line (in the ANSI code page on
    # Windows), and it must come out as the same name berthd opens.
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_"
                   for c in user)[:32] or "user"
    digest = hashlib.sha256(os.fsencode(str(home.absolute()))).hexdigest()[:12]
    return f"berth-{safe}-{digest}"


def daemon_pipe_name(home: Path) -> str:
    """berthd's pipe on Windows: ``\\\\.\\pipe\\berth-<user>-<hash of home>-berthd``."""
    return f"{PIPE_PREFIX}{pipe_stem(home)}-berthd"


class PathError(BerthError):
    """A Berth directory is missing, unsafe (wrong owner, symlink) or unusable."""


def berth_home() -> Path:
    """The root of Berth's per-user data: ``$BERTH_HOME`` or the platform data dir."""
    override = os.environ.get("BERTH_HOME")
    if override:
        return Path(override)
    return Path(platformdirs.user_data_dir("berth", appauthor=False))


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700, owned by us, not a symlink.

    A looser mode left by an old version or a umask is tightened rather than rejected;
    a directory owned by someone else is refused, because its owner could swap our sockets.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PathError(
            f"{path} is not a plain directory.",
            "Remove it (it may be a symlink left by another program) and try again.",
        )
    if sys.platform != "win32":
        if st.st_uid != os.getuid():
            raise PathError(
                f"{path} belongs to another user.",
                "Remove it or set BERTH_HOME to a folder you own.",
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
    return path


def _short_run_root() -> Path:
    uid = os.getuid() if sys.platform != "win32" else 0
    base = Path("/tmp") if sys.platform != "win32" else Path(tempfile.gettempdir())
    return base / f"berth-{uid}"


def run_dir_for(state_dir: Path, limit: int = SOCKET_PATH_LIMIT) -> Path:
    """Pick the socket directory for ``state_dir``: inside it if short enough, else /tmp."""
    preferred = state_dir / "run"
    if len(os.fsencode(str(preferred / _LONGEST_SOCKET_NAME))) <= limit:
        return preferred
    digest = hashlib.sha256(os.fsencode(str(state_dir.resolve()))).hexdigest()[:16]
    return _short_run_root() / digest


@dataclass(frozen=True)
class MachinePaths:
    """Every file a machine uses. Pure data: nothing is created until :meth:`ensure`."""

    name: str
    state_dir: Path
    run_dir: Path
    windows_pipes: bool = False

    @classmethod
    def for_machine(
        cls, name: str, home: Path | None = None, *, windows_pipes: bool | None = None
    ) -> MachinePaths:
        root = home if home is not None else berth_home()
        state_dir = root / "machines" / name
        pipes = sys.platform == "win32" if windows_pipes is None else windows_pipes
        return cls(name=name, state_dir=state_dir, run_dir=run_dir_for(state_dir),
                   windows_pipes=pipes)

    @property
    def spec_file(self) -> Path:
        return self.state_dir / "machine.json"

    @property
    def data_disk(self) -> Path:
        return self.state_dir / "data.qcow2"

    @property
    def qemu_log(self) -> Path:
        return self.state_dir / "qemu.log"

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"

    @property
    def run_record(self) -> Path:
        return self.state_dir / "run.json"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @property
    def ssh_host_key(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def authorized_keys(self) -> Path:
        return self.state_dir / "authorized_keys"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def home(self) -> Path:
        """The Berth home this machine belongs to (its state dir is ``<home>/machines/<name>``)."""
        return self.state_dir.parent.parent

    def _pipe(self, kind: str) -> str:
        name = f"{PIPE_PREFIX}{pipe_stem(self.home)}-{self.name}-{kind}"
        if len(name) > PIPE_NAME_LIMIT:
            raise PathError(
                f"The machine name {self.name!r} makes its pipe names too long for Windows.",
                "Use a machine name of at most 31 letters, digits and dashes.",
            )
        return name

    @property
    def qmp_address(self) -> str:
        """A unix socket path, or on Windows the full name of a named pipe."""
        if self.windows_pipes:
            return self._pipe("qmp")
        return str(self.run_dir / "qmp.sock")

    @property
    def engine_pipe(self) -> str | None:
        """The engine socket's pipe name on Windows (None where it is a unix socket)."""
        if self.windows_pipes:
            return self._pipe("docker")
        return None

    @property
    def console_address(self) -> str:
        if self.windows_pipes:
            return self._pipe("console")
        return str(self.run_dir / "console.sock")

    def socket_files(self) -> tuple[Path, ...]:
        """Sockets QEMU creates on disk (none on Windows, where pipes vanish with QEMU)."""
        if self.windows_pipes:
            return ()
        return (Path(self.qmp_address), Path(self.console_address))

    def ensure(self) -> None:
        """Create the state and run dirs with private permissions."""
        ensure_private_dir(self.state_dir)
        if self.run_dir.parent != self.state_dir:
            ensure_private_dir(self.run_dir.parent)
        ensure_private_dir(self.run_dir)
