"""Published container ports on the host's localhost, forwarded into the VM over SSH.

In the VM, dockerd's proxy listens on the guest's ``127.0.0.1:HOST_PORT`` for every port a
container publishes (``-p 8080:80``). :class:`PortForwarder` watches the VM's engine (an
:class:`EngineMonitor` on the host socket that berthd serves) and keeps, for each running
container's published TCP port, exactly one host listener on ``127.0.0.1:HOST_PORT`` (and
``[::1]`` when the host has IPv6 loopback). Each accepted connection becomes one
``direct-tcpip`` channel to the guest's ``127.0.0.1:HOST_PORT`` on the VM's single SSH
transport, pumped both ways with half-close.

Exposure (DESIGN.md section 7): with user-mode networking everything on the LAN could
otherwise reach a container, so a port is bound on ``0.0.0.0`` only when the machine's
``expose_ports_on_lan`` is set *and* the container asked for all interfaces (host IP ``''``,
``0.0.0.0`` or ``::``). A container that asked for one address (``127.0.0.1:8080:80``) stays
on 127.0.0.1 either way.

The pumping is :mod:`relay`'s: each bound address is served by a :class:`_PortListener`,
an :class:`EngineSocketRelay` whose listening socket is TCP and whose channel is
``direct-tcpip``, so the accept loop, the connection bound, the half-close handling and
the teardown are the engine socket's, tested there.

UDP is not forwarded yet (SSH has no datagram channel; it needs a relay process in the
guest): such ports are listed in :meth:`PortForwarder.table` with that state.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from paramiko.channel import Channel

from vm_backend.engine.client import EngineClient
from vm_backend.engine.errors import EngineError
from vm_backend.engine.models import Container, ContainerState, Event
from vm_backend.engine.monitor import Diff, EngineMonitor
from vm_backend.machine.relay import ChannelOpener, EngineSocketRelay

log = logging.getLogger(__name__)

LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"
ALL_V4 = "0.0.0.0"
# The guest side: dockerd's proxy listens on the guest's loopback for each published port.
GUEST_ADDRESS = "127.0.0.1"
_ALL_INTERFACES = ("", "0.0.0.0", "::")
# A paused container keeps its proxy listener in the guest (connections wait until it is
# resumed), so its ports stay forwarded, as with Docker on Linux.
_FORWARDED_STATES = (ContainerState.RUNNING, ContainerState.PAUSED)
STATE_LISTENING = "listening"
STATE_UDP = "udp: not forwarded yet"
STOP_TIMEOUT = 1.0


class TcpOpener(Protocol):
    """What the forwarder needs from the SSH session (``GuestSSH``; tests fake it)."""

    def direct_tcpip(self, host: str, port: int) -> Channel: ...


@dataclass(frozen=True)
class ForwardedPort:
    """One published port as the host sees it (a row of ``berth machine status``)."""

    container_id: str
    container_name: str
    protocol: str
    guest_port: int  # the container's port
    host_address: str
    host_port: int
    state: str  # "listening" | "conflict: …" | "error: …" | "udp: not forwarded yet"
    connections: int


class _PortListener(EngineSocketRelay):
    """One bound TCP address; each connection is a ``direct-tcpip`` channel to the guest.

    The base class's ``socket_path`` is only a label here (``_bound`` stays None, so its
    ``stop()`` never unlinks anything).
    """

    def __init__(self, ssh: TcpOpener, sock: socket.socket, guest_port: int) -> None:
        host, port = sock.getsockname()[:2]
        # The opener is only ever asked for direct-tcpip, by _open_channel below.
        super().__init__(cast(ChannelOpener, ssh), Path(f"tcp-{host}-{port}"))
        self.tcp_ssh = ssh
        self.guest_port = guest_port
        self._sock: socket.socket | None = sock

    def start(self) -> None:
        sock = self._sock
        if sock is None or self._listener is not None:
            return
        self._sock = None
        self._listener = sock
        self._wake_r, self._wake_w = os.pipe()
        self._accept_thread = threading.Thread(
            target=self._accept_loop,
            name=f"berth-port-accept:{self.socket_path.name}",
            daemon=True,
        )
        self._accept_thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self._sock is not None:  # bound but never started
            self._sock.close()
            self._sock = None
        super().stop(timeout)

    def _open_channel(self) -> Channel:
        return self.tcp_ssh.direct_tcpip(GUEST_ADDRESS, self.guest_port)


def _bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform == "win32":
            # Windows' SO_REUSEADDR would let us steal a port another program listens on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)  # type: ignore[attr-defined]
        else:
            # Lets a port be bound again while old connections sit in TIME_WAIT (a
            # container restarted); on POSIX it never allows two listeners on one port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _display(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass
class _Forward:
    """The host side of one published TCP port (or the row of an unforwarded UDP one)."""

    container_id: str
    container_name: str
    protocol: str
    guest_port: int  # container port
    engine_port: int  # host port as published in the guest
    host_address: str
    host_port: int
    state: str = ""
    listeners: list[_PortListener] = field(default_factory=list)

    def row(self) -> ForwardedPort:
        return ForwardedPort(
            container_id=self.container_id,
            container_name=self.container_name,
            protocol=self.protocol,
            guest_port=self.guest_port,
            host_address=self.host_address,
            host_port=self.host_port,
            state=self.state,
            connections=sum(lis.active_connections for lis in self.listeners),
        )


class PortForwarder:
    """Keeps host listeners equal to the published ports of the VM's running containers.

    ``ssh`` is anything with ``direct_tcpip`` (a ``GuestSSH``). ``engine_url`` is the VM's
    engine socket on the host. ``host_port_offset`` is for tests that run without a VM,
    where the host port itself is already held by the local dockerd: the host listener is
    then ``host_port + offset`` (the guest side stays ``host_port``). Keep it 0 otherwise.

    :meth:`on_diff` is the monitor's callback; tests may call it directly without
    :meth:`start`. Thread-safe.
    """

    def __init__(
        self,
        ssh: TcpOpener,
        engine_url: str,
        *,
        expose_on_lan: bool = False,
        host_port_offset: int = 0,
    ) -> None:
        self.ssh = ssh
        self.engine_url = engine_url
        self.expose_on_lan = expose_on_lan
        self.host_port_offset = host_port_offset
        self._lock = threading.RLock()
        self._containers: dict[str, Container] = {}
        # (protocol, published host port) -> forward; docker lists a dual-stack port twice
        # (0.0.0.0 and ::), and one host port can be published by one container only.
        self._forwards: dict[tuple[str, int], _Forward] = {}
        self._client: EngineClient | None = None
        self._monitor: EngineMonitor | None = None
        self._stopped = False

    # ---- public ---------------------------------------------------------------------------
    def start(self) -> None:
        """Watch the engine; listeners follow its containers from the first listing on."""
        with self._lock:
            if self._monitor is not None:
                return
            self._stopped = False
            self._client = EngineClient(self.engine_url)
            self._monitor = EngineMonitor(self._client, self, kinds=("container",))
        self._monitor.start()

    def stop(self) -> None:
        """Stop watching and close every listener and forwarded connection."""
        with self._lock:
            monitor, self._monitor = self._monitor, None
            client, self._client = self._client, None
            self._stopped = True
        if monitor is not None:
            monitor.stop()
        if client is not None:
            with contextlib.suppress(EngineError, OSError):
                client.close()
        with self._lock:
            forwards = list(self._forwards.values())
            self._forwards.clear()
            self._containers.clear()
        for fwd in forwards:
            self._close(fwd)

    def table(self) -> list[ForwardedPort]:
        with self._lock:
            rows = [fwd.row() for fwd in self._forwards.values()]
        return sorted(rows, key=lambda r: (r.host_port, r.protocol, r.container_name))

    # ---- MonitorListener ------------------------------------------------------------------
    def on_connection(self, connected: bool, reason: str) -> None:
        # Listeners stay while the engine is unreachable: the monitor re-lists everything
        # when it is back, and on_diff then settles them.
        if not connected and reason:
            log.info("published ports: engine not reachable: %s", reason)

    def on_event(self, event: Event) -> None:
        """Events need no handling here: the monitor turns them into diffs."""

    def on_diff(self, diff: Diff[Any]) -> None:
        if diff.kind != "container":
            return
        with self._lock:
            if self._stopped:
                return
            for cid in diff.removed:
                self._containers.pop(cid, None)
            for container in (*diff.added, *diff.changed):
                self._containers[container.id] = container
            self._apply()

    # ---- internals ------------------------------------------------------------------------
    def _wanted(self) -> dict[tuple[str, int], _Forward]:
        wanted: dict[tuple[str, int], _Forward] = {}
        for c in sorted(self._containers.values(), key=lambda c: c.created):
            if c.state not in _FORWARDED_STATES:
                continue
            for p in c.ports:
                if p.host_port is None:
                    continue
                key = (p.protocol, p.host_port)
                if key in wanted:
                    continue
                # All interfaces only on the user's opt-in; an explicit address (even a
                # LAN one) stays on loopback: Berth cannot give the VM that host address.
                all_ifaces = self.expose_on_lan and p.host_ip in _ALL_INTERFACES
                wanted[key] = _Forward(
                    container_id=c.id,
                    container_name=c.name,
                    protocol=p.protocol,
                    guest_port=p.container_port,
                    engine_port=p.host_port,
                    host_address=ALL_V4 if all_ifaces else LOOPBACK_V4,
                    host_port=p.host_port + self.host_port_offset,
                )
        return wanted

    def _apply(self) -> None:
        """Make ``_forwards`` match ``_wanted()`` (called with the lock held)."""
        wanted = self._wanted()
        for key in [k for k in self._forwards if k not in wanted]:
            self._close(self._forwards.pop(key))
        for key, want in wanted.items():
            have = self._forwards.get(key)
            if have is not None and (have.host_address, have.host_port) == (
                want.host_address,
                want.host_port,
            ):
                have.container_id, have.container_name = want.container_id, want.container_name
                have.guest_port = want.guest_port
                if have.state != STATE_LISTENING and have.protocol == "tcp":
                    self._open(have)  # a conflict or error: try again on every diff
                continue
            if have is not None:
                self._close(have)
            self._forwards[key] = want
            if want.protocol == "tcp":
                self._open(want)
            else:
                want.state = (
                    STATE_UDP if want.protocol == "udp" else (f"{want.protocol}: not forwarded")
                )

    def _open(self, fwd: _Forward) -> None:
        where = _display(fwd.host_address, fwd.host_port)
        try:
            primary = _bind(fwd.host_address, fwd.host_port)
        except OverflowError:  # only reachable through host_port_offset
            fwd.state = f"error: {where} is not a TCP port"
            return
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fwd.state = f"conflict: {where} is in use by another program"
            elif exc.errno == errno.EACCES:
                fwd.state = (
                    f"error: not allowed to listen on {where} (ports below 1024 need"
                    " privileges on this host)"
                )
            else:
                fwd.state = f"error: cannot listen on {where}: {exc.strerror or exc}"
            log.warning("published port %s/%s: %s", fwd.host_port, fwd.protocol, fwd.state)
            return
        socks = [primary]
        if fwd.host_address == LOOPBACK_V4:
            # Clients resolving "localhost" may try ::1 first. Best effort: a host without
            # IPv6 loopback, or another program on [::1]:port, leaves IPv4 alone serving.
            try:
                socks.append(_bind(LOOPBACK_V6, fwd.host_port))
            except OSError as exc:
                log.debug("published port %s: not on [::1]: %s", fwd.host_port, exc)
        fwd.listeners = [_PortListener(self.ssh, s, fwd.engine_port) for s in socks]
        for lis in fwd.listeners:
            lis.start()
        fwd.state = STATE_LISTENING
        log.info(
            "published port %s -> %s:%s (%s)",
            _display(fwd.host_address, fwd.host_port),
            fwd.container_name,
            fwd.guest_port,
            fwd.container_id[:12],
        )

    @staticmethod
    def _close(fwd: _Forward) -> None:
        listeners, fwd.listeners = fwd.listeners, []
        for lis in listeners:
            lis.stop(STOP_TIMEOUT)
