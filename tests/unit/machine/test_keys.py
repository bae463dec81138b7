"""Unit tests for vm_backend.machine.keys: generation, modes, reload, fingerprints."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from vm_backend.errors import BerthError
from vm_backend.machine.keys import (
    CLIENT_KEY_NAME,
    HOST_KEY_NAME,
    ensure_machine_keys,
    fingerprint_sha256,
    generate_keypair,
    load_client_pkey,
    load_keypair,
    public_key_from_openssh,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_machine_keys_are_generated_with_private_modes(tmp_path: Path) -> None:
    keys = ensure_machine_keys(tmp_path / "keys", "dev")
    assert mode(tmp_path / "keys") == 0o700
    for pair, name in ((keys.client, CLIENT_KEY_NAME), (keys.host, HOST_KEY_NAME)):
        assert pair.private_path == tmp_path / "keys" / name
        assert mode(pair.private_path) == 0o600
        assert mode(pair.public_path) == 0o644
        assert pair.public_openssh.startswith("ssh-ed25519 AAAA")
        assert pair.public_path.read_text().strip() == pair.public_openssh
    assert keys.client.public_openssh.endswith("berth@dev")
    assert keys.client.public_openssh != keys.host.public_openssh


def test_second_call_loads_the_same_keys(tmp_path: Path) -> None:
    first = ensure_machine_keys(tmp_path, "dev")
    assert ensure_machine_keys(tmp_path, "dev") == first


def test_loose_directory_mode_is_tightened(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    ensure_machine_keys(d, "dev")
    assert mode(d) == 0o700


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "k", "c")
    assert pair.fingerprint.startswith("SHA256:")
    assert fingerprint_sha256(pair.public_openssh) == pair.fingerprint
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pair.public_path)], capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[1] == pair.fingerprint


def test_private_key_is_openssh_format_readable_by_paramiko(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "k", "c")
    assert pair.private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    pkey = load_client_pkey(pair.private_path)
    assert isinstance(pkey, paramiko.Ed25519Key)
    assert pkey.get_base64() == pair.public_openssh.split()[1]
    assert public_key_from_openssh(pair.public_openssh).asbytes() == pkey.asbytes()


def test_stale_public_file_is_rewritten_from_the_private_key(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "k", "c")
    other = generate_keypair(tmp_path / "other", "x")
    pair.public_path.write_text(other.public_openssh + "\n")
    reloaded = load_keypair(pair.private_path)
    assert reloaded.public_openssh.split()[:2] == pair.public_openssh.split()[:2]
    assert pair.public_path.read_text().split()[:2] == pair.public_openssh.split()[:2]


def test_group_readable_private_key_is_refused(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "k", "c")
    os.chmod(pair.private_path, 0o640)
    with pytest.raises(BerthError, match="readable by other users"):
        load_keypair(pair.private_path)


def test_damaged_private_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"garbage")
    os.chmod(path, 0o600)
    with pytest.raises(BerthError, match="damaged"):
        load_keypair(path)


def test_symlink_at_key_path_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious")
    link = tmp_path / "k"
    link.symlink_to(target)
    generate_keypair(link, "c")
    assert target.read_text() == "precious"
    assert not link.is_symlink()
    assert mode(link) == 0o600


def test_symlinked_key_is_refused_on_load(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "real", "c")
    link = tmp_path / "k"
    link.symlink_to(pair.private_path)
    with pytest.raises(BerthError, match="symlink"):
        load_keypair(link)


def test_non_ed25519_public_key_is_refused() -> None:
    with pytest.raises(BerthError, match="ssh-ed25519"):
        fingerprint_sha256("ssh-rsa AAAAB3NzaC1yc2E= x")
