"""A remote engine over ``ssh://user@host``: docker-py's paramiko transport, host key checked.

The "remote" is a real OpenSSH server on 127.0.0.1 in front of the local dockerd (docker-py
runs ``docker system dial-stdio`` there). The host key must be in known_hosts: an unknown
host is refused, never trusted on first use.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sshd_fixtures import SshdServer, need_sshd, start_sshd
from vm_backend.engine.client import EngineClient
from vm_backend.engine.discovery import probe
from vm_backend.engine.models import EndpointSource, EngineKind

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    need_sshd()
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI (for dial-stdio on the remote side) is not installed")
    workdir = tmp_path_factory.mktemp("remote-sshd")
    server = start_sshd(workdir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ssh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd: SshdServer) -> Path:
    """A HOME whose ~/.ssh holds the client key (and, per test, known_hosts)."""
    home = tmp_path / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    key = ssh_dir / "id_ed25519"
    shutil.copy(sshd.keys.client.private_path, key)
    key.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    return home


def _url(sshd: SshdServer) -> str:
    return f"ssh://root@127.0.0.1:{sshd.port}"


def test_unknown_host_key_is_refused(ssh_home: Path, sshd: SshdServer) -> None:
    ep = probe("remote", _url(sshd), EndpointSource.MANUAL, timeout=20)
    assert not ep.usable
    assert "not in known_hosts" in ep.reason, ep.reason
    assert ep.hint


def test_known_host_reaches_the_remote_engine(ssh_home: Path, sshd: SshdServer) -> None:
    host_key = sshd.keys.host.public_openssh.split()
    line = f"[127.0.0.1]:{sshd.port} {host_key[0]} {host_key[1]}\n"
    (ssh_home / ".ssh" / "known_hosts").write_text(line)
    ep = probe("remote", _url(sshd), EndpointSource.MANUAL, timeout=30)
    assert ep.usable, f"{ep.reason} / {ep.hint}"
    assert ep.kind is EngineKind.DOCKER and ep.api_version
    client = EngineClient(_url(sshd))
    try:
        assert client.ping()
        assert isinstance(client.containers(all=True), list)
    finally:
        client.close()


def test_client_to_an_unknown_host_fails_with_words(ssh_home: Path, sshd: SshdServer) -> None:
    from vm_backend.engine.errors import EngineUnavailable

    with pytest.raises(EngineUnavailable, match="known_hosts"):
        EngineClient(_url(sshd))
