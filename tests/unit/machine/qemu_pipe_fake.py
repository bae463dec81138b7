"""QEMU's side of its Windows pipes, over the in-memory pipe API of tests/unit/winpipe_fake.py.

It does what QEMU's ``chardev/char-win.c`` does for ``-chardev pipe``: each chardev is one
pipe instance (``MAXCONNECT 1``), created in command-line order, and start-up waits in
``ConnectNamedPipe`` for a client on each before creating the next, so the console's pipe
appears only once QMP's has its client. Then it greets on QMP and answers commands; the
first ``cont`` prints the guest's boot markers on the console.

QEMU's server ends are created as process ``pid`` (the test's stand-in QEMU process;
default: the fake's own pid), which is what ``GetNamedPipeServerProcessId`` reports for them.

``squat`` ("qmp" or "console") makes another program connect to that pipe the instant it
exists (atomically with its creation, so berthd cannot win the race in a test).
``preempt`` ("qmp" or "console") makes another program, process ``squatter_pid``, create
that pipe's name in :meth:`PipeQemu.start`, before QEMU does: QEMU's own
``CreateNamedPipe`` then fails (one instance, taken) and QEMU stops there, as char-win.c
does ("Failed CreateNamedPipe"); the other program's instance stays for berthd to open.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from tests.unit.machine.qmp_stream import QmpStreamDecoder
from tests.unit.winpipe_fake import FakeApi
from vm_backend import winpipe as wp

STAGES = ("init", "network", "datadisk", "sshd", "engine", "agent", "ready")
# What char-win.c passes to CreateNamedPipe.
QEMU_PIPE_MODE = wp.PIPE_WAIT  # PIPE_TYPE_BYTE | PIPE_READMODE_BYTE are 0
QEMU_OPEN_MODE = wp.PIPE_ACCESS_DUPLEX | wp.FILE_FLAG_OVERLAPPED


class PipeQemu:
    def __init__(self, api: FakeApi, qmp_name: str, console_name: str, *,
                 delay: float = 0.0, squat: str | None = None, pid: int | None = None,
                 preempt: str | None = None, squatter_pid: int | None = None) -> None:
        self.api = api
        self.names = {"qmp": qmp_name, "console": console_name}
        self.delay = delay
        self.squat = squat
        self.pid = api.pid if pid is None else pid
        self.preempt = preempt
        self.squatter_pid = squatter_pid
        self.squatter: wp.PipeStream | None = None
        self.preempted: int | None = None  # the other program's server handle
        self.create_failed: str | None = None  # the name QEMU could not create
        self.qmp: wp.PipeStream | None = None
        self.console: wp.PipeStream | None = None
        self.received: list[dict[str, Any]] = []
        self.console_input = bytearray()
        self.status = "prelaunch"
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pipe-qemu", daemon=True)

    def start(self) -> PipeQemu:
        if self.preempt is not None:
            self.preempted = self.api.squat(self.names[self.preempt], pid=self.squatter_pid)
        self._thread.start()
        return self

    def _serve(self, kind: str) -> wp.PipeStream | None:
        """Create the pipe and wait for its client (None if stopped meanwhile, or if
        another program created the name first)."""
        name = self.names[kind]
        with self.api.cond:
            if self.api.instances.get(name):
                self.create_failed = name  # MAXCONNECT 1: ERROR_PIPE_BUSY, QEMU gives up
                return None
            handle = self.api.create_named_pipe(name, QEMU_OPEN_MODE, QEMU_PIPE_MODE, 1,
                                                2048, 2048, 5000, 0, pid=self.pid)
            if self.squat == kind:
                self.squatter = wp.connect_pipe(name, api=self.api)
        ov = self.api.connect_named_pipe(handle)
        while not self.api.wait(ov, 50):
            if self.stopped.is_set():
                ov.cancel()
                self.api.close_handle(handle)
                return None
        return wp.PipeStream(handle, self.api, name)

    def _run(self) -> None:
        if self.stopped.wait(self.delay):
            return
        self.qmp = self._serve("qmp")
        if self.qmp is None:
            return
        self.console = self._serve("console")
        if self.console is None:
            return
        threading.Thread(target=self._read_console, daemon=True).start()
        self._send({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 8},
                                        "package": ""}, "capabilities": []}})
        decoder = QmpStreamDecoder()
        while chunk := self._recv(self.qmp):
            for msg in decoder.feed(chunk):
                self._command(msg)

    @staticmethod
    def _recv(stream: wp.PipeStream) -> bytes:
        try:
            return stream.recv(4096)
        except OSError:
            return b""

    def _read_console(self) -> None:
        assert self.console is not None
        while data := self._recv(self.console):
            self.console_input += data

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.qmp is not None
        with self._lock:
            self.qmp.sendall(json.dumps(obj).encode() + b"\r\n")

    def _say(self, data: bytes) -> None:
        if self.console is not None:
            self.console.sendall(data)

    def _command(self, msg: dict[str, Any]) -> None:
        self.received.append(msg)
        reply: dict[str, Any] = {"return": {}}
        boot = False
        if msg["execute"] == "query-status":
            reply["return"] = {"status": self.status, "running": self.status == "running"}
        elif msg["execute"] == "cont":
            boot = self.status == "prelaunch"
            self.status = "running"
        if "id" in msg:
            reply["id"] = msg["id"]
        self._send(reply)
        if boot:
            self._say(b"[    0.000000] Linux version 6.1.0-fake\r\n")
            for i, stage in enumerate(STAGES):
                self._say(f"BERTH-STAGE {stage} 0.{i + 1}\r\n".encode())

    def stop(self) -> None:
        """QEMU goes away: its pipe ends close."""
        self.stopped.set()
        for stream in (self.qmp, self.console, self.squatter):
            if stream is not None:
                stream.close()
        self._thread.join(5)
        if self.preempted is not None:
            self.api.close_handle(self.preempted)
            self.preempted = None
