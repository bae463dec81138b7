"""Discovery per platform, run on Linux: each list is built from an injected platform, home
folder and environment; Windows pipes are looked up through a fake WaitNamedPipe and the
hints are checked with ``sys.platform`` set.

macOS lists Docker Desktop, /var/run/docker.sock, the podman machine (4.x and 5.x
addresses), Colima, OrbStack and Rancher Desktop; Windows lists Docker Desktop's and the
podman machine's pipes and no unix socket; Linux is what it always was. A product with
several addresses is one row, at the first that exists, else at the newest; a missing or
refused one says how to start that product, never systemctl off Linux. On macOS and
Windows each other podman machine, named by its config file in a fake podman config dir,
is a row of its own at its own socket or pipe; names podman could not have made, and
missing or unreadable dirs, add nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.unit.winpipe_fake import win_error
from vm_backend import winpipe
from vm_backend.engine import discovery
from vm_backend.engine.models import EndpointSource, EndpointStatus

S = EndpointSource


class _Pipes:
    """wait_named_pipe as Windows answers it, recording every lookup."""

    def __init__(self, existing: set[str], denied: frozenset[str] = frozenset()) -> None:
        self.existing, self.denied = existing, denied
        self.calls: list[tuple[str, int]] = []

    def wait_named_pipe(self, name: str, timeout_ms: int) -> None:
        self.calls.append((name, timeout_ms))
        if name in self.denied:
            raise win_error(winpipe.ERROR_ACCESS_DENIED)
        if name not in self.existing:
            raise win_error(winpipe.ERROR_FILE_NOT_FOUND)


@pytest.fixture(autouse=True)
def quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No DOCKER_HOST, no docker context, no Berth VMs: only the platform's own list."""
    monkeypatch.setenv("BERTH_HOME", str(tmp_path / "berth"))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "Users" / "ada"
    h.mkdir(parents=True)
    return h


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for a unix socket path (108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="bdp", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**_kw: Any) -> Any:
        raise AssertionError("a missing endpoint is reported before docker-py")

    monkeypatch.setattr(docker, "DockerClient", refuse)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def _mac(home: Path, tmpdir: Path, **env: str) -> list[tuple[str, str, EndpointSource]]:
    return discovery.candidates(platform="darwin", home=home, env={"TMPDIR": f"{tmpdir}/", **env})


def test_macos_lists_what_mac_users_run_at_their_newest_addresses(
    home: Path, tmp_path: Path
) -> None:
    tmpdir = tmp_path / "T"
    assert _mac(home, tmpdir) == [
        ("Docker Desktop", f"unix://{home}/.docker/run/docker.sock", S.DOCKER_DESKTOP),
        ("docker (/var/run/docker.sock)", "unix:///var/run/docker.sock", S.SHARED_DOCKER_SOCKET),
        ("podman machine", f"unix://{tmpdir}/podman/podman-machine-default-api.sock",
         S.PODMAN_MACHINE),
        ("Colima", f"unix://{home}/.colima/default/docker.sock", S.COLIMA),
        ("OrbStack", f"unix://{home}/.orbstack/run/docker.sock", S.ORBSTACK),
        ("Rancher Desktop", f"unix://{home}/.rd/docker.sock", S.RANCHER_DESKTOP),
    ]


def _row(cands: list[tuple[str, str, EndpointSource]], source: EndpointSource) -> str:
    (url,) = [u for _n, u, s in cands if s is source]
    return url


def test_macos_podman_4_machine_is_found_at_its_qemu_socket(home: Path, tmp_path: Path) -> None:
    sock = _touch(home / ".local/share/containers/podman/machine/qemu/podman.sock")
    assert _row(_mac(home, tmp_path / "T"), S.PODMAN_MACHINE) == f"unix://{sock}"


def test_macos_podman_5_api_socket_wins_over_its_helper_link(home: Path, tmp_path: Path) -> None:
    api = _touch(tmp_path / "T/podman/podman-machine-default-api.sock")
    link = home / ".local/share/containers/podman/machine/podman.sock"
    link.parent.mkdir(parents=True)
    link.symlink_to(api)
    assert _row(_mac(home, tmp_path / "T"), S.PODMAN_MACHINE) == f"unix://{api}"
    # Started from a shell whose TMPDIR differs: the helper's link still finds it.
    assert _row(_mac(home, tmp_path / "other"), S.PODMAN_MACHINE) == f"unix://{link}"


def test_macos_honours_xdg_data_home_and_defaults_tmpdir_like_podman(home: Path) -> None:
    data = home / "data"
    sock = _touch(data / "containers/podman/machine/podman.sock")
    cands = discovery.candidates(platform="darwin", home=home, env={"XDG_DATA_HOME": str(data)})
    assert _row(cands, S.PODMAN_MACHINE) == f"unix://{sock}"
    sock.unlink()
    cands = discovery.candidates(platform="darwin", home=home, env={})
    assert _row(cands, S.PODMAN_MACHINE) == "unix:///tmp/podman/podman-machine-default-api.sock"


def _podman_configs(config: Path, provider: str, *names: str) -> None:
    """Machine config files as podman leaves them; their content is never read."""
    folder = config / "containers/podman/machine" / provider
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("not json: discovery reads only the names")


def _podman_rows(cands: list[tuple[str, str, EndpointSource]]) -> list[tuple[str, str]]:
    return [(n, u) for n, u, s in cands if s is S.PODMAN_MACHINE]


def test_macos_lists_each_podman_machine_at_its_own_socket(home: Path, tmp_path: Path) -> None:
    tmpdir = tmp_path / "T"
    _podman_configs(home / ".config", "applehv", "podman-machine-default.json",
                    "podman-machine-default.ign", "podman-machine-default.lock", "mybox.json")
    _podman_configs(home / ".config", "libkrun", "krun.box_2.json")
    _podman_configs(home / ".config", "qemu", "old4.json", "mybox.json")
    api = _touch(tmpdir / "podman/mybox-api.sock")
    podman4 = _touch(home / ".local/share/containers/podman/machine/old4/podman.sock")
    cands = _mac(home, tmpdir)
    machine = home / ".local/share/containers/podman/machine"
    # Default first (unchanged), then the others sorted, each once, before Colima.
    assert _podman_rows(cands) == [
        ("podman machine", f"unix://{tmpdir}/podman/podman-machine-default-api.sock"),
        ("podman machine krun.box_2", f"unix://{tmpdir}/podman/krun.box_2-api.sock"),
        ("podman machine mybox", f"unix://{api}"),
        ("podman machine old4", f"unix://{podman4}"),
    ]
    assert [n for n, _u, _s in cands].index("Colima") == 6
    # The shared podman 4.5 socket stays the default machine's row's alone.
    shared = _touch(machine / "qemu/podman.sock")
    assert _podman_rows(_mac(home, tmpdir))[0] == ("podman machine", f"unix://{shared}")
    assert f"unix://{shared}" not in [u for _n, u in _podman_rows(_mac(home, tmpdir))[1:]]


def test_macos_podman_machines_follow_xdg_config_home(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    _podman_configs(config, "applehv", "elsewhere.json")
    _podman_configs(home / ".config", "applehv", "ignored.json")
    names = [n for n, _u in _podman_rows(_mac(home, tmp_path / "T", XDG_CONFIG_HOME=str(config)))]
    assert names == ["podman machine", "podman machine elsewhere"]


def test_podman_machine_names_podman_could_not_make_are_ignored(
    home: Path, tmp_path: Path
) -> None:
    long_ok, too_long = "a" * 30, "a" * 31
    _podman_configs(home / ".config", "applehv", f"{long_ok}.json", f"{too_long}.json",
                    "-dash.json", ".hidden.json", "has space.json", "semi;colon.json",
                    "qemu.json", "AppleHV.json", "caf\u00e9.json", ".json", "ok.JSON",
                    "ok.json.orig", "new\nline.json")
    (home / ".config/containers/podman/machine/applehv/dir.json").mkdir()
    names = [n for n, _u in _podman_rows(_mac(home, tmp_path / "T"))]
    assert names == ["podman machine", f"podman machine {long_ok}"]


def test_a_missing_or_unreadable_podman_config_dir_adds_nothing(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _mac(home, tmp_path / "T")
    assert [n for n, _u in _podman_rows(before)] == ["podman machine"]
    machine = home / ".config/containers/podman/machine"
    machine.mkdir(parents=True)
    (machine / "qemu").write_text("a file where a folder should be")
    assert _mac(home, tmp_path / "T") == before
    _podman_configs(home / ".config", "applehv", "secret.json")
    real_scandir = os.scandir

    def denied(path: Any) -> Any:
        if Path(path) == machine / "applehv":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(discovery.os, "scandir", denied)
    assert _mac(home, tmp_path / "T") == before
    monkeypatch.setattr(discovery.os, "scandir", real_scandir)
    assert [n for n, _u in _podman_rows(_mac(home, tmp_path / "T"))] == [
        "podman machine", "podman machine secret"]


def test_macos_colima_in_its_xdg_home_is_found(home: Path, tmp_path: Path) -> None:
    sock = _touch(home / ".config/colima/default/docker.sock")
    assert _row(_mac(home, tmp_path / "T"), S.COLIMA) == f"unix://{sock}"
    legacy = _touch(home / ".colima/default/docker.sock")
    assert _row(_mac(home, tmp_path / "T"), S.COLIMA) == f"unix://{legacy}"


def test_macos_a_link_to_a_listed_socket_is_one_row(home: Path, tmp_path: Path) -> None:
    desktop = _touch(home / ".docker/run/docker.sock")
    link = tmp_path / "docker.sock"
    link.symlink_to(desktop)
    cands = _mac(home, tmp_path / "T", DOCKER_HOST=f"unix://{link}")
    assert cands[0] == ("DOCKER_HOST", f"unix://{link}", S.DOCKER_HOST)
    assert not [c for c in cands if c[2] is S.DOCKER_DESKTOP]
    # Elsewhere a link is not followed (Linux keeps its rows as they were).
    linux = discovery.candidates(platform="linux", home=home,
                                 env={"DOCKER_HOST": f"unix://{link}"})
    assert linux[0][2] is S.DOCKER_HOST and len(linux) == 5


def test_windows_lists_docker_desktop_and_podman_pipes_without_connecting(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipes = _Pipes(set())
    monkeypatch.setattr(discovery, "default_api", lambda: pipes)
    cands = discovery.candidates(platform="win32", home=home, env={})
    assert cands == [
        ("Docker Desktop", "npipe:////./pipe/docker_engine", S.DOCKER_DESKTOP),
        ("podman machine", "npipe:////./pipe/podman-machine-default", S.PODMAN_MACHINE),
    ]
    # Only Docker Desktop has two addresses to choose from: a 1 ms WaitNamedPipe each.
    assert pipes.calls == [("\\\\.\\pipe\\docker_engine", 1),
                           ("\\\\.\\pipe\\dockerDesktopLinuxEngine", 1)]


def test_windows_lists_each_podman_machine_at_its_own_pipe(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _podman_configs(home / ".config", "wsl", "podman-machine-default.json", "dev.json",
                    "podman-x.json", "bad name.json")
    _podman_configs(home / ".config", "hyperv", "hv.json", "dev.json")
    pipes = _Pipes(set())
    monkeypatch.setattr(discovery, "default_api", lambda: pipes)
    cands = discovery.candidates(platform="win32", home=home, env={})
    # Listed whether running or not (`dev` is in two providers: one row), at podman's own
    # pipe name: "podman-" + name, unless the name already starts with podman.
    assert _podman_rows(cands) == [
        ("podman machine", "npipe:////./pipe/podman-machine-default"),
        ("podman machine dev", "npipe:////./pipe/podman-dev"),
        ("podman machine hv", "npipe:////./pipe/podman-hv"),
        ("podman machine podman-x", "npipe:////./pipe/podman-x"),
    ]
    # One address each: no pipe of theirs is looked up while listing.
    assert [c[0] for c in pipes.calls] == ["\\\\.\\pipe\\docker_engine",
                                           "\\\\.\\pipe\\dockerDesktopLinuxEngine"]


def test_windows_podman_config_dir_ignores_xdg_config_home(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discovery, "default_api", lambda: _Pipes(set()))
    _podman_configs(tmp_path / "cfg", "wsl", "elsewhere.json")
    cands = discovery.candidates(platform="win32", home=home,
                                 env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert [n for n, _u in _podman_rows(cands)] == ["podman machine"]


def test_linux_ignores_podman_machine_configs(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _podman_configs(home / ".config", "qemu", "mybox.json")
    assert not _podman_rows(discovery.candidates(platform="linux", home=home, env={}))


def test_a_named_podman_machine_says_how_to_start_it_by_name(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_docker: None
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    _podman_configs(home / ".config", "applehv", "mybox.json")
    rows = [c for c in _mac(home, tmp_path / "T") if c[2] is S.PODMAN_MACHINE]
    default, named = (discovery.probe(*row) for row in rows)
    assert named.status is EndpointStatus.MISSING
    assert named.hint == "Start it: podman machine start mybox."
    assert default.hint == "Start it: podman machine start."


def test_a_refused_named_podman_machine_socket_says_start_it_by_name(short_dir: Path) -> None:
    path = short_dir / "box-api.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(path))
        ep = discovery.probe("podman machine box", f"unix://{path}", S.PODMAN_MACHINE, timeout=2)
    assert ep.status is EndpointStatus.NOT_ANSWERING
    assert ep.hint == "Start it: podman machine start box."


def test_windows_docker_desktops_linux_engine_pipe_is_used_when_alone(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipes = _Pipes({"\\\\.\\pipe\\dockerDesktopLinuxEngine"})
    monkeypatch.setattr(discovery, "default_api", lambda: pipes)
    cands = discovery.candidates(platform="win32", home=home, env={})
    assert _row(cands, S.DOCKER_DESKTOP) == "npipe:////./pipe/dockerDesktopLinuxEngine"
    pipes.existing.add("\\\\.\\pipe\\docker_engine")
    cands = discovery.candidates(platform="win32", home=home, env={})
    assert _row(cands, S.DOCKER_DESKTOP) == "npipe:////./pipe/docker_engine"


def test_linux_list_is_unchanged(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pipes() -> Any:
        raise AssertionError("no pipe lookups on Linux")

    monkeypatch.setattr(discovery, "default_api", no_pipes)
    run = tmp_path / "run"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    assert discovery.candidates(platform="linux", home=home, env={}) == [
        ("docker", "unix:///var/run/docker.sock", S.DOCKER_ROOTFUL),
        ("docker (rootless)", f"unix://{run}/docker.sock", S.DOCKER_ROOTLESS),
        ("podman", "unix:///run/podman/podman.sock", S.PODMAN_ROOTFUL),
        ("podman (rootless)", f"unix://{run}/podman/podman.sock", S.PODMAN_ROOTLESS),
    ]


def test_every_source_has_its_own_json_value() -> None:
    # An enum with a repeated value would alias a member and merge two sources' rows.
    assert len(EndpointSource.__members__) == len({s.value for s in EndpointSource})


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (S.DOCKER_DESKTOP, "Start Docker Desktop."),
        (S.SHARED_DOCKER_SOCKET, "podman-mac-helper"),
        (S.PODMAN_MACHINE, "podman machine start"),
        (S.COLIMA, "colima start"),
        (S.ORBSTACK, "Start OrbStack"),
        (S.RANCHER_DESKTOP, "Rancher Desktop with the dockerd (moby)"),
    ],
)
def test_macos_missing_engines_say_how_to_start_them(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_docker: None,
    source: EndpointSource, words: str,
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    (name, url, _s), = [c for c in _mac(home, tmp_path / "T") if c[2] is source]
    if source is S.SHARED_DOCKER_SOCKET:
        url = f"unix://{tmp_path}/var/run/docker.sock"  # this Linux box may have its own
    ep = discovery.probe(name, url, source)
    assert ep.status is EndpointStatus.MISSING
    assert ep.reason == f"{url.removeprefix('unix://')} does not exist"
    assert words in ep.hint and "systemctl" not in ep.hint


def test_a_refused_colima_socket_says_colima_start(short_dir: Path) -> None:
    path = short_dir / "docker.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(path))  # bound, never listening: connect() is refused
        ep = discovery.probe("Colima", f"unix://{path}", S.COLIMA, timeout=2)
    assert ep.status is EndpointStatus.NOT_ANSWERING
    assert "refused" in ep.reason and ep.hint == "Start it: colima start."


def test_macos_permission_hint_has_no_docker_group(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = short_dir / "docker.sock"

    def denied(**_kw: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(docker, "DockerClient", denied)
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(path))
        monkeypatch.setattr(sys, "platform", "darwin")
        mac = discovery.probe("Docker Desktop", f"unix://{path}", S.DOCKER_DESKTOP)
        monkeypatch.setattr(sys, "platform", "linux")
        linux = discovery.probe("docker", f"unix://{path}", S.DOCKER_ROOTFUL)
    assert mac.status is EndpointStatus.PERMISSION_DENIED
    assert "another account" in mac.hint and "usermod" not in mac.hint
    assert "usermod -aG docker" in linux.hint


@pytest.mark.parametrize(
    ("url", "source", "words"),
    [
        ("npipe:////./pipe/docker_engine", S.DOCKER_DESKTOP, "Start Docker Desktop"),
        ("npipe:////./pipe/podman-machine-default", S.PODMAN_MACHINE, "podman machine start"),
    ],
)
def test_windows_missing_pipes_say_how_to_start_them(
    monkeypatch: pytest.MonkeyPatch, no_docker: None,
    url: str, source: EndpointSource, words: str,
) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(discovery, "default_api", lambda: _Pipes(set()))
    ep = discovery.probe(source.value, url, source)
    name = "\\\\.\\pipe\\" + url.rsplit("/", 1)[1]
    assert ep.status is EndpointStatus.MISSING
    assert ep.reason == f"the pipe {name} does not exist"
    assert words in ep.hint and "systemctl" not in ep.hint


def test_windows_podman_pipe_of_another_account_names_the_windows_fix(
    monkeypatch: pytest.MonkeyPatch, no_docker: None
) -> None:
    name = "\\\\.\\pipe\\podman-machine-default"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(discovery, "default_api",
                        lambda: _Pipes(set(), denied=frozenset({name})))
    ep = discovery.probe("podman machine", "npipe:////./pipe/podman-machine-default",
                         S.PODMAN_MACHINE)
    assert ep.status is EndpointStatus.PERMISSION_DENIED
    assert "podman machine's pipe" in ep.hint and "docker-users" in ep.hint
    assert "usermod" not in ep.hint and "systemctl" not in ep.hint


def test_address_examples_fit_the_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    assert discovery.address_examples().startswith("npipe:////./pipe/NAME")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert discovery.address_examples().startswith("unix:///path")
