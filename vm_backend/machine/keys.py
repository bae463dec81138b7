"""Per-VM SSH keys, generated on the host: Berth's client key and the guest's host key.

Both are ed25519. The guest's host key is generated here, not in the guest, so that the
host knows it before the first boot and can *pin* it: :class:`~vm_backend.machine.ssh.GuestSSH`
refuses any other key, which defeats a local process that grabs the forwarded port first
(Lima and podman machine accept any key; see research/reliability_perf.md section 1.6).
The private host key reaches the guest through QEMU's fw_cfg (another module's job); this
module only provides the files and the public halves.

Private keys are written 0600 in OpenSSH format, atomically (temporary file + rename in
the same directory) and without following a symlink planted at the path, so a crash
never leaves a half-written key and nobody else ever reads one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vm_backend.errors import BerthError

CLIENT_KEY_NAME = "id_ed25519"
HOST_KEY_NAME = "ssh_host_ed25519_key"
KEY_TYPE = "ssh-ed25519"


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key pair on disk.

    ``public_openssh`` is the one-line ``ssh-ed25519 AAAA... comment`` form (what goes into
    ``authorized_keys``); ``fingerprint`` is OpenSSH's ``SHA256:...`` form for messages.
    """

    private_path: Path
    public_path: Path
    public_openssh: str
    fingerprint: str


@dataclass(frozen=True)
class MachineKeys:
    """The two key pairs of one VM: Berth's client key and the guest's SSH host key."""

    client: KeyPair
    host: KeyPair


def _public_blob(public_openssh: str) -> bytes:
    parts = public_openssh.split()
    if len(parts) < 2 or parts[0] != KEY_TYPE:
        raise BerthError(
            f"not an {KEY_TYPE} public key: {public_openssh[:40]!r}",
            "delete the machine's key files so Berth generates new ones",
        )
    try:
        return base64.b64decode(parts[1], validate=True)
    except ValueError as exc:
        raise BerthError(
            "a public key file is damaged (bad base64)",
            "delete the machine's key files so Berth generates new ones",
        ) from exc


def fingerprint_sha256(public_openssh: str) -> str:
    """OpenSSH's fingerprint (``ssh-keygen -lf``): ``SHA256:`` + unpadded base64 of the blob."""
    digest = hashlib.sha256(_public_blob(public_openssh)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def public_key_from_openssh(public_openssh: str) -> paramiko.PKey:
    """A paramiko key object for a one-line OpenSSH public key (used to pin the host key)."""
    blob = _public_blob(public_openssh)
    return paramiko.Ed25519Key(data=blob)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the start, replacing it atomically.

    The temporary file is created by ``mkstemp`` (O_EXCL, 0600) in the same directory, so
    the secret is never readable by others, even briefly, and ``os.replace`` swaps the
    directory entry: a symlink planted at ``path`` is replaced, never followed.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _ensure_private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.lstat()
    if not os.path.isdir(directory) or os.path.islink(directory):
        raise BerthError(
            f"{directory} is not a directory",
            "remove it so Berth can create its key directory",
        )
    if st.st_uid != os.getuid():
        raise BerthError(
            f"{directory} belongs to another user (uid {st.st_uid})",
            "remove it or fix its owner; Berth keeps private keys only in its own directories",
        )
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)


def generate_keypair(private_path: Path, comment: str) -> KeyPair:
    """Generate a new ed25519 key pair at ``private_path`` (0600) and ``<path>.pub`` (0644).

    Existing files are replaced: callers decide whether regenerating is right (a new host
    key means the guest must receive it before Berth connects again).
    """
    _ensure_private_dir(private_path.parent)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.OpenSSH,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public_line = key.public_key().public_bytes(
        encoding=serialization.Encoding.OpenSSH,
        format=serialization.PublicFormat.OpenSSH,
    ).decode("ascii")
    public_openssh = f"{public_line} {comment}".strip()
    public_path = private_path.with_name(private_path.name + ".pub")
    _write_atomic(private_path, private_pem, 0o600)
    _write_atomic(public_path, (public_openssh + "\n").encode("ascii"), 0o644)
    return KeyPair(private_path, public_path, public_openssh, fingerprint_sha256(public_openssh))


def load_keypair(private_path: Path) -> KeyPair:
    """Load a key pair written by :func:`generate_keypair`, checking that it is usable.

    The public half is derived from the private key (the ``.pub`` file is rewritten if it
    is missing or disagrees), so a stale ``.pub`` can never make Berth pin the wrong key.
    """
    try:
        st = private_path.lstat()
        pem = private_path.read_bytes()
    except FileNotFoundError as exc:
        raise BerthError(
            f"the SSH key {private_path} is missing",
            "recreate the machine, or delete its key files so Berth generates new ones",
        ) from exc
    if os.path.islink(private_path) or st.st_uid != os.getuid():
        raise BerthError(
            f"the SSH key {private_path} is a symlink or belongs to another user",
            "delete it so Berth generates a new one",
        )
    if st.st_mode & 0o077:
        # A group/world-readable key may have leaked; OpenSSH itself refuses such keys.
        raise BerthError(
            f"the SSH key {private_path} is readable by other users (mode {st.st_mode & 0o777:o})",
            "delete it so Berth generates a new one; it may have been copied",
        )
    try:
        key = serialization.load_ssh_private_key(pem, password=None)
    except ValueError as exc:
        raise BerthError(
            f"the SSH key {private_path} is damaged or not an OpenSSH private key",
            "delete it so Berth generates a new one",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BerthError(
            f"the SSH key {private_path} is not an ed25519 key",
            "delete it so Berth generates a new one",
        )
    public_line = key.public_key().public_bytes(
        encoding=serialization.Encoding.OpenSSH,
        format=serialization.PublicFormat.OpenSSH,
    ).decode("ascii")
    public_path = private_path.with_name(private_path.name + ".pub")
    comment = ""
    try:
        existing = public_path.read_text("ascii").strip()
        parts = existing.split(maxsplit=2)
        if len(parts) >= 2 and " ".join(parts[:2]) == public_line:
            comment = parts[2] if len(parts) == 3 else ""
        else:
            existing = ""
    except (FileNotFoundError, UnicodeDecodeError):
        existing = ""
    public_openssh = f"{public_line} {comment}".strip()
    if not existing:
        _write_atomic(public_path, (public_openssh + "\n").encode("ascii"), 0o644)
    return KeyPair(private_path, public_path, public_openssh, fingerprint_sha256(public_openssh))


def ensure_machine_keys(directory: Path, machine_name: str) -> MachineKeys:
    """Load the VM's two key pairs from ``directory``, generating any that are missing.

    ``directory`` is created 0700. Files: ``id_ed25519`` (client) and
    ``ssh_host_ed25519_key`` (guest host key), each with a ``.pub`` beside it.
    """
    _ensure_private_dir(directory)
    pairs: list[KeyPair] = []
    for name, comment in (
        (CLIENT_KEY_NAME, f"berth@{machine_name}"),
        (HOST_KEY_NAME, f"root@berth-{machine_name}"),
    ):
        path = directory / name
        if os.path.lexists(path):
            pairs.append(load_keypair(path))
        else:
            pairs.append(generate_keypair(path, comment))
    return MachineKeys(client=pairs[0], host=pairs[1])


def load_client_pkey(private_path: Path) -> paramiko.Ed25519Key:
    """The client key as a paramiko key, after the same checks as :func:`load_keypair`."""
    load_keypair(private_path)
    try:
        return paramiko.Ed25519Key.from_private_key_file(str(private_path))
    except (paramiko.SSHException, OSError) as exc:
        raise BerthError(
            f"paramiko could not read the SSH key {private_path}",
            "delete it so Berth generates a new one",
        ) from exc
