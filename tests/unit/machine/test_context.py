"""Unit tests for vm_backend.machine.context against a temporary DOCKER_CONFIG."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vm_backend.errors import InputError
from vm_backend.machine.context import (
    DockerContextError,
    context_dir,
    current_context,
    docker_config_dir,
    read_context_host,
    remove_context,
    use_context,
    write_context,
)

URL = "unix:///home/u/.local/share/berth/default/run/docker.sock"


def test_meta_json_is_in_docker_format_at_the_hashed_path(tmp_path: Path) -> None:
    path = write_context(URL, config_dir=tmp_path)
    digest = hashlib.sha256(b"berth").hexdigest()
    assert path == tmp_path / "contexts" / "meta" / digest / "meta.json"
    meta = json.loads(path.read_text())
    assert meta == {
        "Name": "berth",
        "Metadata": {"Description": "Berth helper VM"},
        "Endpoints": {"docker": {"Host": URL, "SkipTLSVerify": False}},
    }
    assert read_context_host(config_dir=tmp_path) == URL


def test_update_replaces_the_endpoint_and_keeps_extra_metadata(tmp_path: Path) -> None:
    path = write_context(URL, config_dir=tmp_path)
    meta = json.loads(path.read_text())
    meta["Metadata"]["Owner"] = "someone"
    path.write_text(json.dumps(meta))
    write_context("unix:///tmp/other.sock", config_dir=tmp_path)
    meta = json.loads(path.read_text())
    assert meta["Metadata"]["Owner"] == "someone"
    assert meta["Endpoints"]["docker"]["Host"] == "unix:///tmp/other.sock"


def test_writing_never_changes_current_context(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"currentContext": "mine", "auths": {"r": {}}}))
    write_context(URL, config_dir=tmp_path)
    assert json.loads(config.read_text()) == {"currentContext": "mine", "auths": {"r": {}}}


def test_tcp_endpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        write_context("tcp://127.0.0.1:2375", config_dir=tmp_path)


def test_use_context_keeps_other_keys_and_mode(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"r": {"auth": "x"}}}))
    os.chmod(config, 0o600)
    write_context(URL, config_dir=tmp_path)
    use_context("berth", tmp_path)
    assert current_context(tmp_path) == "berth"
    assert json.loads(config.read_text())["auths"] == {"r": {"auth": "x"}}
    assert config.stat().st_mode & 0o777 == 0o600
    use_context(None, tmp_path)
    assert current_context(tmp_path) is None


def test_use_unknown_context_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DockerContextError, match="no docker context"):
        use_context("berth", tmp_path)


def test_remove_deletes_meta_and_tls(tmp_path: Path) -> None:
    write_context(URL, config_dir=tmp_path)
    tls = tmp_path / "contexts" / "tls" / hashlib.sha256(b"berth").hexdigest()
    tls.mkdir(parents=True)
    assert remove_context(config_dir=tmp_path)
    assert not context_dir("berth", tmp_path).exists()
    assert not tls.exists()
    assert not remove_context(config_dir=tmp_path)


def test_remove_current_context_needs_confirmation(tmp_path: Path) -> None:
    write_context(URL, config_dir=tmp_path)
    use_context("berth", tmp_path)
    with pytest.raises(DockerContextError, match="current context"):
        remove_context(config_dir=tmp_path)
    assert context_dir("berth", tmp_path).exists()
    assert remove_context(config_dir=tmp_path, reset_current=True)
    assert current_context(tmp_path) is None


def test_broken_config_json_is_reported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DockerContextError, match="not valid JSON"):
        current_context(tmp_path)


def test_docker_config_env_is_honoured(tmp_path: Path) -> None:
    assert docker_config_dir({"DOCKER_CONFIG": str(tmp_path)}) == tmp_path
    assert docker_config_dir({}) == Path.home() / ".docker"


def test_the_real_docker_cli_reads_the_context(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed")
    write_context(URL, config_dir=tmp_path)
    out = subprocess.run(
        [docker, "context", "inspect", "berth", "--format", "{{.Endpoints.docker.Host}}"],
        env={**os.environ, "DOCKER_CONFIG": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == URL
