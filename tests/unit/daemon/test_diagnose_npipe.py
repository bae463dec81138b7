"""Diagnose names and uses the engine's real endpoint: a named pipe on Windows.

The ``engine`` check pings ``MachineService.engine_endpoint`` (a socket path, or the pipe's
name) and gives docker-py ``engine_url`` (``unix://...`` or ``npipe:////./pipe/...``); the
support bundle reads the engine through the same URL. Windows is modelled on Linux by
MachinePaths' ``windows_pipes``; the ping and docker-py are faked (no VM here).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import docker.errors
import pytest

from vm_backend.daemon.diagnose import FAILED, OK, _Diagnose, write_bundle
from vm_backend.daemon.service import MachineService
from vm_backend.machine.hostinfo import Arch
from vm_backend.machine.paths import MachinePaths


def _pipe(service: MachineService) -> tuple[str, str]:
    """The machine's engine pipe name, and the npipe URL docker and docker-py expect."""
    name = service.machine.paths.engine_pipe
    assert name is not None and name.startswith("\\\\.\\pipe\\berth-")
    return name, "npipe:////./pipe/" + name.removeprefix("\\\\.\\pipe\\")


class _FakeMachine:
    """What MachineService and diagnose read from a Machine."""

    def __init__(self, home: Path, windows_pipes: bool) -> None:
        self.paths = MachinePaths.for_machine("dev", home, windows_pipes=windows_pipes)
        self.spec = SimpleNamespace(arch=Arch.AMD64)
        for name in ("machine.json", "console.log", "qemu.log"):
            self.paths.state_dir.mkdir(parents=True, exist_ok=True)
            (self.paths.state_dir / name).write_text(f"{name}\n")

    def add_readiness_hook(self, *_a: Any) -> None:
        pass

    def on_stage(self, *_a: Any) -> None:
        pass

    def on_state_change(self, *_a: Any) -> None:
        pass


class _FakeEngine:
    def __init__(self) -> None:
        self.images = SimpleNamespace(list=lambda: [SimpleNamespace(tags=["busybox:latest"])])
        self.containers = SimpleNamespace(list=lambda all=False: [])
        self.closed = False

    def version(self) -> dict[str, str]:
        return {"Version": "26.1.5"}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """docker.DockerClient replaced: records each base_url and returns a fake engine."""
    urls: list[str] = []

    def client(base_url: str, timeout: int) -> _FakeEngine:
        urls.append(base_url)
        return _FakeEngine()

    monkeypatch.setattr(docker, "DockerClient", client)
    return urls


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The engine ping replaced: records the address it was given and answers OK."""
    seen: list[str] = []

    def ping(address: str) -> bool:
        seen.append(address)
        return True

    monkeypatch.setattr("vm_backend.daemon.service.ping_unix", ping)
    return seen


def _service(tmp_path: Path, windows_pipes: bool) -> MachineService:
    machine = _FakeMachine(tmp_path / "home", windows_pipes)
    service = MachineService("dev", machine=machine, manage_context=False)  # type: ignore[arg-type]
    service.relay = object()  # type: ignore[assignment]  # the engine socket is served
    return service


def test_engine_check_on_windows_pings_the_pipe_and_gives_docker_py_its_npipe_url(
    tmp_path: Path, clients: list[str], pings: list[str]
) -> None:
    service = _service(tmp_path, windows_pipes=True)
    name, url = _pipe(service)
    d = _Diagnose(service, None)
    assert d.check_engine()
    assert pings == [name]
    assert clients == [url]
    check = d.checks[-1]
    assert check.status == OK and check.detail == f"{url} answers /_ping"
    assert d.image == "busybox:latest"
    assert "unix://" not in check.detail and "docker.sock" not in check.detail


def test_engine_check_elsewhere_keeps_the_unix_socket(
    tmp_path: Path, clients: list[str], pings: list[str]
) -> None:
    service = _service(tmp_path, windows_pipes=False)
    d = _Diagnose(service, None)
    assert d.check_engine()
    sock = service.machine.paths.run_dir / "docker.sock"
    assert pings == [str(sock)]
    assert clients == [f"unix://{sock}"]
    assert d.checks[-1].detail == f"unix://{sock} answers /_ping"


def test_a_silent_engine_pipe_is_named_by_the_url_the_user_can_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clients: list[str]
) -> None:
    def refused(address: str) -> bool:
        raise FileNotFoundError(2, "The system cannot find the file specified", address)

    monkeypatch.setattr("vm_backend.daemon.service.ping_unix", refused)
    service = _service(tmp_path, windows_pipes=True)
    d = _Diagnose(service, None)
    assert not d.check_engine()
    check = d.checks[-1]
    assert check.status == FAILED
    assert check.detail.startswith(f"GET /_ping on {_pipe(service)[1]}: ")
    assert "cannot find the file" in check.detail and "dockerd.log" in check.fix
    assert clients == []  # docker-py is not tried when the ping fails


def test_docker_py_without_pywin32_is_a_failed_hop_with_its_fix_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pings: list[str]
) -> None:
    def no_pywin32(base_url: str, timeout: int) -> Any:
        # docker-py's own words when its npipe transport cannot import pywin32.
        raise docker.errors.DockerException("Install pypiwin32 package to enable npipe:// support")

    monkeypatch.setattr(docker, "DockerClient", no_pywin32)
    service = _service(tmp_path, windows_pipes=True)
    d = _Diagnose(service, None)
    assert not d.check_engine()
    check = d.checks[-1]
    assert check.status == FAILED and _pipe(service)[1] in check.detail
    assert "pywin32" in check.fix and "reinstall Berth" in check.fix

    def hung(base_url: str, timeout: int) -> Any:
        raise docker.errors.DockerException("Read timed out")

    monkeypatch.setattr(docker, "DockerClient", hung)
    d = _Diagnose(_service(tmp_path, windows_pipes=True), None)
    assert not d.check_engine()
    assert "pywin32" not in d.checks[-1].fix and "dockerd.log" in d.checks[-1].fix


def test_bundle_reads_the_engine_through_the_pipe_url(
    tmp_path: Path, clients: list[str]
) -> None:
    service = _service(tmp_path, windows_pipes=True)
    service.status_json = lambda: {"name": "dev", "state": "running"}  # type: ignore[method-assign]
    dest = tmp_path / "bundle.tar.gz"
    write_bundle(service, dest, [], None)
    assert clients == [_pipe(service)[1]]
    with tarfile.open(dest) as tar:
        member = tar.extractfile("berth-bundle/versions.json")
        assert member is not None
        assert b'"engine": {\n    "Version": "26.1.5"' in member.read()
