"""berthd's side of the guest agent protocol (docs/agent.md); no Qt.

:class:`AgentClient` keeps one control session with the agent in the VM
(``vm_backend/guest/agent.py``) over a ``direct-streamlocal`` channel on the VM's pinned SSH
transport: it says hello (and checks the protocol version), sends a heartbeat with the
host's wall-clock time every ``heartbeat_s`` (the agent sets the guest clock from it),
reads the full-state snapshot the agent sends on every (re)connect and the section updates
after it, and reconnects with backoff whenever the channel drops (agent killed, SSH
transport reconnecting, VM paused). :meth:`AgentClient.snapshot` returns the latest state
as a frozen :class:`AgentSnapshot`; ``on_ports`` / ``on_change`` callbacks follow it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import paramiko
from paramiko.channel import Channel

from vm_backend.errors import BerthError
from vm_backend.guest.agent import (
    PROTOCOL_VERSION,
    SOCKET_PATH,
    LineReader,
    ProtocolError,
    decode,
    encode,
)

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
# No message at all for this long (heartbeats are answered every HEARTBEAT_S): reconnect.
DEAD_AFTER_S = 15.0
RECV_POLL_S = 0.25


class UnixOpener(Protocol):
    """What the client needs from the SSH session (``GuestSSH``; tests fake it)."""

    def open_unix_socket(self, path: str) -> Channel: ...


class AgentVersionError(BerthError):
    """The agent speaks a protocol version this berthd does not."""


@dataclass(frozen=True)
class GuestPort:
    """One port published in the guest, as the agent reports it."""

    protocol: str  # "tcp" | "udp"
    port: int  # the port in the guest (docker's host port; the host side uses the same)
    container_port: int
    host_ip: str  # the address the container asked for ("" = all interfaces)
    container_id: str
    container_name: str  # for a "listener" row: the guest program's name
    source: str  # "engine" (docker's port table) | "listener" (the guest's socket table)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> GuestPort:
        return cls(
            protocol=str(value.get("protocol", "tcp")),
            port=int(value["port"]),
            container_port=int(value.get("container_port") or 0),
            host_ip=str(value.get("host_ip") or ""),
            container_id=str(value.get("container_id") or ""),
            container_name=str(value.get("container_name") or ""),
            source=str(value.get("source") or "engine"),
        )


@dataclass(frozen=True)
class AgentSnapshot:
    """The agent's latest state as berthd knows it (all fields are plain values)."""

    connected: bool = False
    agent_version: str = ""
    protocol: int | None = None
    boot_id: str = ""
    kernel: str = ""
    last_heartbeat_age_s: float | None = None
    clock_offset_s: float | None = None  # guest minus host at the last heartbeat
    clock_corrections: int = 0
    rtt_s: float | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_available_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_used_bytes: int | None = None
    disk_free_bytes: int | None = None
    cpu_percent: float | None = None
    ports: tuple[GuestPort, ...] = field(default_factory=tuple)
    connects: int = 0  # sessions opened since the client started
    error: str = ""  # why the last session ended or could not start

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ports"] = [asdict(p) for p in self.ports]
        return doc


class AgentClient:
    """One self-healing control session with the guest agent. Thread-safe."""

    def __init__(
        self,
        opener: UnixOpener,
        socket_path: str = SOCKET_PATH,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        dead_after_s: float = DEAD_AFTER_S,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.opener = opener
        self.socket_path = socket_path
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.wall_clock = wall_clock
        self._cond = threading.Condition()
        self._state = AgentSnapshot()
        self._last_heartbeat: float | None = None  # monotonic
        self._channel: Channel | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._port_listeners: list[Callable[[tuple[GuestPort, ...]], None]] = []
        self._change_listeners: list[Callable[[AgentSnapshot], None]] = []

    # ---- public ---------------------------------------------------------------------------
    def on_ports(self, callback: Callable[[tuple[GuestPort, ...]], None]) -> None:
        """``callback(ports)`` whenever the published ports change (from the client's thread)."""
        with self._cond:
            self._port_listeners.append(callback)

    def on_change(self, callback: Callable[[AgentSnapshot], None]) -> None:
        """``callback(snapshot)`` on connect, disconnect and every state update."""
        with self._cond:
            self._change_listeners.append(callback)

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="berth-agent", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            channel = self._channel
            self._cond.notify_all()
        if channel is not None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def snapshot(self) -> AgentSnapshot:
        with self._cond:
            state = self._state
            last = self._last_heartbeat
        age = None if last is None else round(time.monotonic() - last, 3)
        return _replace(state, last_heartbeat_age_s=age)

    def wait_for(self, predicate: Callable[[AgentSnapshot], bool], timeout: float) -> bool:
        """Block until ``predicate(snapshot())`` holds (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.snapshot()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True

    # ---- internals ------------------------------------------------------------------------
    def _update(self, **changes: Any) -> None:
        with self._cond:
            old = self._state
            self._state = new = _replace(old, **changes)
            self._cond.notify_all()
            port_listeners = list(self._port_listeners) if new.ports != old.ports else []
            change_listeners = list(self._change_listeners)
        for port_cb in port_listeners:
            try:
                port_cb(new.ports)
            except Exception:
                log.exception("agent ports listener failed")
        for change_cb in change_listeners:
            try:
                change_cb(new)
            except Exception:
                log.exception("agent change listener failed")

    def _run(self) -> None:
        delay = self.backoff_initial_s
        while True:
            with self._cond:
                if self._stopping:
                    return
            channel: Channel | None = None
            hello_seen = False
            try:
                channel = self.opener.open_unix_socket(self.socket_path)
                with self._cond:
                    if self._stopping:
                        channel.close()
                        return
                    self._channel = channel
                hello_seen = self._session(channel)
                error = "the agent closed the connection"
            except AgentVersionError as exc:
                error = str(exc)
            except (BerthError, ProtocolError, OSError, EOFError, paramiko.SSHException) as exc:
                error = str(exc) or type(exc).__name__
            finally:
                with self._cond:
                    self._channel = None
                if channel is not None:
                    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                        channel.close()
            with self._cond:
                if self._stopping:
                    self._state = _replace(self._state, connected=False)
                    self._cond.notify_all()
                    return
            if self._state.connected or error != self._state.error:
                log.info("guest agent: %s; reconnecting", error)
            self._update(connected=False, error=error)
            if hello_seen:
                delay = self.backoff_initial_s
            with self._cond:
                if not self._stopping:
                    self._cond.wait(delay)
            delay = min(delay * 2, self.backoff_max_s)

    def _session(self, channel: Channel) -> bool:
        """One session until the channel drops; returns whether the agent said hello."""
        seq = 0
        # One heartbeat in flight at a time: heartbeats queued while the VM is paused would
        # otherwise arrive in a burst after ``cont``, each with a stale host time.
        in_flight: tuple[int, float] | None = None
        rtt = 0.0
        # The agent estimates the host's time as host_time + rtt / 2: send the smallest of
        # the recent round trips (NTP's minimum-delay filter), so one slow exchange (e.g.
        # heartbeats queued while the VM was paused) does not skew the clock it sets.
        recent: deque[float] = deque(maxlen=8)
        reader = LineReader()
        channel.sendall(
            encode({"type": "hello", "protocol": PROTOCOL_VERSION, "host_time": self.wall_clock()})
        )
        channel.settimeout(RECV_POLL_S)
        hello = False
        last_received = time.monotonic()
        next_heartbeat = time.monotonic() + self.heartbeat_s
        while True:
            with self._cond:
                if self._stopping:
                    return hello
            now = time.monotonic()
            if hello and now >= next_heartbeat and in_flight is None:
                seq += 1
                in_flight = (seq, now)
                channel.sendall(
                    encode(
                        {
                            "type": "heartbeat",
                            "seq": seq,
                            "host_time": self.wall_clock(),
                            "rtt": round(min(recent, default=0.0), 6),
                        }
                    )
                )
                next_heartbeat = now + self.heartbeat_s
            if now - last_received > self.dead_after_s:
                raise TimeoutError(f"no word from the agent for {self.dead_after_s:.0f} s")
            try:
                data = channel.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return hello
            last_received = time.monotonic()
            for line in reader.feed(data):
                message = decode(line)
                kind = message["type"]
                if kind == "error":
                    raise ProtocolError(f"the agent refused: {message.get('message', '')}")
                if not hello:
                    if kind != "hello":
                        raise ProtocolError(f"expected hello, got {kind}")
                    self._on_hello(message)
                    hello = True
                elif kind == "heartbeat":
                    if in_flight is not None and message.get("seq") == in_flight[0]:
                        rtt = time.monotonic() - in_flight[1]
                        recent.append(rtt)
                        in_flight = None
                    with self._cond:
                        self._last_heartbeat = time.monotonic()
                    clock = message.get("clock") or {}
                    self._update(
                        clock_offset_s=_float(message.get("clock_offset_s")),
                        clock_corrections=int(clock.get("corrections") or 0),
                        rtt_s=round(rtt, 6),
                    )
                elif kind == "snapshot":
                    self._on_sections(message)
                    if not self._state.connected:
                        log.info("guest agent connected (boot %s)", self._state.boot_id)
                        self._update(connected=True, connects=self._state.connects + 1, error="")
                elif kind in ("ports", "resources"):
                    self._on_sections(message)
                # Unknown types are ignored (a newer agent's additions).

    def _on_hello(self, message: dict[str, Any]) -> None:
        version = message.get("protocol")
        if version != PROTOCOL_VERSION:
            raise AgentVersionError(
                f"the guest agent speaks protocol {version}, berthd speaks {PROTOCOL_VERSION}",
                "update Berth or the VM image so they match (berth machine rm, then init)",
            )
        self._update(
            protocol=int(version),
            agent_version=str(message.get("agent_version", "")),
            boot_id=str(message.get("boot_id", "")),
            kernel=str(message.get("kernel", "")),
        )
        with self._cond:
            self._last_heartbeat = time.monotonic()

    def _on_sections(self, message: dict[str, Any]) -> None:
        changes: dict[str, Any] = {}
        if isinstance(message.get("ports"), list):
            changes["ports"] = tuple(
                GuestPort.from_json(p) for p in message["ports"] if isinstance(p, dict)
            )
        resources = message.get("resources")
        if isinstance(resources, dict) and resources:
            memory = resources.get("memory") or {}
            disk = resources.get("disk") or {}
            changes.update(
                memory_total_bytes=_int(memory.get("total_bytes")),
                memory_used_bytes=_int(memory.get("used_bytes")),
                memory_available_bytes=_int(memory.get("available_bytes")),
                disk_total_bytes=_int(disk.get("total_bytes")),
                disk_used_bytes=_int(disk.get("used_bytes")),
                disk_free_bytes=_int(disk.get("free_bytes")),
                cpu_percent=_float(resources.get("cpu_percent")),
            )
        clock = message.get("clock")
        if isinstance(clock, dict):
            # The count is the agent process's own: after a reconnect to a restarted agent
            # the snapshot, not the next heartbeat, must replace the old process's count.
            changes["clock_corrections"] = int(_int(clock.get("corrections")) or 0)
        if changes:
            self._update(**changes)


def _replace(state: AgentSnapshot, **changes: Any) -> AgentSnapshot:
    return replace(state, **changes)


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
