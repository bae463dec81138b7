"""Record the terminal fixtures from a real TTY (run by hand: needs dockerd).

    python -m tests.gui.widgets.data.capture

Writes ``top.bin`` (busybox top's first frames), ``vi_open.bin`` (vi started
on a file, text typed in insert mode, back in normal mode) and
``vi_quit.bin`` (the bytes after ``:wq``). Every fixture is what busybox
sends to an 80x24 xterm-256color TTY, byte for byte.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import docker

HERE = Path(__file__).parent
IMAGE = "berth-test/busybox:latest"


class TtyExec:
    """An interactive exec with a TTY over docker's hijacked socket."""

    def __init__(self, api: docker.APIClient, container: str, cmd: list[str]) -> None:
        self.api = api
        self.exec_id = api.exec_create(
            container, cmd, tty=True, stdin=True, environment={"TERM": "xterm-256color"}
        )["Id"]
        raw: Any = api.exec_start(self.exec_id, tty=True, socket=True)
        self.sock: socket.socket = raw._sock
        self.sock.settimeout(0.05)
        api.exec_resize(self.exec_id, height=24, width=80)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_for(self, seconds: float) -> bytes:
        out = bytearray()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def read_until(self, needle: bytes, timeout: float = 10.0) -> bytes:
        out = bytearray()
        end = time.monotonic() + timeout
        while needle not in out and time.monotonic() < end:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def close(self) -> None:
        self.sock.close()


def start_container(api: docker.APIClient) -> str:
    container: str = api.create_container(
        IMAGE,
        ["sleep", "600"],
        host_config=api.create_host_config(network_mode="none", auto_remove=True),
    )["Id"]
    api.start(container)
    return container


def main() -> None:
    api = docker.APIClient()
    container = start_container(api)
    try:
        top = TtyExec(api, container, ["top", "-d", "1"])
        data = top.read_for(2.5)
        top.send(b"q")
        data += top.read_for(0.5)
        top.close()
        (HERE / "top.bin").write_bytes(data)

        setup = api.exec_create(
            container, ["sh", "-c", "printf 'first line\\nsecond line\\n' > /tmp/notes.txt"]
        )["Id"]
        api.exec_start(setup)
        vi = TtyExec(api, container, ["vi", "/tmp/notes.txt"])
        opened = vi.read_until(b"notes.txt", timeout=5) + vi.read_for(0.5)
        vi.send(b"Go")
        opened += vi.read_for(0.3)
        vi.send(b"typed in vi")
        opened += vi.read_for(0.3)
        vi.send(b"\x1b")
        opened += vi.read_for(0.5)
        (HERE / "vi_open.bin").write_bytes(opened)
        vi.send(b":wq\r")
        (HERE / "vi_quit.bin").write_bytes(vi.read_for(1.0))
        vi.close()
    finally:
        api.kill(container)


if __name__ == "__main__":
    main()
