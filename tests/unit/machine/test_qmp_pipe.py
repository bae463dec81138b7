"""QMP over a Windows named pipe: qemu.qmp's client with our ``_do_connect`` override,
run on Linux against a fake ``create_pipe_connection`` (the Proactor loop's call) whose
transport plays QEMU's side of the QMP handshake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vm_backend.machine.loopthread import EventLoopThread
from vm_backend.machine.paths import MachinePaths
from vm_backend.machine.qmp import QmpError, SyncQmp

NAME = MachinePaths.for_machine("dev", Path("/nonexistent"), windows_pipes=True).qmp_address
GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 8},
                                "package": ""}, "capabilities": []}}


class FakeQemuPipe(asyncio.Transport):
    """QEMU's end: greets, answers every command, records what it was sent."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.received: list[dict[str, Any]] = []
        self.buffer = b""
        self.closed = False
        loop.call_soon(self._send, GREETING)

    def _send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self.protocol.data_received(json.dumps(message).encode() + b"\r\n")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # Like QEMU's JSON streamer: objects back to back, no separator needed.
        self.buffer += bytes(data)
        decoder = json.JSONDecoder()
        while self.buffer.strip():
            text = self.buffer.decode().lstrip()
            try:
                msg, end = decoder.raw_decode(text)
            except ValueError:
                return  # incomplete: wait for more
            self.buffer = text[end:].encode()
            self.received.append(msg)
            reply: dict[str, Any] = {"return": {}}
            if msg.get("execute") == "query-status":
                reply = {"return": {"status": "running", "running": True}}
            if "id" in msg:
                reply["id"] = msg["id"]
            self.loop.call_soon(self._send, reply)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    lt = EventLoopThread("test-qmp-pipe")
    yield lt
    lt.stop()


def _install(lt: EventLoopThread, missing: int = 0) -> tuple[list[str], list[FakeQemuPipe]]:
    addresses: list[str] = []
    pipes: list[FakeQemuPipe] = []
    state = {"missing": missing}

    async def create_pipe_connection(
        factory: Callable[[], asyncio.Protocol], address: str
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        addresses.append(address)
        if state["missing"]:
            state["missing"] -= 1
            raise FileNotFoundError(2, "The system cannot find the file specified")
        protocol = factory()
        transport = FakeQemuPipe(lt.loop, protocol)
        protocol.connection_made(transport)
        pipes.append(transport)
        return transport, protocol

    lt.loop.create_pipe_connection = create_pipe_connection  # type: ignore[attr-defined]
    return addresses, pipes


def test_qmp_handshake_and_commands_over_a_pipe(loop_thread: EventLoopThread) -> None:
    assert NAME == "\\\\.\\pipe\\berth-dev-qmp"
    addresses, pipes = _install(loop_thread, missing=2)  # QEMU not there yet, twice
    qmp = SyncQmp(loop_thread)
    qmp.connect(NAME, timeout=5)
    assert addresses == [NAME] * 3
    assert qmp.connected
    status = qmp.query_status()
    assert status.running and status.status == "running"
    commands = [m.get("execute") for m in pipes[0].received]
    assert commands == ["qmp_capabilities", "query-status"]
    qmp.close()
    assert pipes[0].closed


def test_a_loop_without_pipe_support_gives_a_clear_error(loop_thread: EventLoopThread) -> None:
    qmp = SyncQmp(loop_thread)
    with pytest.raises(QmpError, match="Proactor"):
        qmp.connect(NAME, timeout=0.3)
