"""OpenSSH's ``ssh -L``, pinned like Berth's own SSH: the reference that tests and
benchmarks measure Berth's relay and port forwards against.

Only the ``ssh`` client's argv is built here (a list, never a shell string): the host key
is pinned in a known_hosts of its own (``StrictHostKeyChecking=yes``), the machine's own
client key is the only identity, and a forward that cannot be set up ends ssh.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def pinned_known_hosts(workdir: Path, port: int, host_public_openssh: str) -> Path:
    known = workdir / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_public_openssh}\n")
    return known


def ssh_base(port: int, client_key: Path, known: Path) -> list[str]:
    """``ssh`` to root@127.0.0.1:port with only this key and only the pinned host key."""
    return [
        "ssh", "-p", str(port), "-i", str(client_key),
        "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes", "-F", "/dev/null",
    ]  # fmt: skip


@contextmanager
def ssh_forward(
    base: Sequence[str],
    forward: str,
    ready: Callable[[], bool],
    *,
    extra: Sequence[str] = (),
    timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``ssh -N -L forward`` until ``ready()`` says it serves; stop it on exit."""
    proc = subprocess.Popen(
        [*base, "-N", *extra, "-o", "ExitOnForwardFailure=yes", "-L", forward, "root@127.0.0.1"],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"ssh -L did not start: {err.strip()}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()
