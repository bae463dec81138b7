"""Published container ports on the host's localhost: QEMU hostfwd rules or SSH forwards.

In the VM, dockerd listens on ``HOST_PORT`` for every port a container publishes (``-p
8080:80``). :class:`PortForwarder` keeps, for each published port, exactly one host side
on ``127.0.0.1:HOST_PORT``, one of two ways (docs/ports.md; measured in
docs/benchmarks-ports.md):

* a **QEMU hostfwd rule** (QMP ``hostfwd_add``, given ``hostfwd=``) for an engine port
  published on all the guest's interfaces: QEMU's slirp accepts the connection and
  carries it to the guest's eth0 in C, with no SSH; TCP also gets an SSH listener on
  ``[::1]`` (QEMU 7.2's hostfwd is IPv4 only);
* an **SSH forward** for everything else (a port bound to one guest address, a guest
  program's listener, or no QMP): a host listener whose accepted connections each become
  one ``direct-tcpip`` channel to the guest's ``127.0.0.1:HOST_PORT`` on the VM's single
  SSH transport, pumped both ways with half-close.

Exposure (DESIGN.md section 7): with user-mode networking everything on the LAN could
otherwise reach a container, so a port is bound on ``0.0.0.0`` only when the machine's
``expose_ports_on_lan`` is set *and* the container asked for all interfaces (host IP ``''``,
``0.0.0.0`` or ``::``). A container that asked for one address (``127.0.0.1:8080:80``) stays
on 127.0.0.1 either way.

The pumping is :mod:`relay`'s: each bound address is served by a :class:`_PortListener`,
an :class:`EngineSocketRelay` whose listening socket is TCP and whose channel is
``direct-tcpip``, so the accept loop, the connection bound, the half-close handling and
the teardown are the engine socket's, tested there.

What to forward comes from the guest agent (:meth:`PortForwarder.set_guest_ports`, fed
by :class:`~vm_backend.machine.agent.AgentClient`: the engine's port table plus the guest's
own listeners) or, without an agent, from an :class:`EngineMonitor` on ``engine_url``.

UDP (``udp=True``): SSH has no datagram channel, so each host UDP port is one socket on
127.0.0.1 and each client address on it is one *flow*: a ``direct-streamlocal`` channel to
the agent's socket that opens with ``{"type": "udp", "port": P}`` and then carries
length-prefixed datagrams both ways; the agent sends them from one connected UDP socket to
the guest's ``127.0.0.1:P`` (docs/ports.md, "UDP").
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from paramiko.channel import Channel

from vm_backend.engine.client import EngineClient
from vm_backend.engine.errors import EngineError
from vm_backend.engine.models import Container, ContainerState, Event
from vm_backend.engine.monitor import Diff, EngineMonitor
from vm_backend.errors import BerthError
from vm_backend.guest.agent import SOCKET_PATH as AGENT_SOCKET
from vm_backend.guest.agent import FrameReader, ProtocolError, encode, frame
from vm_backend.machine.agent import GuestPort
from vm_backend.machine.qmp import QmpError
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
UDP_FLOW_IDLE_S = 60.0  # a UDP client silent this long loses its flow (like docker-proxy)
UDP_MAX_FLOWS = 64  # per port; the oldest flow is dropped beyond
VIA_HOSTFWD = "hostfwd"  # a QEMU slirp rule (QMP hostfwd_add): bytes never touch SSH
VIA_SSH = "ssh"  # a host listener here, one SSH channel per connection (or UDP flow)


class TcpOpener(Protocol):
    """What the forwarder needs from the SSH session (``GuestSSH``; tests fake it)."""

    def direct_tcpip(self, host: str, port: int) -> Channel: ...


class HostForwards(Protocol):
    """QEMU's user-net forwards (a :class:`~vm_backend.machine.qmp.SyncQmp`; tests fake it)."""

    def hostfwd_add(self, proto: str, host_addr: str, host_port: int, guest_port: int) -> None: ...

    def hostfwd_remove(self, proto: str, host_addr: str, host_port: int) -> None: ...

    def usernet_info(self) -> str: ...


class UnixOpener(Protocol):
    """UDP flows also need ``open_unix_socket`` (the agent's socket)."""

    def open_unix_socket(self, path: str) -> Channel: ...


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
    # TCP connections, or UDP flows (client addresses) open now; None when not known
    # (a UDP port forwarded by QEMU's hostfwd: slirp keeps no flow per client).
    connections: int | None
    source: str = "engine"  # "engine" or "listener" (a guest program; no container)
    via: str = VIA_SSH  # "hostfwd" (QEMU's slirp rule) or "ssh" (this process's listener)


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


class _UdpFlow:
    """One host client address: a channel to the agent carrying framed datagrams."""

    def __init__(self, channel: Channel, client: Any) -> None:
        self.channel = channel
        self.client = client
        self.frames = FrameReader()
        self.last_used = time.monotonic()


class _UdpRelay:
    """One bound UDP address; each client address is a flow through the guest agent."""

    def __init__(self, opener: UnixOpener, sock: socket.socket, guest_port: int) -> None:
        self.opener = opener
        self.sock = sock
        self.guest_port = guest_port
        self._flows: dict[Any, _UdpFlow] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._torn_down = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._flows)

    def start(self) -> None:
        host, port = self.sock.getsockname()[:2]
        self._thread = threading.Thread(
            target=self._loop, name=f"berth-udp:{host}:{port}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        with self._lock:
            self._stopping = True
            # Never write to the pipe once it is closed: its fd number may be reused.
            if not self._torn_down:
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"x")
        thread = self._thread
        if thread is None:
            self._teardown()  # never started; otherwise the loop tears down as it ends
        elif thread is not threading.current_thread():
            thread.join(timeout)

    def _teardown(self) -> None:
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
            flows = list(self._flows.values())
            self._flows.clear()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        for flow in flows:
            with contextlib.suppress(Exception):
                flow.channel.close()
        self.sock.close()

    def _open_flow(self, client: Any, sel: selectors.BaseSelector) -> _UdpFlow:
        channel = self.opener.open_unix_socket(AGENT_SOCKET)
        try:
            channel.sendall(encode({"type": "udp", "port": self.guest_port}))
        except BaseException:
            channel.close()
            raise
        flow = _UdpFlow(channel, client)
        with self._lock:
            if len(self._flows) >= UDP_MAX_FLOWS:
                oldest = min(self._flows.values(), key=lambda f: f.last_used)
                self._drop(oldest, sel)
            self._flows[client] = flow
        sel.register(channel.fileno(), selectors.EVENT_READ, flow)
        return flow

    def _drop(self, flow: _UdpFlow, sel: selectors.BaseSelector) -> None:
        self._flows.pop(flow.client, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(flow.channel.fileno())
        with contextlib.suppress(Exception):
            flow.channel.close()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "host")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                for key, _ in sel.select(timeout=5.0):
                    if key.data == "wake":
                        return
                    if key.data == "host":
                        self._from_host(sel)
                    else:
                        self._from_guest(key.data, sel)
                now = time.monotonic()
                with self._lock:
                    for flow in [
                        f for f in self._flows.values() if now - f.last_used > UDP_FLOW_IDLE_S
                    ]:
                        self._drop(flow, sel)
        except Exception:
            log.exception("UDP relay on %s failed", self.sock.getsockname())
        finally:
            sel.close()
            self._teardown()

    def _from_host(self, sel: selectors.BaseSelector) -> None:
        try:
            datagram, client = self.sock.recvfrom(65535)
        except OSError:
            return
        with self._lock:
            flow = self._flows.get(client)
        try:
            if flow is None:
                flow = self._open_flow(client, sel)
            flow.last_used = time.monotonic()
            flow.channel.sendall(frame(datagram))
        except (BerthError, OSError, EOFError, ProtocolError) as exc:
            log.info("UDP %s from %s dropped: %s", self.guest_port, client, exc)
            if flow is not None:
                with self._lock:
                    self._drop(flow, sel)

    def _from_guest(self, flow: _UdpFlow, sel: selectors.BaseSelector) -> None:
        try:
            data = flow.channel.recv(65536)
        except (OSError, EOFError):
            data = b""
        if not data:
            with self._lock:
                self._drop(flow, sel)
            return
        flow.last_used = time.monotonic()
        for datagram in flow.frames.feed(data):
            with contextlib.suppress(OSError):
                self.sock.sendto(datagram, flow.client)


def _bind_udp(address: str, port: int) -> socket.socket:
    # No SO_REUSEADDR: on Linux it would let two UDP sockets share the port silently.
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


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


# The rule's own listening socket, and sockets of connections that are over.
_USERNET_NOT_OPEN = frozenset(
    {"TCP[HOST_FORWARD]", "TCP[TIME_WAIT]", "TCP[CLOSED]", "TCP[NONE]"}
)


def parse_usernet_connections(text: str) -> dict[tuple[str, int], int]:
    """Open hostfwd TCP connections per host ``(address, port)`` from HMP ``info usernet``.

    A connection slirp accepted for a rule is a ``TCP[ESTABLISHED]`` (or any state but
    ``HOST_FORWARD``, the rule's own listening socket, and ``TIME_WAIT``/``CLOSED``, which
    are over) line whose source is the host
    address and port it was accepted on, e.g.
    ``TCP[ESTABLISHED]  12       127.0.0.1 18080       10.0.2.15    80     0     0``.
    The guest's own outgoing connections show their remote peer there instead; those in
    slirp's ``10.0.2.0/24`` (the guest reaching the host as 10.0.2.2) are skipped so a
    rule on ``0.0.0.0`` does not count them.
    """
    counts: dict[tuple[str, int], int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[0].startswith("TCP["):
            continue
        if fields[0] in _USERNET_NOT_OPEN:
            continue
        address, port = fields[2], fields[3]
        if not port.isdigit() or address.startswith("10.0.2."):
            continue
        key = (address, int(port))
        counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass
class _Forward:
    """The host side of one published port (or the row of an unforwarded UDP one)."""

    container_id: str
    container_name: str
    protocol: str
    guest_port: int  # container port
    engine_port: int  # host port as published in the guest
    host_address: str
    host_port: int
    state: str = ""
    source: str = "engine"
    via: str = VIA_SSH
    retry_at: float = 0.0  # monotonic time before which a failed bind is not retried
    listeners: list[_PortListener | _UdpRelay] = field(default_factory=list)
    rule: bool = False  # a hostfwd rule on (host_address, host_port) is in QEMU now

    def row(self, usernet: dict[tuple[str, int], int] | None) -> ForwardedPort:
        connections: int | None = sum(lis.active_connections for lis in self.listeners)
        if self.rule:
            if self.protocol != "tcp" or usernet is None:
                connections = None
            else:
                assert connections is not None
                if self.host_address == ALL_V4:
                    connections += sum(
                        n for (_a, p), n in usernet.items() if p == self.host_port
                    )
                else:
                    connections += usernet.get((self.host_address, self.host_port), 0)
        return ForwardedPort(
            container_id=self.container_id,
            container_name=self.container_name,
            protocol=self.protocol,
            guest_port=self.guest_port,
            host_address=self.host_address,
            host_port=self.host_port,
            state=self.state,
            connections=connections,
            source=self.source,
            via=self.via,
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
        engine_url: str | None,
        *,
        expose_on_lan: bool = False,
        host_port_offset: int = 0,
        udp: bool = False,
        retry_interval_s: float = 0.0,
        hostfwd: HostForwards | None = None,
        reserved_ports: Collection[int] = (),
    ) -> None:
        self.ssh = ssh
        # QEMU's slirp forwards for ports the guest publishes on all its interfaces; None:
        # every port through SSH. reserved_ports: host ports whose QEMU rule is never ours
        # to remove (the VM's own SSH forward).
        self.hostfwd = hostfwd
        self.reserved_ports = frozenset(reserved_ports)
        self.engine_url = engine_url
        self.expose_on_lan = expose_on_lan
        self.host_port_offset = host_port_offset
        self.udp = udp
        # A conflict is tried again on every later update, at most this often (the agent
        # path calls refresh() on every heartbeat, so a freed port is picked up).
        self.retry_interval_s = retry_interval_s
        self._lock = threading.RLock()
        self._containers: dict[str, Container] = {}
        # Set by set_guest_ports (the agent): then the source of truth instead of containers.
        self._guest_ports: tuple[GuestPort, ...] | None = None
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
            self._stopped = False
            if self._monitor is not None or self.engine_url is None:
                return  # already watching, or fed by the agent (set_guest_ports)
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

    def set_guest_ports(self, ports: Iterable[GuestPort]) -> None:
        """The guest agent's full list of published ports (AgentClient.on_ports)."""
        with self._lock:
            if self._stopped:
                return
            self._guest_ports = tuple(ports)
            self._apply()

    def refresh(self) -> None:
        """Try failed binds again (rate-limited by ``retry_interval_s``)."""
        with self._lock:
            if not self._stopped:
                self._apply()

    def table(self) -> list[ForwardedPort]:
        with self._lock:
            counted = any(f.rule and f.protocol == "tcp" for f in self._forwards.values())
        usernet = self._usernet() if counted else None
        with self._lock:
            rows = [fwd.row(usernet) for fwd in self._forwards.values()]
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
    def _usernet(self) -> dict[tuple[str, int], int] | None:
        """Connections per hostfwd rule from ``info usernet``; None if QEMU cannot say."""
        hostfwd = self.hostfwd
        if hostfwd is None:
            return None
        try:
            return parse_usernet_connections(hostfwd.usernet_info())
        except (BerthError, RuntimeError, OSError) as exc:
            log.debug("info usernet failed: %s", exc)
            return None

    def _via(self, p: GuestPort) -> str:
        # Only what the guest serves on its network interface can take a QEMU rule: the
        # engine's ports published on all interfaces (dockerd's proxy listens on 0.0.0.0
        # in the guest, so on eth0, where slirp delivers). A container's explicit address
        # (127.0.0.1:8080:80) and a guest program's listener (maybe on the guest's
        # loopback only) go through SSH, which reaches the guest's 127.0.0.1.
        if (
            self.hostfwd is not None
            and p.source == "engine"
            and p.host_ip in _ALL_INTERFACES
            and p.protocol in ("tcp", "udp")
        ):
            return VIA_HOSTFWD
        return VIA_SSH

    def _published(self) -> list[GuestPort]:
        if self._guest_ports is not None:
            return list(self._guest_ports)
        out: list[GuestPort] = []
        for c in sorted(self._containers.values(), key=lambda c: c.created):
            if c.state not in _FORWARDED_STATES:
                continue
            for p in c.ports:
                if p.host_port is not None:
                    out.append(
                        GuestPort(
                            protocol=p.protocol,
                            port=p.host_port,
                            container_port=p.container_port,
                            host_ip=p.host_ip,
                            container_id=c.id,
                            container_name=c.name,
                            source="engine",
                        )
                    )
        return out

    def _wanted(self) -> dict[tuple[str, int], _Forward]:
        wanted: dict[tuple[str, int], _Forward] = {}
        for p in self._published():
            key = (p.protocol, p.port)
            if key in wanted:
                continue
            # All interfaces only on the user's opt-in; an explicit address (even a
            # LAN one) stays on loopback: Berth cannot give the VM that host address.
            all_ifaces = self.expose_on_lan and p.host_ip in _ALL_INTERFACES
            wanted[key] = _Forward(
                container_id=p.container_id,
                container_name=p.container_name,
                protocol=p.protocol,
                guest_port=p.container_port,
                engine_port=p.port,
                host_address=ALL_V4 if all_ifaces else LOOPBACK_V4,
                host_port=p.port + self.host_port_offset,
                source=p.source,
                via=self._via(p),
            )
        return wanted

    def _forwarded(self, fwd: _Forward) -> bool:
        if fwd.protocol == "tcp":
            return True
        return fwd.protocol == "udp" and (self.udp or fwd.via == VIA_HOSTFWD)

    def _apply(self) -> None:
        """Make ``_forwards`` match ``_wanted()`` (called with the lock held)."""
        wanted = self._wanted()
        for key in [k for k in self._forwards if k not in wanted]:
            self._close(self._forwards.pop(key))
        for key, want in wanted.items():
            have = self._forwards.get(key)
            if have is not None and (have.host_address, have.host_port, have.via) == (
                want.host_address,
                want.host_port,
                want.via,
            ):
                have.container_id, have.container_name = want.container_id, want.container_name
                have.guest_port = want.guest_port
                have.source = want.source
                if (
                    have.state != STATE_LISTENING
                    and self._forwarded(have)
                    and time.monotonic() >= have.retry_at
                ):
                    self._open(have)  # a conflict or error: try again on every diff
                continue
            if have is not None:
                self._close(have)
            self._forwards[key] = want
            if self._forwarded(want):
                self._open(want)
            else:
                want.state = (
                    STATE_UDP if want.protocol == "udp" else (f"{want.protocol}: not forwarded")
                )

    def _open(self, fwd: _Forward) -> None:
        where = _display(fwd.host_address, fwd.host_port)
        previous = fwd.state
        fwd.retry_at = time.monotonic() + self.retry_interval_s
        udp = fwd.protocol == "udp"
        bind = _bind_udp if udp else _bind
        try:
            primary = bind(fwd.host_address, fwd.host_port)
        except OverflowError:  # only reachable through host_port_offset
            fwd.state = f"error: {where} is not a {fwd.protocol.upper()} port"
            return
        except OSError as exc:
            if (
                exc.errno == errno.EADDRINUSE
                and fwd.via == VIA_HOSTFWD
                and self._remove_stale_rule(fwd)
            ):
                self._open(fwd)  # the port was held by our own rule from a previous berthd
                return
            self._bind_failed(fwd, where, exc, previous)
            return
        if fwd.via == VIA_HOSTFWD:
            # The bind above was the check (a busy port gives the kernel's plain errno, and
            # UDP is bound without SO_REUSEADDR, which slirp's own socket would not catch);
            # QEMU binds the same address right after.
            primary.close()
            self._open_hostfwd(fwd, where, previous)
            return
        if udp:
            relay = _UdpRelay(cast(UnixOpener, self.ssh), primary, fwd.engine_port)
            fwd.listeners = [relay]
            relay.start()
            fwd.state = STATE_LISTENING
            log.info("published port %s/udp -> %s", where, fwd.container_name)
            return
        socks = [primary]
        if fwd.host_address == LOOPBACK_V4:
            # Clients resolving "localhost" may try ::1 first. Best effort: a host without
            # IPv6 loopback, or another program on [::1]:port, leaves IPv4 alone serving.
            try:
                socks.append(_bind(LOOPBACK_V6, fwd.host_port))
            except OSError as exc:
                log.debug("published port %s: not on [::1]: %s", fwd.host_port, exc)
        listeners = [_PortListener(self.ssh, s, fwd.engine_port) for s in socks]
        fwd.listeners = list(listeners)
        for lis in listeners:
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
    def _bind_failed(fwd: _Forward, where: str, exc: OSError, previous: str) -> None:
        if exc.errno == errno.EADDRINUSE:
            fwd.state = f"conflict: {where} is in use by another program"
        elif exc.errno == errno.EACCES:
            fwd.state = (
                f"error: not allowed to listen on {where} (ports below 1024 need"
                " privileges on this host)"
            )
        else:
            fwd.state = f"error: cannot listen on {where}: {exc.strerror or exc}"
        if fwd.state != previous:
            log.warning("published port %s/%s: %s", fwd.host_port, fwd.protocol, fwd.state)

    def _open_hostfwd(self, fwd: _Forward, where: str, previous: str) -> None:
        hostfwd = self.hostfwd
        assert hostfwd is not None
        try:
            hostfwd.hostfwd_add(fwd.protocol, fwd.host_address, fwd.host_port, fwd.engine_port)
        except (QmpError, RuntimeError, OSError) as exc:
            # QEMU's own words ("Could not set up host forwarding rule 'tcp:…'"): the port
            # was taken between our check and QEMU's bind. Anything else (QMP gone, no
            # answer) is an error, not a conflict; both are tried again later.
            text = exc.message if isinstance(exc, QmpError) else str(exc)
            kind = "conflict" if "Could not set up host forwarding" in text else "error"
            fwd.state = f"{kind}: {where}: {text}"
            if fwd.state != previous:
                log.warning("published port %s/%s: %s", fwd.host_port, fwd.protocol, fwd.state)
            return
        fwd.rule = True
        if fwd.protocol == "tcp" and fwd.host_address == LOOPBACK_V4:
            # QEMU 7.2's hostfwd takes IPv4 addresses only ("Bad host address" for
            # [::1]): clients resolving "localhost" to ::1 first get an SSH listener there.
            try:
                v6 = _bind(LOOPBACK_V6, fwd.host_port)
            except OSError as exc:
                log.debug("published port %s: not on [::1]: %s", fwd.host_port, exc)
            else:
                lis = _PortListener(self.ssh, v6, fwd.engine_port)
                fwd.listeners = [lis]
                lis.start()
        fwd.state = STATE_LISTENING
        log.info(
            "published port %s/%s -> %s:%s (%s) by a QEMU hostfwd rule",
            where, fwd.protocol, fwd.container_name, fwd.guest_port, fwd.container_id[:12],
        )

    def _remove_stale_rule(self, fwd: _Forward) -> bool:
        """Remove a rule of ours left in QEMU (berthd restarted without stopping the VM).

        True when QEMU had a rule on exactly this address and port (it answers "not
        found" otherwise: then another program holds the port). Never for the VM's SSH
        forward.
        """
        hostfwd = self.hostfwd
        if hostfwd is None or fwd.rule or fwd.host_port in self.reserved_ports:
            return False
        try:
            hostfwd.hostfwd_remove(fwd.protocol, fwd.host_address, fwd.host_port)
        except (QmpError, RuntimeError, OSError):
            return False
        log.info("removed a stale hostfwd rule on %s/%s", fwd.host_port, fwd.protocol)
        return True

    def _close(self, fwd: _Forward) -> None:
        listeners, fwd.listeners = fwd.listeners, []
        for lis in listeners:
            lis.stop(STOP_TIMEOUT)
        if fwd.rule:
            fwd.rule = False
            hostfwd = self.hostfwd
            assert hostfwd is not None
            try:
                hostfwd.hostfwd_remove(fwd.protocol, fwd.host_address, fwd.host_port)
            except (QmpError, RuntimeError, OSError) as exc:
                # QEMU is gone (the VM stopped): so is the rule.
                log.debug("hostfwd_remove %s/%s: %s", fwd.host_port, fwd.protocol, exc)
