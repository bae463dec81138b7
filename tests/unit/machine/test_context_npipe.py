"""The berth docker context on Windows: the engine's named pipe as an npipe:// host."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vm_backend.errors import InputError
from vm_backend.machine.context import engine_host_url, read_context_host, write_context
from vm_backend.machine.paths import MachinePaths, pipe_stem


def test_engine_url_is_unix_or_the_local_npipe(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "docker.sock"
    assert engine_host_url(sock) == f"unix://{sock}"
    paths = MachinePaths.for_machine("dev", tmp_path, windows_pipes=True)
    stem = pipe_stem(tmp_path)
    assert paths.engine_pipe == f"\\\\.\\pipe\\{stem}-dev-docker"
    assert engine_host_url(sock, paths.engine_pipe) == f"npipe:////./pipe/{stem}-dev-docker"
    assert MachinePaths.for_machine("dev", tmp_path, windows_pipes=False).engine_pipe is None


def test_the_context_holds_the_npipe_url(tmp_path: Path) -> None:
    url = "npipe:////./pipe/berth-dev-docker"
    path = write_context(url, config_dir=tmp_path)
    assert json.loads(path.read_text())["Endpoints"]["docker"]["Host"] == url
    assert read_context_host(config_dir=tmp_path) == url


@pytest.mark.parametrize("host", ["npipe:////server/pipe/docker", "npipe://x", "tcp://1.2.3.4:2375"])
def test_remote_pipes_are_refused_like_tcp(tmp_path: Path, host: str) -> None:
    with pytest.raises(InputError, match="local socket"):
        write_context(host, config_dir=tmp_path)


def test_a_python_without_fchmod_still_sets_the_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "fchmod")  # Python < 3.13 on Windows
    path = write_context("unix:///s", config_dir=tmp_path)
    assert path.stat().st_mode & 0o777 == 0o644
