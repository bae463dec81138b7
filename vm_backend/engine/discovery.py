"""Find container engines the way a docker user expects, and say what each one is.

Order: ``DOCKER_HOST``; the current docker context; the engines people run on this
platform (:func:`candidates` takes the platform and home folder, so each list is tested on
Linux):

* Linux: rootful then rootless Docker, rootful then rootless Podman;
* macOS: Docker Desktop (``~/.docker/run/docker.sock``); ``/var/run/docker.sock`` (a link
  that Docker Desktop, podman-mac-helper, Rancher Desktop or OrbStack may own; left out
  when it leads to a socket already listed); the podman machine; Colima; OrbStack;
  Rancher Desktop;
* Windows: Docker Desktop (``npipe:////./pipe/docker_engine``, else
  ``dockerDesktopLinuxEngine``); the podman machine (``podman-machine-default``);

and on macOS and Windows one more row per podman machine of another name, found by the
names of podman's machine config files (never running podman, never reading the files);

then Berth's own VM socket (on Windows its named pipe,
``npipe:////./pipe/berth-<machine>-docker``); endpoints added by hand. A product with
several known addresses (podman 4 and 5, Colima's two homes) is one row: the first address
that exists now (a stat or a ``WaitNamedPipe``, no connect), else the first, whose row then
says how to start it. Each endpoint is probed (``/version``) in parallel with a short
timeout and reports what it is, or why it is unusable and what to do about it, in the
platform's terms (systemctl and the docker group on Linux, the desktop apps and
``podman machine start`` on macOS and Windows).

``npipe://`` addresses are Windows named pipes: elsewhere they are reported unsupported
with the forms that work; on Windows a local pipe is looked up before docker-py connects
(``WaitNamedPipe``, which does not take an instance), and docker-py's pywin32 errors
(``pywintypes.error``, not an ``OSError``) are classified like socket errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import paramiko
import requests.exceptions

from vm_backend.engine.models import Endpoint, EndpointSource, EndpointStatus, EngineKind
from vm_backend.paths import berth_home, docker_config_dir
from vm_backend.winpipe import (
    ERROR_ACCESS_DENIED,
    ERROR_FILE_NOT_FOUND,
    ERROR_PIPE_BUSY,
    ERROR_SEM_TIMEOUT,
    PipeApi,
    default_api,
    pipe_url,
    winerror,
)

PROBE_TIMEOUT = 5.0  # Podman's /version can take seconds on a busy host
NPIPE_SCHEME = "npipe://"
#: A pipe on this computer (``npipe:////server/pipe/x`` would go to another one over SMB).
LOCAL_NPIPE = "npipe:////./pipe/"
_RAW_PIPE_PREFIX = "\\\\.\\pipe\\"  # \\.\pipe\ as users copy it from Windows tools

#: What docker-py's npipe transport raises (pywin32's error is not an OSError); nothing
#: on other systems, where docker-py refuses npipe:// before connecting.
PIPE_ERRORS: tuple[type[BaseException], ...] = ()
if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    try:
        import pywintypes

        PIPE_ERRORS = (pywintypes.error,)
    except ImportError:  # docker-py then says to install it, as a DockerException
        pass


#: One engine product: its row name, its source, and its known addresses, newest first.
Product = tuple[str, EndpointSource, tuple[str, ...]]


def _runtime_dir() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg)
    return Path(f"/run/user/{os.getuid()}") if hasattr(os, "getuid") else Path.home()


def context_endpoint() -> tuple[str, str] | None:
    """The current docker context's (name, host), unless it is the built-in default."""
    name = os.environ.get("DOCKER_CONTEXT", "")
    cfg_dir = docker_config_dir()
    if not name:
        try:
            cfg = json.loads((cfg_dir / "config.json").read_text(encoding="utf-8"))
            name = str(cfg.get("currentContext") or "")
        except (OSError, ValueError, AttributeError):
            return None
    if not name or name == "default":
        return None
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta_path = cfg_dir / "contexts" / "meta" / digest / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        host = meta["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (name, str(host)) if host else None


def berth_vm_endpoints() -> list[tuple[str, str]]:
    """(machine name, engine URL) of Berth's helper VMs whose engine endpoint exists now:
    ``unix://<run dir>/docker.sock``, or on Windows ``npipe:////./pipe/berth-<name>-docker``.
    """
    from vm_backend.machine.context import engine_host_url
    from vm_backend.machine.paths import MachinePaths

    base = berth_home() / "machines"
    try:
        names = sorted(p.name for p in base.iterdir() if (p / "machine.json").exists())
    except OSError:
        return []
    found = []
    for name in names:
        paths = MachinePaths.for_machine(name, berth_home())
        sock = paths.run_dir / "docker.sock"
        pipe = paths.engine_pipe
        if pipe is not None:
            problem = _pipe_problem(pipe)
            exists = problem is None or problem[0] is not EndpointStatus.MISSING
        else:
            exists = sock.exists()
        if exists:
            found.append((name, engine_host_url(sock, pipe)))
    return found


#: The machine ``podman machine init`` makes when given no name, and its row's name.
PODMAN_DEFAULT_MACHINE = "podman-machine-default"
PODMAN_MACHINE_ROW = "podman machine"
#: Podman's rule for names (libpod/define/config.go NameRegex, from containers/common
#: libnetwork/types: "This must NOT be changed"), the 30-character limit of
#: cmd/podman/machine/init.go (maxMachineNameSize) and, since podman 5, the provider names
#: it refuses as machine names (init.go: define.ParseVMType). A file name that breaks
#: these was not written by podman, and never reaches a path or a pipe name.
_PODMAN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PODMAN_NAME_MAX = 30
#: Podman's providers (pkg/machine/define/vmtype.go) on each platform: each keeps one
#: <machine>.json per machine in a folder of its own.
_PODMAN_PROVIDERS = {"darwin": ("qemu", "applehv", "libkrun"), "win32": ("wsl", "hyperv")}
_PODMAN_RESERVED = frozenset(p for ps in _PODMAN_PROVIDERS.values() for p in ps)


def podman_machine_names(config_dir: Path, providers: Sequence[str]) -> list[str]:
    """The podman machines other than the default one, sorted, from the names of their
    config files ``<config_dir>/<provider>/<machine>.json``.

    Only the folder listing is read (podman's files are neither opened nor trusted); a
    missing or unreadable folder adds nothing, and a name podman could not have made is
    left out.
    """
    names: set[str] = set()
    for provider in providers:
        try:
            with os.scandir(config_dir / provider) as entries:
                for entry in entries:
                    stem = entry.name.removesuffix(".json")
                    if stem != entry.name and _podman_name_ok(stem) and entry.is_file():
                        names.add(stem)
        except OSError:
            continue
    names.discard(PODMAN_DEFAULT_MACHINE)
    return sorted(names)


def _podman_name_ok(name: str) -> bool:
    return (
        len(name) <= _PODMAN_NAME_MAX
        and _PODMAN_NAME.fullmatch(name) is not None
        and name.lower() not in _PODMAN_RESERVED
    )


def _podman_pipe(machine: str) -> str:
    """A podman machine's own pipe: env.WithPodmanPrefix, which leaves a name that already
    starts with "podman" as it is (so podman-machine-default's pipe is its name)."""
    return machine if machine.startswith("podman") else f"podman-{machine}"


def _podman_row(machine: str) -> str:
    return PODMAN_MACHINE_ROW if machine == PODMAN_DEFAULT_MACHINE else (
        f"{PODMAN_MACHINE_ROW} {machine}")


def local_products(platform: str, home: Path, env: Mapping[str, str]) -> list[Product]:
    """The engines people run on ``platform`` (``sys.platform``), where each one answers."""
    # Podman's machine config dir is homedir.GetConfigHome()/containers/podman/machine/
    # <provider> (pkg/machine/env/dir.go ConfDirPrefix, GetConfDir): $XDG_CONFIG_HOME,
    # else ~/.config, on macOS; %USERPROFILE%\.config on Windows, our ``home`` there
    # (containers/storage pkg/homedir/homedir_windows.go, which ignores XDG_CONFIG_HOME).
    # Podman 4 and 5 both write <machine>.json there, beside <machine>.ign and .lock
    # (pkg/machine/vmconfigs/machine.go NewMachineConfig; podman 4's qemu setConfigPath
    # and wsl getConfigPath); `podman machine list` finds them by that suffix too
    # (LoadMachinesInDir).
    if platform == "win32":
        machines = [PODMAN_DEFAULT_MACHINE, *podman_machine_names(
            home / ".config" / "containers" / "podman" / "machine", _PODMAN_PROVIDERS[platform])]
        return [
            # Docker Desktop's proxy pipe (which podman machine takes when it is free),
            # and the Linux engine's own pipe (Docker Desktop 4.x).
            ("Docker Desktop", EndpointSource.DOCKER_DESKTOP,
             (f"{LOCAL_NPIPE}docker_engine", f"{LOCAL_NPIPE}dockerDesktopLinuxEngine")),
            # podman pkg/machine/shim/networking_windows.go: each machine's own pipe is
            # env.WithPodmanPrefix(its name), as podman 4 named it (wsl launchWinProxy,
            # toDist).
            *[(_podman_row(m), EndpointSource.PODMAN_MACHINE,
               (f"{LOCAL_NPIPE}{_podman_pipe(m)}",)) for m in machines],
        ]
    if platform == "darwin":
        # Podman's machine data dir is $XDG_DATA_HOME (else ~/.local/share)/containers/
        # podman/machine (pkg/machine/env/dir.go DataDirPrefix). Podman 5 puts the API
        # socket in its runtime dir, $TMPDIR (else /tmp)/podman, as <machine>-api.sock
        # (pkg/machine/env/dir_darwin.go, vmconfigs apiSocket; containers/podman#22028),
        # and, with podman-mac-helper installed, links machine/podman.sock to it
        # (shim/networking_unix.go setupForwardingLinks). Podman 4.5-4.9 listened on
        # machine/qemu/podman.sock (podman-desktop/podman-desktop#3218). A TMPDIR that
        # differs from the one podman was started with misses the first; the link and
        # `podman machine inspect` (ConnectionInfo.PodmanSocket) are then the way.
        # Another machine has its own podman 5 socket, <name>-api.sock; podman 4.0-4.4
        # listened on machine/<name>/podman.sock (qemu forwardSocketPath, GetDataDir(v.Name)
        # until containers/podman 0dac214f); the link and 4.5's qemu/podman.sock are shared
        # by whichever machine runs, so they stay the default machine's row's.
        data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
        machine = data / "containers" / "podman" / "machine"
        tmp = Path(env.get("TMPDIR") or "/tmp")
        config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        others = podman_machine_names(
            config / "containers" / "podman" / "machine", _PODMAN_PROVIDERS[platform])
        return [
            ("Docker Desktop", EndpointSource.DOCKER_DESKTOP,
             (f"unix://{home}/.docker/run/docker.sock",)),
            ("docker (/var/run/docker.sock)", EndpointSource.SHARED_DOCKER_SOCKET,
             ("unix:///var/run/docker.sock",)),
            (PODMAN_MACHINE_ROW, EndpointSource.PODMAN_MACHINE, (
                f"unix://{tmp}/podman/{PODMAN_DEFAULT_MACHINE}-api.sock",
                f"unix://{machine}/podman.sock",
                f"unix://{machine}/qemu/podman.sock",
            )),
            *[(_podman_row(m), EndpointSource.PODMAN_MACHINE, (
                f"unix://{tmp}/podman/{m}-api.sock",
                f"unix://{machine}/{m}/podman.sock",
            )) for m in others],
            # Colima's home is ~/.colima, or ~/.config/colima in its XDG layout.
            ("Colima", EndpointSource.COLIMA, (
                f"unix://{home}/.colima/default/docker.sock",
                f"unix://{home}/.config/colima/default/docker.sock",
            )),
            ("OrbStack", EndpointSource.ORBSTACK, (f"unix://{home}/.orbstack/run/docker.sock",)),
            ("Rancher Desktop", EndpointSource.RANCHER_DESKTOP, (f"unix://{home}/.rd/docker.sock",)),
        ]
    run = _runtime_dir()
    return [
        ("docker", EndpointSource.DOCKER_ROOTFUL, ("unix:///var/run/docker.sock",)),
        ("docker (rootless)", EndpointSource.DOCKER_ROOTLESS, (f"unix://{run}/docker.sock",)),
        ("podman", EndpointSource.PODMAN_ROOTFUL, ("unix:///run/podman/podman.sock",)),
        ("podman (rootless)", EndpointSource.PODMAN_ROOTLESS,
         (f"unix://{run}/podman/podman.sock",)),
    ]


def _exists_now(url: str) -> bool:
    """Whether something answers to this name now, without connecting (stat / WaitNamedPipe)."""
    if url.startswith("unix://"):
        return os.path.exists(url.removeprefix("unix://"))
    if url.startswith(LOCAL_NPIPE):
        problem = _pipe_problem(_pipe_name(url))
        return problem is None or problem[0] is not EndpointStatus.MISSING
    return False


def _pick_address(addresses: tuple[str, ...]) -> str:
    """The first address that exists now, else the first (its row says how to start it)."""
    if len(addresses) > 1:
        for url in addresses:
            if _exists_now(url):
                return url
    return addresses[0]


def _identity(url: str, platform: str) -> str:
    """What makes two addresses the same engine: on macOS a socket reached through a link
    (/var/run/docker.sock -> ~/.docker/run/docker.sock) is the socket it leads to."""
    if platform == "darwin" and url.startswith("unix://"):
        return "unix://" + os.path.realpath(url.removeprefix("unix://"))
    return url


def candidates(
    extra: Sequence[str] = (),
    *,
    platform: str | None = None,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> list[tuple[str, str, EndpointSource]]:
    """(name, url, source) in the order a docker user expects, without duplicates.

    ``platform`` (``sys.platform``), ``home`` and ``env`` default to this computer's.
    """
    platform = sys.platform if platform is None else platform
    home = Path.home() if home is None else home
    env = os.environ if env is None else env
    out: list[tuple[str, str, EndpointSource]] = []
    host = env.get("DOCKER_HOST", "")
    if host:
        out.append(("DOCKER_HOST", host, EndpointSource.DOCKER_HOST))
    ctx = context_endpoint()
    if ctx:
        out.append((f"context {ctx[0]}", ctx[1], EndpointSource.CONTEXT))
    for name, source, addresses in local_products(platform, home, env):
        out.append((name, _pick_address(addresses), source))
    for machine, url in berth_vm_endpoints():
        out.append((f"berth VM {machine}", url, EndpointSource.BERTH_VM))
    for url in extra:
        out.append((url, url, EndpointSource.MANUAL))
    seen: set[str] = set()
    unique = []
    for name, url, source in out:
        key = normalise_url(url)
        identity = _identity(key, platform)
        if identity not in seen:
            seen.add(identity)
            unique.append((name, key, source))
    return unique


def normalise_url(url: str) -> str:
    url = url.strip()
    if url.startswith("/"):
        return f"unix://{url}"
    if url.lower().startswith(_RAW_PIPE_PREFIX):
        return pipe_url(url)
    if url.startswith("unix:///var/run/") or url == "unix:///run/docker.sock":
        # /var/run is a symlink to /run on modern systems; keep the spelling users know.
        return url
    return url


def _socket_problem(path: str) -> tuple[EndpointStatus, str, str] | None:
    """Classify a unix socket path without talking to it (fast path for missing ones)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (
            EndpointStatus.MISSING,
            f"{path} does not exist",
            "The engine is not installed or not started.",
        )
    except PermissionError:
        return (
            EndpointStatus.PERMISSION_DENIED,
            f"cannot reach {path}: permission denied",
            "A parent directory is not readable by you.",
        )
    if not stat.S_ISSOCK(st.st_mode):
        return EndpointStatus.UNSUPPORTED, f"{path} is not a socket", "Check the endpoint's path."
    return None


def _pipe_problem(name: str, api: PipeApi | None = None) -> tuple[EndpointStatus, str, str] | None:
    """Classify a local named pipe (``\\\\.\\pipe\\x``) without connecting to it.

    ``WaitNamedPipe`` answers at once when no instance exists, and leaves the instance
    free (a CreateFile would use it up); a 1 ms wait that times out means all are busy,
    which docker-py waits through.
    """
    api = api if api is not None else default_api()
    try:
        api.wait_named_pipe(name, 1)
    except OSError as err:
        code = winerror(err)
        if code == ERROR_FILE_NOT_FOUND:
            return (
                EndpointStatus.MISSING,
                f"the pipe {name} does not exist",
                "The engine is not installed or not started.",
            )
        if code == ERROR_ACCESS_DENIED:
            return (
                EndpointStatus.PERMISSION_DENIED,
                f"cannot reach {name}: access denied",
                _permission_hint(pipe_url(name)),
            )
        if code != ERROR_SEM_TIMEOUT:
            return (EndpointStatus.NOT_ANSWERING, f"cannot reach {name}: {err}",
                    "Retry; if it persists, restart the engine.")
    return None


def _npipe_problem(url: str) -> tuple[EndpointStatus, str, str] | None:
    """What is wrong with an ``npipe://`` address before docker-py tries it, if anything."""
    if sys.platform != "win32":
        return (
            EndpointStatus.UNSUPPORTED,
            f"{url} is a Windows named pipe, and this computer is not Windows",
            f"{_address_forms()} (npipe:// works on Windows only).",
        )
    if not url.startswith(LOCAL_NPIPE):
        return None  # a pipe on another computer: docker-py reaches it over SMB, or says why
    return _pipe_problem(_pipe_name(url))


def _pipe_name(url: str) -> str:
    """``npipe:////./pipe/x`` as Windows spells it: ``\\\\.\\pipe\\x``."""
    return url.removeprefix(NPIPE_SCHEME).replace("/", "\\")


def address_examples() -> str:
    """The engine address forms that work on this computer, for hints and prompts."""
    if sys.platform == "win32":
        return "npipe:////./pipe/NAME, ssh://user@host or tcp://host:port"
    return "unix:///path, ssh://user@host or tcp://host:port"


def _address_forms() -> str:
    return f"Use {address_examples()}"


def _permission_hint(url: str) -> str:
    if url.startswith(NPIPE_SCHEME):
        return (
            "Docker Desktop's pipe is open to the docker-users group: add yourself to it, "
            "then sign out and in. A Berth VM's or podman machine's pipe is open only to "
            "the account that started it."
        )
    if sys.platform == "darwin":
        # No docker group here: these sockets live in the home of whoever started the app.
        return (
            "The socket belongs to another account: start the engine from your own "
            "(Docker Desktop, podman machine start, colima start)."
        )
    if "docker" in url:
        return (
            "Add yourself to the docker group (sudo usermod -aG docker $USER), then log out "
            "and back in — note that this group is equivalent to root."
        )
    if "podman" in url:
        return "Use the rootless Podman socket (systemctl --user enable --now podman.socket)."
    return "Ask the socket's owner for access, or use an engine of your own."


def _start_hint(source: EndpointSource, name: str = "") -> str:
    """How to start the engine of the row ``name`` from ``source``."""
    machine = name.removeprefix(f"{PODMAN_MACHINE_ROW} ")
    if source is EndpointSource.PODMAN_MACHINE and machine != name:
        return f"Start it: podman machine start {machine}."
    if source is EndpointSource.DOCKER_DESKTOP and sys.platform == "win32":
        return (
            "Start Docker Desktop, or run podman machine start (Podman answers on this "
            "pipe when Docker Desktop does not)."
        )
    return {
        EndpointSource.DOCKER_ROOTFUL: "Start it: sudo systemctl start docker.",
        EndpointSource.DOCKER_ROOTLESS: "Start it: systemctl --user start docker.",
        EndpointSource.PODMAN_ROOTFUL: "Start it: sudo systemctl start podman.socket.",
        EndpointSource.PODMAN_ROOTLESS: "Start it: systemctl --user start podman.socket.",
        EndpointSource.DOCKER_DESKTOP: "Start Docker Desktop.",
        EndpointSource.SHARED_DOCKER_SOCKET: (
            "Start Docker Desktop; Podman (podman machine start, with podman-mac-helper), "
            "Rancher Desktop and OrbStack can also serve this socket."
        ),
        EndpointSource.PODMAN_MACHINE: "Start it: podman machine start.",
        EndpointSource.COLIMA: "Start it: colima start.",
        EndpointSource.ORBSTACK: "Start OrbStack.",
        EndpointSource.RANCHER_DESKTOP: (
            "Start Rancher Desktop with the dockerd (moby) container engine."
        ),
        EndpointSource.BERTH_VM: "Start the VM: berth machine start.",
    }.get(source, "Start the engine, or check the address.")


def kind_from_version(version: dict[str, Any]) -> EngineKind:
    for component in version.get("Components") or []:
        if "podman" in str(component.get("Name", "")).lower():
            return EngineKind.PODMAN
    platform = str((version.get("Platform") or {}).get("Name", "")).lower()
    if "podman" in platform:
        return EngineKind.PODMAN
    return EngineKind.DOCKER if version.get("ApiVersion") else EngineKind.UNKNOWN


def probe(name: str, url: str, source: EndpointSource, timeout: float = PROBE_TIMEOUT) -> Endpoint:
    """Ask one endpoint for its version; never raises."""
    base = Endpoint(name=name, url=url, source=source, status=EndpointStatus.OK)
    problem = None
    if url.startswith("unix://"):
        problem = _socket_problem(url.removeprefix("unix://"))
    elif url.startswith(NPIPE_SCHEME):
        problem = _npipe_problem(url)
    if problem is not None:
        status, reason, hint = problem
        if status is EndpointStatus.MISSING:
            hint = _start_hint(source, name) if source is not EndpointSource.MANUAL else hint
        return replace(base, status=status, reason=reason, hint=hint)
    client = None
    try:
        client = docker.DockerClient(base_url=url, timeout=max(1, round(timeout)), version="auto")
        version = client.version()
    except docker.errors.DockerException as err:
        return replace(base, **_classify(err, url, source, name))
    except (requests.exceptions.RequestException, OSError) as err:
        return replace(base, **_classify(err, url, source, name))
    except PIPE_ERRORS as err:  # docker-py lets pywin32's errors through unwrapped
        return replace(base, **_classify(err, url, source, name))
    except paramiko.SSHException as err:
        # ssh:// engines: docker-py's paramiko transport refuses unknown host keys.
        return replace(base, **_classify_ssh(err, url))
    finally:
        if client is not None:
            client.close()
    return replace(
        base,
        kind=kind_from_version(version),
        version=str(version.get("Version", "")),
        api_version=str(version.get("ApiVersion", "")),
        os=str(version.get("Os", "")),
        arch=str(version.get("Arch", "")),
    )


def _classify(
    err: BaseException, url: str, source: EndpointSource, name: str = ""
) -> dict[str, Any]:
    text = str(err)
    chain: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    # pywin32's errors (docker-py's npipe transport) carry a Win32 code and no errno.
    codes = {getattr(e, "winerror", None) for e in chain}
    if ERROR_PIPE_BUSY in codes:
        return {
            "status": EndpointStatus.NOT_ANSWERING,
            "reason": "every instance of the pipe stayed busy",
            "hint": "The engine is overloaded or stuck; retry, or restart it.",
        }
    if (
        any(isinstance(e, PermissionError) for e in chain)
        or ERROR_ACCESS_DENIED in codes
        or "Permission denied" in text
    ):
        return {
            "status": EndpointStatus.PERMISSION_DENIED,
            "reason": "permission denied",
            "hint": _permission_hint(url),
        }
    if (
        any(isinstance(e, FileNotFoundError) for e in chain)
        or ERROR_FILE_NOT_FOUND in codes
        or "No such file" in text
    ):
        return {
            "status": EndpointStatus.MISSING,
            "reason": f"the {'pipe' if url.startswith(NPIPE_SCHEME) else 'socket'} went away",
            "hint": _start_hint(source, name),
        }
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in text.lower():
        return {
            "status": EndpointStatus.NOT_ANSWERING,
            "reason": "connection refused: the socket exists but no engine listens",
            "hint": _start_hint(source, name),
        }
    if any(isinstance(e, TimeoutError | socket.timeout) for e in chain) or "timed out" in text:
        return {
            "status": EndpointStatus.NOT_ANSWERING,
            "reason": f"no answer within {PROBE_TIMEOUT:g} s",
            "hint": "The engine may be starting or hung; retry, or restart it.",
        }
    if "pywin32" in text or "pypiwin32" in text:
        return {
            "status": EndpointStatus.UNSUPPORTED,
            "reason": "docker-py needs pywin32 for npipe:// addresses, and it is missing",
            "hint": "Reinstall Berth (or pip install pywin32 in its environment).",
        }
    if "URLSchemeUnknown" in type(err).__name__ or "scheme" in text.lower():
        return {
            "status": EndpointStatus.UNSUPPORTED,
            "reason": f"unsupported address: {text}",
            "hint": f"{_address_forms()}.",
        }
    return {
        "status": EndpointStatus.NOT_ANSWERING,
        "reason": text.splitlines()[0][:300] if text else type(err).__name__,
        "hint": _start_hint(source, name),
    }


def _classify_ssh(err: Exception, url: str) -> dict[str, Any]:
    text = str(err)
    if "known_hosts" in text:
        host = url.removeprefix("ssh://").split("@")[-1]
        return {
            "status": EndpointStatus.PERMISSION_DENIED,
            "reason": f"the SSH host key of {host} is not in known_hosts",
            "hint": "Check the host's key and record it (connect once with ssh), then retry.",
        }
    if isinstance(err, paramiko.AuthenticationException):
        return {
            "status": EndpointStatus.PERMISSION_DENIED,
            "reason": f"SSH login refused: {text}",
            "hint": "Check the user name and that your key is in the host's authorized_keys.",
        }
    return {
        "status": EndpointStatus.NOT_ANSWERING,
        "reason": f"SSH failed: {text}",
        "hint": "Check the address and that sshd and docker run on the host.",
    }


def discover(extra: Sequence[str] = (), timeout: float = PROBE_TIMEOUT) -> list[Endpoint]:
    """Every candidate endpoint, probed in parallel, in discovery order."""
    cands = candidates(extra)
    with ThreadPoolExecutor(max_workers=max(1, len(cands))) as pool:
        futures = [pool.submit(probe, n, u, s, timeout) for n, u, s in cands]
        return [f.result() for f in futures]


def choose(endpoints: Iterable[Endpoint], preferred: str = "") -> Endpoint | None:
    """The endpoint to use: the preferred one when usable, else the first usable."""
    eps = list(endpoints)
    if preferred:
        want = normalise_url(preferred)
        for ep in eps:
            if (ep.url == want or ep.name == preferred) and ep.usable:
                return ep
    return next((ep for ep in eps if ep.usable), None)
