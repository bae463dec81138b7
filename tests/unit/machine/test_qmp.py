"""QMP client against a scripted fake QMP server on a unix socket."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.machine.qmp_stream import QmpStreamDecoder
from vm_backend.machine.loopthread import EventLoopThread
from vm_backend.machine.qmp import QmpError, QmpEvent, SyncQmp

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                    "capabilities": []}}


async def _json_stream(reader: asyncio.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """QMP is a JSON stream, not lines: qemu.qmp sends commands without a newline."""
    decoder = QmpStreamDecoder()
    while chunk := await reader.read(4096):
        for msg in decoder.feed(chunk):
            yield msg


class FakeQmpServer:
    """Speaks enough QMP: greeting, capabilities, a few commands, events on demand."""

    def __init__(self, loop: EventLoopThread, path: str) -> None:
        self.loop = loop
        self.path = path
        self.commands: list[str] = []
        self.hmp: list[str] = []
        self.writer: asyncio.StreamWriter | None = None
        self.status = "running"
        self.server = loop.run(asyncio.start_unix_server(self._serve, path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        writer.write(json.dumps(GREETING).encode() + b"\n")
        await writer.drain()
        async for msg in _json_stream(reader):
            cmd = msg["execute"]
            self.commands.append(cmd)
            reply: dict[str, Any] = {"return": {}}
            if cmd == "query-status":
                reply = {"return": {"status": self.status, "running": self.status == "running",
                                    "singlestep": False}}
            elif cmd == "human-monitor-command":
                line = msg["arguments"]["command-line"]
                self.hmp.append(line)
                text = f"ran {line}\r\n"
                if line.startswith("hostfwd_add"):
                    text = "" if ":1-:" not in line else (
                        "Could not set up host forwarding rule 'tcp:127.0.0.1:1-:80'\r\n"
                    )
                elif line.startswith("hostfwd_remove"):
                    text = "host forwarding rule for tcp:127.0.0.1:8080 removed\r\n"
                reply = {"return": text}
            elif cmd == "nope":
                reply = {"error": {"class": "CommandNotFound", "desc": "The command nope "
                                                                       "has not been found"}}
            elif cmd == "stop":
                self.status = "paused"
            elif cmd == "cont":
                self.status = "running"
            if "id" in msg:
                reply["id"] = msg["id"]
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            if cmd == "stop":
                await self._event("STOP")
            if cmd == "quit":
                writer.close()
                return

    async def _event(self, name: str, data: dict[str, Any] | None = None) -> None:
        assert self.writer is not None
        event = {"event": name, "data": data or {},
                 "timestamp": {"seconds": 1700000000, "microseconds": 5}}
        self.writer.write(json.dumps(event).encode() + b"\n")
        await self.writer.drain()

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        self.loop.run(self._event(name, data))

    def drop(self) -> None:
        async def _drop() -> None:
            assert self.writer is not None
            self.writer.transport.abort()
        self.loop.run(_drop())

    def close(self) -> None:
        async def _close() -> None:
            self.server.close()
        self.loop.run(_close())


@pytest.fixture
def sock_path() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="bq-", dir="/tmp")
    yield str(Path(d) / "qmp.sock")
    shutil.rmtree(d, ignore_errors=True)


def test_commands_and_events(loop_thread: EventLoopThread, sock_path: str) -> None:
    server = FakeQmpServer(loop_thread, sock_path)
    qmp = SyncQmp(loop_thread)
    events: list[QmpEvent] = []
    got_event = threading.Event()

    def on_event(ev: QmpEvent) -> None:
        events.append(ev)
        got_event.set()

    qmp.on_event(on_event)
    elapsed = qmp.connect(sock_path, timeout=2)
    assert elapsed < 2 and qmp.connected
    status = qmp.query_status()
    assert status.status == "running" and status.running
    qmp.stop()
    assert qmp.query_status().status == "paused"
    assert got_event.wait(2)
    assert events[0].name == "STOP" and events[0].timestamp == pytest.approx(1700000000.000005)
    qmp.cont()
    assert qmp.human_monitor_command("info usernet") == "ran info usernet\r\n"
    got_event.clear()
    server.emit("BLOCK_IO_ERROR", {"device": "data", "reason": "No space left on device"})
    server.emit("UNWATCHED_EVENT")
    server.emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    deadline = time.monotonic() + 3
    while len(events) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.name for e in events] == ["STOP", "BLOCK_IO_ERROR", "SHUTDOWN"]
    assert events[1].data["reason"] == "No space left on device"
    with pytest.raises(QmpError, match="refused nope"):
        qmp.execute("nope")
    qmp.system_powerdown()
    assert server.commands[-1] == "system_powerdown"
    qmp.close()
    server.close()


def test_hostfwd_add_and_remove(loop_thread: EventLoopThread, sock_path: str) -> None:
    server = FakeQmpServer(loop_thread, sock_path)
    qmp = SyncQmp(loop_thread)
    qmp.connect(sock_path, timeout=2)
    qmp.hostfwd_add("tcp", "127.0.0.1", 8080, 80)
    qmp.hostfwd_remove("tcp", "127.0.0.1", 8080)
    assert server.hmp == ["hostfwd_add net0 tcp:127.0.0.1:8080-:80",
                          "hostfwd_remove net0 tcp:127.0.0.1:8080"]
    with pytest.raises(QmpError, match=r"could not add the forward tcp:127\.0\.0\.1:1"):
        qmp.hostfwd_add("tcp", "127.0.0.1", 1, 80)
    for bad in (("sctp", "127.0.0.1", 80), ("tcp", "127.0.0.1 -:1", 80), ("tcp", "::1", 80),
                ("tcp", "127.0.0.1", 0)):
        with pytest.raises(QmpError):
            qmp.hostfwd_add(bad[0], bad[1], int(bad[2]), 80)
    assert len(server.hmp) == 3  # rejected rules never reach QEMU
    qmp.close()
    server.close()


def test_unrequested_disconnect_is_reported(loop_thread: EventLoopThread, sock_path: str) -> None:
    server = FakeQmpServer(loop_thread, sock_path)
    qmp = SyncQmp(loop_thread)
    lost = threading.Event()
    qmp.on_disconnect(lost.set)
    qmp.connect(sock_path, timeout=2)
    server.drop()
    assert lost.wait(1.0)
    with pytest.raises(QmpError):
        qmp.query_status()
    qmp.close()
    server.close()


def test_quit_is_not_a_crash(loop_thread: EventLoopThread, sock_path: str) -> None:
    server = FakeQmpServer(loop_thread, sock_path)
    qmp = SyncQmp(loop_thread)
    lost = threading.Event()
    qmp.on_disconnect(lost.set)
    qmp.connect(sock_path, timeout=2)
    qmp.quit()
    assert not lost.wait(0.3)
    qmp.close()
    server.close()


def test_connect_retries_until_the_socket_appears(
    loop_thread: EventLoopThread, sock_path: str
) -> None:
    holder: list[FakeQmpServer] = []
    timer = threading.Timer(0.2, lambda: holder.append(FakeQmpServer(loop_thread, sock_path)))
    timer.start()
    qmp = SyncQmp(loop_thread)
    elapsed = qmp.connect(sock_path, timeout=3)
    assert 0.15 < elapsed < 3
    qmp.close()
    holder[0].close()


def test_connect_gives_up_with_words(loop_thread: EventLoopThread, sock_path: str) -> None:
    qmp = SyncQmp(loop_thread)
    with pytest.raises(QmpError, match="did not create its control socket"):
        qmp.connect(sock_path, timeout=0.2)
    with pytest.raises(QmpError, match="exited before"):
        qmp.connect(sock_path, timeout=5, alive=lambda: False)


def test_a_silent_socket_times_out(loop_thread: EventLoopThread, sock_path: str) -> None:
    # Another client holds QEMU's monitor: the socket accepts, but no greeting comes.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    server = loop_thread.run(asyncio.start_unix_server(silent, sock_path))
    qmp = SyncQmp(loop_thread)
    with pytest.raises(QmpError, match="did not answer"):
        qmp.connect(sock_path, timeout=0.5)

    async def _close() -> None:
        server.close()

    loop_thread.run(_close())
