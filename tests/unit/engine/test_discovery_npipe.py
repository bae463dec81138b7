"""Discovery and Windows named pipes, run on Linux with ``sys.platform`` set to win32.

A Berth VM's engine is listed by its npipe URL when its pipe exists (looked up with
WaitNamedPipe through a fake of the winpipe API, never a connect); npipe:// elsewhere is
unsupported with the forms that work; docker-py's pywin32 errors (not OSErrors) are
classified like socket errors, never raised out of ``probe``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.unit.winpipe_fake import win_error
from vm_backend import winpipe
from vm_backend.engine import discovery
from vm_backend.engine.models import EndpointSource, EndpointStatus
from vm_backend.machine.paths import MachinePaths


class _Pipes:
    """wait_named_pipe as Windows answers it: at once for a free or missing pipe."""

    def __init__(self, existing: set[str], busy: frozenset[str] = frozenset(),
                 denied: frozenset[str] = frozenset()) -> None:
        self.existing, self.busy, self.denied = existing, busy, denied
        self.calls: list[tuple[str, int]] = []

    def wait_named_pipe(self, name: str, timeout_ms: int) -> None:
        self.calls.append((name, timeout_ms))
        if name in self.denied:
            raise win_error(winpipe.ERROR_ACCESS_DENIED)
        if name in self.busy:
            raise win_error(winpipe.ERROR_SEM_TIMEOUT)
        if name not in self.existing:
            raise win_error(winpipe.ERROR_FILE_NOT_FOUND)


class _PywinError(Exception):
    """pywintypes.error's shape: (winerror, funcname, strerror), not an OSError."""

    def __init__(self, code: int, funcname: str, strerror: str) -> None:
        super().__init__(code, funcname, strerror)
        self.winerror, self.funcname, self.strerror = code, funcname, strerror


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("BERTH_HOME", str(h))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))  # no context
    for name in ("dev", "off"):
        (h / "machines" / name).mkdir(parents=True)
        (h / "machines" / name / "machine.json").write_text("{}")
    return h


def _pipe_name(home: Path, machine: str) -> str:
    name = MachinePaths.for_machine(machine, home, windows_pipes=True).engine_pipe
    assert name is not None and name.startswith("\\\\.\\pipe\\")
    return name


def _url(pipe_name: str) -> str:
    return "npipe:////./pipe/" + pipe_name.removeprefix("\\\\.\\pipe\\")


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**_kw: Any) -> Any:
        raise AssertionError("docker-py must not be asked")

    monkeypatch.setattr(docker, "DockerClient", refuse)


def _docker_raises(monkeypatch: pytest.MonkeyPatch, err: BaseException) -> list[str]:
    urls: list[str] = []

    def client(base_url: str, **_kw: Any) -> Any:
        urls.append(base_url)
        raise err

    monkeypatch.setattr(docker, "DockerClient", client)
    return urls


def test_on_windows_a_running_vm_is_listed_by_its_npipe_url(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = _pipe_name(home, "dev")
    pipes = _Pipes({dev})
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(discovery, "default_api", lambda: pipes)
    assert discovery.berth_vm_endpoints() == [("dev", _url(dev))]
    # Looked up without connecting: a 1 ms WaitNamedPipe per machine, no CreateFile.
    assert pipes.calls == [(dev, 1), (_pipe_name(home, "off"), 1)]
    vms = [c for c in discovery.candidates() if c[2] is EndpointSource.BERTH_VM]
    assert vms == [("berth VM dev", _url(dev), EndpointSource.BERTH_VM)]
    assert not any("docker.sock" in url and "berth" in url for _, url, _ in discovery.candidates())


def test_a_busy_pipe_still_counts_as_a_running_vm(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = _pipe_name(home, "dev")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(discovery, "default_api", lambda: _Pipes(set(), busy=frozenset({dev})))
    assert discovery.berth_vm_endpoints() == [("dev", _url(dev))]


def test_elsewhere_the_vm_is_its_unix_socket_and_no_pipe_is_looked_up(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pipes() -> Any:
        raise AssertionError("no pipe lookups off Windows")

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(discovery, "default_api", no_pipes)
    run_dir = MachinePaths.for_machine("dev", home, windows_pipes=False).run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "docker.sock").touch()
    assert discovery.berth_vm_endpoints() == [("dev", f"unix://{run_dir / 'docker.sock'}")]


def test_npipe_off_windows_is_unsupported_with_the_forms_that_work(
    monkeypatch: pytest.MonkeyPatch, no_docker: None
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    ep = discovery.probe("x", "npipe:////./pipe/docker_engine", EndpointSource.MANUAL)
    assert ep.status is EndpointStatus.UNSUPPORTED
    assert "Windows named pipe" in ep.reason and "not Windows" in ep.reason
    assert "unix:///path" in ep.hint and "Windows only" in ep.hint


def test_a_missing_vm_pipe_is_reported_before_docker_py_with_the_start_hint(
    home: Path, monkeypatch: pytest.MonkeyPatch, no_docker: None
) -> None:
    dev = _pipe_name(home, "dev")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(discovery, "default_api", lambda: _Pipes(set()))
    ep = discovery.probe("berth VM dev", _url(dev), EndpointSource.BERTH_VM)
    assert ep.status is EndpointStatus.MISSING
    assert ep.reason == f"the pipe {dev} does not exist"
    assert ep.hint == "Start the VM: berth machine start."


def test_a_pipe_of_another_account_is_permission_denied_with_a_windows_hint(
    monkeypatch: pytest.MonkeyPatch, no_docker: None
) -> None:
    name = "\\\\.\\pipe\\docker_engine"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(discovery, "default_api", lambda: _Pipes(set(), denied=frozenset({name})))
    ep = discovery.probe("DOCKER_HOST", _url(name), EndpointSource.DOCKER_HOST)
    assert ep.status is EndpointStatus.PERMISSION_DENIED
    assert "docker-users" in ep.hint and "usermod" not in ep.hint


@pytest.mark.parametrize(
    ("code", "status", "words"),
    [
        (winpipe.ERROR_ACCESS_DENIED, EndpointStatus.PERMISSION_DENIED, "docker-users"),
        (winpipe.ERROR_FILE_NOT_FOUND, EndpointStatus.MISSING, "Start the VM"),
        (winpipe.ERROR_PIPE_BUSY, EndpointStatus.NOT_ANSWERING, "overloaded"),
    ],
)
def test_docker_pys_pywin32_errors_are_classified_not_raised(
    home: Path, monkeypatch: pytest.MonkeyPatch, code: int, status: EndpointStatus, words: str
) -> None:
    dev = _pipe_name(home, "dev")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(discovery, "default_api", lambda: _Pipes({dev}))
    monkeypatch.setattr(discovery, "PIPE_ERRORS", (_PywinError,))
    urls = _docker_raises(monkeypatch, _PywinError(code, "CreateFile", "refused"))
    ep = discovery.probe("berth VM dev", _url(dev), EndpointSource.BERTH_VM)
    assert urls == [_url(dev)]
    assert ep.status is status and words in ep.hint
    if status is EndpointStatus.MISSING:
        assert ep.reason == "the pipe went away"


def test_docker_py_without_pywin32_says_so(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = _pipe_name(home, "dev")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(discovery, "default_api", lambda: _Pipes({dev}))
    _docker_raises(monkeypatch, docker.errors.DockerException(
        "Install pypiwin32 package to enable npipe:// support"))
    ep = discovery.probe("berth VM dev", _url(dev), EndpointSource.BERTH_VM)
    assert ep.status is EndpointStatus.UNSUPPORTED
    assert "pywin32" in ep.reason and "Reinstall Berth" in ep.hint


def test_a_pipe_on_another_computer_goes_straight_to_docker_py(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pipes() -> Any:
        raise AssertionError("a remote pipe is not looked up locally")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(discovery, "default_api", no_pipes)
    urls = _docker_raises(monkeypatch, docker.errors.DockerException("Read timed out"))
    ep = discovery.probe("x", "npipe:////build-box/pipe/docker_engine", EndpointSource.MANUAL)
    assert urls == ["npipe:////build-box/pipe/docker_engine"]
    assert ep.status is EndpointStatus.NOT_ANSWERING


def test_a_raw_pipe_name_is_read_as_its_npipe_url() -> None:
    assert discovery.normalise_url(" \\\\.\\pipe\\docker_engine ") == (
        "npipe:////./pipe/docker_engine"
    )
    assert discovery.normalise_url("npipe:////./pipe/x") == "npipe:////./pipe/x"
    assert discovery.normalise_url("/run/docker.sock") == "unix:///run/docker.sock"
