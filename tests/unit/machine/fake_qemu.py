"""A stand-in for qemu-system-* used by the machine unit tests (run as a child process).

It understands just enough of the argv Berth builds (``-chardev socket,id=qmp|console``,
``-pidfile``, ``-accel``, ``-S``, ``-append``) and of QMP to drive ``Machine`` through its
paths: greeting, capabilities, query-status, cont (prints the boot markers), stop,
system_powerdown (exits like a guest that powers off), quit, human-monitor-command.
Kernel-command-line words change its behaviour: ``fake.fail=<stage>``,
``fake.ignore_powerdown``, ``fake.hang`` (no stage after the kernel), ``fake.reset``
(a panic at boot). Under ``-accel kvm`` it plays a broken KVM: it prints "KVM internal
error" and stops the VM, like QEMU does.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Run as a script (python fake_qemu.py ARGV): the repository root makes ``tests`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.unit.machine.qmp_stream import QmpStreamDecoder

STAGES = ("init", "network", "datadisk", "sshd", "engine", "agent", "ready")


def opt_value(spec: str, key: str) -> str:
    for part in spec.split(","):
        if part.startswith(key + "="):
            return part.split("=", 1)[1]
    return ""


class FakeQemu:
    def __init__(self, argv: list[str]) -> None:
        self.chardevs: dict[str, str] = {}
        self.pidfile = ""
        self.accel = "tcg"
        self.append = ""
        for i, arg in enumerate(argv):
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            if arg == "-chardev":
                self.chardevs[opt_value(nxt, "id")] = opt_value(nxt, "path")
            elif arg == "-pidfile":
                self.pidfile = nxt
            elif arg == "-accel":
                self.accel = nxt.split(",")[0]
            elif arg == "-append":
                self.append = nxt
        self.status = "prelaunch" if "-S" in argv else "running"
        self.console: socket.socket | None = None
        self.qmp: socket.socket | None = None
        self.lock = threading.Lock()

    def words(self) -> dict[str, str]:
        out = {}
        for word in self.append.split():
            key, _, value = word.partition("=")
            out[key] = value
        return out

    def run(self) -> None:
        with open(self.pidfile, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        console_srv = self._listen(self.chardevs["console"])
        qmp_srv = self._listen(self.chardevs["qmp"])
        threading.Thread(target=self._accept_console, args=(console_srv,), daemon=True).start()
        while True:
            conn, _ = qmp_srv.accept()
            self.qmp = conn
            self._serve_qmp(conn)

    @staticmethod
    def _listen(path: str) -> socket.socket:
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(1)
        return srv

    def _accept_console(self, srv: socket.socket) -> None:
        while True:
            conn, _ = srv.accept()
            self.console = conn
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        while data := conn.recv(1024):
            self._say(b"echo:" + data)

    def _say(self, data: bytes) -> None:
        if self.console is not None:
            try:
                self.console.sendall(data)
            except OSError:
                pass

    def _send(self, conn: socket.socket, obj: dict[str, Any]) -> None:
        with self.lock:
            conn.sendall(json.dumps(obj).encode() + b"\r\n")

    def event(self, name: str, data: dict[str, Any] | None = None) -> None:
        if self.qmp is not None:
            now = time.time()
            self._send(self.qmp, {"event": name, "data": data or {},
                                  "timestamp": {"seconds": int(now), "microseconds": 0}})

    def _boot(self) -> None:
        words = self.words()
        time.sleep(0.05)
        if self.accel == "kvm":
            sys.stderr.write("KVM internal error. Suberror: 1\n")
            sys.stderr.flush()
            self.status = "internal-error"
            self.event("STOP")
            return
        self._say(b"[    0.000000] Linux version 6.1.0-fake\r\n")
        if "fake.hang" in words:
            return
        if "fake.reset" in words:  # a kernel panic with panic=-1 under -no-reboot
            self.event("SHUTDOWN", {"guest": True, "reason": "guest-reset"})
            self._exit()
        for stage in STAGES:
            time.sleep(0.01)
            if words.get("fake.fail") == stage:
                self._say(f"BERTH-FAIL {stage} injected\r\n".encode())
                return
            self._say(f"BERTH-STAGE {stage} 0.{STAGES.index(stage) + 1}\r\n".encode())

    def _serve_qmp(self, conn: socket.socket) -> None:
        self._send(conn, {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
                                              "package": ""}, "capabilities": []}})
        decoder = QmpStreamDecoder()
        while chunk := conn.recv(4096):
            for msg in decoder.feed(chunk):
                self._command(conn, msg)

    def _command(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        cmd = msg["execute"]
        reply: dict[str, Any] = {"return": {}}
        after = None
        if cmd == "query-status":
            reply["return"] = {"status": self.status, "running": self.status == "running",
                               "singlestep": False}
        elif cmd == "cont":
            first = self.status == "prelaunch"
            self.status = "running"
            after = (lambda: threading.Thread(target=self._boot, daemon=True).start()) \
                if first else (lambda: self.event("RESUME"))
        elif cmd == "stop":
            self.status = "paused"
            after = lambda: self.event("STOP")  # noqa: E731
        elif cmd == "system_powerdown":
            if "fake.ignore_powerdown" not in self.words():
                after = self._poweroff
            else:
                after = lambda: self.event("POWERDOWN")  # noqa: E731
        elif cmd == "quit":
            after = self._quit
        elif cmd == "human-monitor-command":
            reply["return"] = ""
            if msg["arguments"]["command-line"] == "fake-ioerror":
                after = self._io_error
        if "id" in msg:
            reply["id"] = msg["id"]
        self._send(conn, reply)
        if after is not None:
            after()

    def _io_error(self) -> None:
        """What QEMU does with werror=enospc when the host disk fills up."""
        self.status = "io-error"
        self.event("BLOCK_IO_ERROR", {"device": "", "node-name": "data", "operation": "write",
                                      "action": "stop", "nospace": True,
                                      "reason": "No space left on device"})
        self.event("STOP")

    def _poweroff(self) -> None:
        self.event("POWERDOWN")
        self.event("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
        self._exit()

    def _quit(self) -> None:
        self.event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        self._exit()

    def _exit(self) -> None:
        for path in self.chardevs.values():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        os._exit(0)


if __name__ == "__main__":
    FakeQemu(sys.argv[1:]).run()
