"""Fixtures for the Machine page tests: a short private BERTH_HOME and a fake berthd.

* Qt renders offscreen (set before anything imports Qt).
* ``berth_home`` overrides the GUI suite's fixture with a short ``/tmp/bm-XXXX`` folder:
  berthd's and QEMU's unix sockets live under it and ``sun_path`` is ~104 bytes.
* ``fake_daemon``: :class:`FakeDaemon`, an in-memory berthd speaking the same methods
  (``call`` with progress, ``console`` as a socket pair) for rendering and edge cases.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vm_backend.daemon.client import DaemonError

STAGES = ("qemu", "kernel", "init", "network", "datadisk", "sshd", "engine", "agent",
          "ready", "socket")


@pytest.fixture(autouse=True)
def berth_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="bm-", dir="/tmp"))
    monkeypatch.setenv("BERTH_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def stage_doc(stage: str, state: str, started: float | None = None,
              ended: float | None = None, detail: str = "") -> dict[str, Any]:
    return {"stage": stage, "state": state, "started_at": started, "ended_at": ended,
            "duration": (ended - started) if started is not None and ended is not None
            else None, "guest_uptime": None, "detail": detail}


def spec_doc(**overrides: Any) -> dict[str, Any]:
    spec = {"name": "default", "arch": "amd64", "cpus": 2, "memory_mib": 2048,
            "disk_gib": 32, "accelerator": "auto", "ssh_port": 0, "shares": [],
            "expose_ports_on_lan": False, "version": 1}
    spec.update(overrides)
    return spec


def status_doc(state: str = "stopped", **overrides: Any) -> dict[str, Any]:
    up = state in ("running", "paused", "starting")
    doc: dict[str, Any] = {
        "name": "default", "state": state, "accelerator": "tcg" if up else None,
        "accelerator_reason": "KVM unusable: /dev/kvm is missing — running in slow mode (TCG)"
        if up else "",
        "slow_mode": up, "pid": 4242 if up else None, "uptime_s": 75.0 if up else None,
        "ssh_port": 40022 if up else None, "timeline": [],
        "resources": {"qemu_rss_bytes": 512 * 1024 * 1024 if up else None,
                      "qemu_cpu_percent": 37.5 if up else None},
        "detail": "", "socket": "/tmp/bm-x/run/docker.sock" if state == "running" else "",
        "docker_host": "unix:///tmp/bm-x/run/docker.sock" if state == "running" else "",
        "spec": spec_doc(), "relay_connections": 0,
    }
    doc.update(overrides)
    return doc


class FakeDaemon:
    """An in-memory berthd. Tests set ``doc`` (or None: no machine), ``boot`` (progress
    records for machine.start), ``boot_error``, ``boot_gate`` (start waits on it) and
    ``console_text``; ``calls`` records (method, params)."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = status_doc()
        self.boot: list[dict[str, Any]] = []
        self.boot_error: DaemonError | None = None
        self.boot_gate: threading.Event | None = None
        self.set_error: DaemonError | None = None
        self.set_gate: threading.Event | None = None  # machine.set waits on it
        self.console_text = "[    0.000000] Linux version 6.1.0\nberth login: root (automatic)\n"
        self.qemu_text = ""
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.runs = 0
        self.console_peers: list[socket.socket] = []
        self._lock = threading.Lock()

    def client(self, autostart: bool = True) -> FakeClient:
        return FakeClient(self)

    def methods(self) -> list[str]:
        with self._lock:
            return [m for m, _ in self.calls]

    def handle(self, method: str, params: dict[str, Any],
               on_progress: Callable[[dict[str, Any]], None] | None) -> Any:
        with self._lock:
            self.calls.append((method, dict(params)))
        if method == "machine.list":
            return [dict(self.doc)] if self.doc is not None else []
        if self.doc is None and method != "machine.init":
            raise DaemonError("There is no machine named 'default'.", "Create it.")
        if method == "machine.init":
            spec = spec_doc(**{k: v for k, v in params.items() if k in spec_doc()})
            self.doc = status_doc("stopped", spec=spec)
            return spec
        if method == "machine.start":
            assert self.doc is not None
            self.doc = {**self.doc, "state": "starting"}
            for record in self.boot:
                if on_progress is not None:
                    on_progress(record)
            if self.boot_gate is not None:
                self.boot_gate.wait(30)
            if self.boot_error is not None:
                self.doc = {**self.doc, "state": "stopped"}
                raise self.boot_error
            self.runs += 1  # each start is a new QEMU process, with a pid of its own
            self.doc = status_doc("running", spec=self.doc["spec"], pid=4242 + self.runs)
            return dict(self.doc)
        if method == "machine.stop":
            self.doc = status_doc("stopped", spec=self.doc["spec"])
            return {"outcome": "powered-off"}
        if method == "machine.pause":
            self.doc = {**self.doc, "state": "paused"}
            return dict(self.doc)
        if method == "machine.resume":
            self.doc = {**self.doc, "state": "running"}
            return dict(self.doc)
        if method == "machine.rm":
            self.doc = None
            return {"removed": "default"}
        if method == "machine.spec":
            return dict(self.doc["spec"])
        if method == "machine.set":
            if self.set_gate is not None:
                self.set_gate.wait(30)
            if self.set_error is not None:
                raise self.set_error
            spec = {**self.doc["spec"], **{k: v for k, v in params.items() if k != "name"}}
            self.doc = {**self.doc, "spec": spec}
            return spec
        if method == "machine.logs":
            text = self.qemu_text if params.get("which") == "qemu" else self.console_text
            lines = text.splitlines()[-int(params.get("lines") or 200):]
            return {"text": "\n".join(lines)}
        if method == "machine.status":
            return dict(self.doc)
        raise DaemonError(f"Unknown method {method!r}.", "")

    @contextlib.contextmanager
    def console(self, name: str, replay: bool) -> Iterator[socket.socket]:
        if self.doc is None or self.doc.get("state") not in ("starting", "running", "paused"):
            raise DaemonError("The VM is not running.", "Start it: berth machine start")
        ours, theirs = socket.socketpair()
        with self._lock:
            self.console_peers.append(ours)
        if replay:
            ours.sendall(self.console_text.replace("\n", "\r\n").encode())
        try:
            yield theirs
        finally:
            theirs.close()

    def peer(self) -> socket.socket:
        with self._lock:
            return self.console_peers[-1]


class FakeClient:
    def __init__(self, daemon: FakeDaemon) -> None:
        self.daemon = daemon

    def call(self, method: str, params: dict[str, Any] | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None,
             timeout: float | None = 900.0) -> Any:
        return self.daemon.handle(method, params or {}, on_progress)

    def console(self, name: str = "default",
                replay: bool = True) -> contextlib.AbstractContextManager[socket.socket]:
        return self.daemon.console(name, replay)


@pytest.fixture
def fake_daemon() -> FakeDaemon:
    return FakeDaemon()


def booting_records(upto: int, t0: float | None = None) -> list[dict[str, Any]]:
    """Progress records: the first ``upto`` stages done, the next one running."""
    t0 = t0 if t0 is not None else time.time() - 40
    out: list[dict[str, Any]] = []
    t = t0
    for i, stage in enumerate(STAGES):
        if i < upto:
            out.append({"stage": stage_doc(stage, "done", t, t + 2.5 + i)})
            t += 2.5 + i
        elif i == upto:
            out.append({"stage": stage_doc(stage, "running", t)})
    return out
