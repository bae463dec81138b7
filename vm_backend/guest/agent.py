"""Berth's guest agent: runs in the helper VM as root, Python stdlib only.

It listens on a root-only unix socket (``/run/berth/agent.sock``, 0600 in the 0700
``/run/berth``); berthd reaches it over the VM's pinned SSH transport with a
``direct-streamlocal@openssh.com`` channel, so nothing listens on the guest network and no
container can reach it. The protocol is versioned JSON lines (docs/agent.md):

* berthd opens with ``{"type": "hello", "protocol": 1, "host_time": T}``; the agent answers
  ``hello`` (protocol and agent version, boot id, kernel), then a full-state ``snapshot``
  (published ports, resources, clock), then incremental ``ports`` / ``resources`` updates,
  each replacing that whole section, so nothing depends on history.
* ``heartbeat`` both ways: berthd's carries its wall-clock time (and the last round trip);
  the agent sets the guest clock when it is off by more than 100 ms and answers with its
  own time and the offset it found.
* A connection that opens with ``{"type": "udp", "port": P}`` is a UDP flow instead: the
  agent sends each framed datagram (2-byte big-endian length + payload) to the guest's
  ``127.0.0.1:P`` from one connected UDP socket and frames every reply back.

Published ports come from the engine (``/events`` on ``/var/run/docker.sock`` plus a
container listing on every container event) and, as a fallback for ``--network host`` and
other programs, from the guest's listening sockets (``/proc/net/{tcp,tcp6,udp,udp6}``).

This file is also imported by berthd (``vm_backend.machine.agent``) for the codec and the
parsers, so it must stay importable on any host: no side effects at import time.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

PROTOCOL_VERSION = 1
AGENT_VERSION = "1.0.0"
SOCKET_PATH = "/run/berth/agent.sock"
AGENT_PATH = "/usr/lib/berth/agent.py"  # where the guest image installs this file
DOCKER_SOCKET = "/var/run/docker.sock"
DATA_MOUNT = "/mnt/data"
MAX_LINE = 1 << 20  # a JSON line longer than this is a protocol error
CLOCK_THRESHOLD_S = 0.1
CLOCK_CONFIRM_S = 1.0  # offsets below this need two heartbeats in a row to agree
RESOURCES_INTERVAL_S = 5.0
LISTENERS_INTERVAL_S = 2.0
UDP_MAX_DATAGRAM = 65507
# Listeners of these guest programs are Berth's own plumbing, never forwarded.
SYSTEM_COMMS = frozenset({"sshd", "containerd", "dockerd", "docker-proxy", "acpid"})
_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")


# ---------------------------------------------------------------------------------------
# Codec (shared with berthd)
# ---------------------------------------------------------------------------------------
class ProtocolError(Exception):
    """A malformed message; the connection that sent it is closed."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as one JSON line (compact, UTF-8, newline-terminated)."""
    if not isinstance(message.get("type"), str):
        raise ProtocolError("a message needs a string 'type'")
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One JSON line (with or without its newline) to a message dict."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes")
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from exc
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ProtocolError("a message must be an object with a string 'type'")
    return value


class LineReader:
    """Splits a byte stream into lines; bounded so a peer cannot grow it forever."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_LINE:
            raise ProtocolError(f"line longer than {MAX_LINE} bytes")
        return [line for line in lines if line.strip()]


def frame(datagram: bytes) -> bytes:
    """A UDP datagram on a stream: 2-byte big-endian length, then the payload."""
    if len(datagram) > 0xFFFF:
        raise ProtocolError("datagram too large")
    return struct.pack(">H", len(datagram)) + datagram


class FrameReader:
    """Splits a byte stream back into datagrams (see :func:`frame`)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 2:
            (size,) = struct.unpack(">H", self._buf[:2])
            if len(self._buf) < 2 + size:
                break
            out.append(self._buf[2 : 2 + size])
            self._buf = self._buf[2 + size :]
        return out


# ---------------------------------------------------------------------------------------
# Parsers (pure functions: unit-tested on the host)
# ---------------------------------------------------------------------------------------
def ports_from_containers(containers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Published ports from the engine's ``GET /containers/json`` (running/paused only)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for c in sorted(containers, key=lambda c: int(c.get("Created") or 0)):
        if c.get("State") not in ("running", "paused"):
            continue
        names = c.get("Names") or []
        name = str(names[0]).lstrip("/") if names else str(c.get("Id", ""))[:12]
        for p in c.get("Ports") or []:
            public = p.get("PublicPort")
            if not public:
                continue
            proto = str(p.get("Type") or "tcp")
            key = (proto, int(public))
            if key in out:  # dual stack: 0.0.0.0 and :: are one port
                continue
            out[key] = {
                "protocol": proto,
                "port": int(public),
                "container_port": int(p.get("PrivatePort") or 0),
                "host_ip": str(p.get("IP") or ""),
                "container_id": str(c.get("Id", "")),
                "container_name": name,
                "source": "engine",
            }
    return sorted(out.values(), key=lambda r: (r["port"], r["protocol"]))


def _hex_addr(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc prints IPv6 as four host-order 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def parse_proc_net(text: str, protocol: str) -> list[tuple[str, int, int]]:
    """Listening sockets in a ``/proc/net/{tcp,udp}[6]`` table: ``(address, port, inode)``.

    TCP: state 0A (LISTEN). UDP: unconnected sockets (state 07 with no remote port).
    Only wildcard and loopback addresses: anything else is not reachable as localhost.
    """
    out: list[tuple[str, int, int]] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote, state = fields[1], fields[2], fields[3]
        if protocol == "tcp" and state != "0A":
            continue
        if protocol == "udp" and (state != "07" or not remote.endswith(":0000")):
            continue
        addr_hex, port_hex = local.split(":")
        try:
            addr = _hex_addr(addr_hex)
        except ValueError:
            continue
        if addr not in ("0.0.0.0", "::", "127.0.0.1", "::1", "::ffff:127.0.0.1"):
            continue
        out.append((addr, int(port_hex, 16), int(fields[9])))
    return out


def container_id_from_cgroup(text: str) -> str:
    """The 64-hex container id in a ``/proc/PID/cgroup`` file, or ``""``."""
    match = _CONTAINER_ID.search(text)
    return match.group(1) if match else ""


def parse_meminfo(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return {"total_bytes": total, "available_bytes": available, "used_bytes": total - available}


def parse_cpu(text: str) -> tuple[int, int]:
    """``(busy, total)`` jiffies from the ``cpu`` line of ``/proc/stat``."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values[:8])
            return total - idle, total
    return 0, 0


# ---------------------------------------------------------------------------------------
# The engine, over HTTP on its unix socket
# ---------------------------------------------------------------------------------------
class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None = 10.0) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def engine_get(path: str, url: str, timeout: float | None = 10.0) -> Any:
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"engine answered {resp.status} to GET {url}")
        return json.loads(body)
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------
def _log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class Agent:
    """The guest-side state plus the sessions that report it."""

    def __init__(
        self,
        socket_path: str = SOCKET_PATH,
        docker_socket: str = DOCKER_SOCKET,
        data_mount: str = DATA_MOUNT,
        set_clock: Callable[[float], None] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.docker_socket = docker_socket
        self.data_mount = data_mount
        self.set_clock = set_clock or (lambda t: time.clock_settime(time.CLOCK_REALTIME, t))
        self.lock = threading.Condition()
        self.engine_ports: list[dict[str, Any]] = []
        self.listener_ports: list[dict[str, Any]] = []
        self.resources: dict[str, Any] = {}
        self.ports_version = 0
        self.resources_version = 0
        self.clock_corrections = 0
        self.last_clock_offset = 0.0
        self.stopping = threading.Event()
        self._cpu_prev: tuple[int, int] | None = None
        self._owners: dict[int, tuple[str, str]] = {}
        self._last_offset = 0.0  # the previous heartbeat's offset, if beyond the threshold

    # ---- state ------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "agent_version": AGENT_VERSION,
            "boot_id": _read("/proc/sys/kernel/random/boot_id").strip(),
            "kernel": os.uname().release,
            "pid": os.getpid(),
        }

    def ports(self) -> list[dict[str, Any]]:
        with self.lock:
            merged = {(p["protocol"], p["port"]): p for p in self.listener_ports}
            merged.update({(p["protocol"], p["port"]): p for p in self.engine_ports})
        return sorted(merged.values(), key=lambda r: (r["port"], r["protocol"]))

    def clock(self) -> dict[str, Any]:
        return {
            "guest_time": time.time(),
            "corrections": self.clock_corrections,
            "last_offset_s": self.last_clock_offset,
        }

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            resources = dict(self.resources)
        return {
            "type": "snapshot",
            "ports": self.ports(),
            "resources": resources,
            "clock": self.clock(),
        }

    def _set_engine_ports(self, ports: list[dict[str, Any]]) -> None:
        with self.lock:
            if ports != self.engine_ports:
                self.engine_ports = ports
                self.ports_version += 1
                self.lock.notify_all()

    def _set_listener_ports(self, ports: list[dict[str, Any]]) -> None:
        with self.lock:
            if ports != self.listener_ports:
                self.listener_ports = ports
                self.ports_version += 1
                self.lock.notify_all()

    # ---- clock ------------------------------------------------------------------------
    def check_clock(self, host_time: float, rtt: float) -> float:
        """Set the guest clock when it is off the host's by more than the threshold.

        ``host_time`` left the host about ``rtt / 2`` ago, give or take ``rtt / 2``: an
        offset within that uncertainty is noise (a loaded host or guest), not drift, and
        correcting it would only move the clock back and forth. For the same reason an
        offset under ``CLOCK_CONFIRM_S`` is corrected only when the previous heartbeat
        found one of the same sign (a message delayed in a loaded guest looks like a clock
        ahead once); larger ones (a clock set wrong, a paused VM) are corrected at once.
        """
        rtt = max(0.0, min(rtt, 5.0))
        estimate = host_time + rtt / 2
        measured_at = time.monotonic()
        offset = time.time() - estimate
        beyond = abs(offset) > max(CLOCK_THRESHOLD_S, rtt / 2)
        previous, self._last_offset = self._last_offset, (offset if beyond else 0.0)
        confirmed = abs(offset) >= CLOCK_CONFIRM_S or previous * offset > 0
        if beyond and confirmed:
            self._last_offset = 0.0
            try:
                self.set_clock(estimate + (time.monotonic() - measured_at))
                self.clock_corrections += 1
                self.last_clock_offset = offset
                _log(f"clock corrected by {-offset:+.3f} s")
            except OSError as exc:
                _log(f"cannot set the clock: {exc}")
        return offset

    # ---- watchers ---------------------------------------------------------------------
    def refresh_engine(self) -> None:
        containers = engine_get(self.docker_socket, "/containers/json?all=1")
        self._set_engine_ports(ports_from_containers(containers))

    def watch_engine(self) -> None:
        """Follow ``/events`` (containers); re-list on every event and on reconnect."""
        while not self.stopping.is_set():
            conn = _UnixHTTPConnection(self.docker_socket, timeout=None)
            try:
                filters = json.dumps({"type": ["container"]})
                conn.request("GET", "/events?filters=" + quote(filters, safe=""))
                resp = conn.getresponse()
                if resp.status != 200:
                    raise OSError(f"engine answered {resp.status} to GET /events")
                self.refresh_engine()
                while not self.stopping.is_set():
                    line = resp.readline()
                    if not line:
                        raise OSError("the engine closed the event stream")
                    if line.strip():
                        self.refresh_engine()
            except (OSError, ValueError, http.client.HTTPException) as exc:
                _log(f"engine: {exc}")
                self._set_engine_ports([])
                self.stopping.wait(1.0)
            finally:
                conn.close()

    def scan_listeners(self) -> list[dict[str, Any]]:
        inodes: dict[int, tuple[str, int]] = {}
        for proto in ("tcp", "udp"):
            for suffix in ("", "6"):
                text = _read(f"/proc/net/{proto}{suffix}")
                for _addr, port, inode in parse_proc_net(text, proto):
                    inodes[inode] = (proto, port)
        if not inodes:
            return []
        # inode -> (comm, container id); a socket's inode is unique while it exists, so
        # /proc/*/fd is walked only when a listener appeared that is not known yet.
        owners = {i: o for i, o in self._owners.items() if i in inodes}
        self._owners = owners
        for pid in os.listdir("/proc") if set(inodes) - set(owners) else ():
            if not pid.isdigit() or pid == str(os.getpid()):
                continue
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inode = int(target[8:-1])
                    if inode in inodes and inode not in owners:
                        owners[inode] = (
                            _read(f"/proc/{pid}/comm").strip(),
                            container_id_from_cgroup(_read(f"/proc/{pid}/cgroup")),
                        )
        found: dict[tuple[str, int], dict[str, Any]] = {}
        for inode, (proto, port) in inodes.items():
            comm, cid = owners.get(inode, ("", ""))
            if inode not in owners or comm in SYSTEM_COMMS:
                continue  # our own socket, a gone process, or Berth's plumbing
            found[(proto, port)] = {
                "protocol": proto,
                "port": port,
                "container_port": port,
                "host_ip": "",
                "container_id": cid,
                "container_name": comm,
                "source": "listener",
            }
        return sorted(found.values(), key=lambda r: (r["port"], r["protocol"]))

    def watch_listeners(self) -> None:
        while not self.stopping.is_set():
            try:
                self._set_listener_ports(self.scan_listeners())
            except OSError as exc:
                _log(f"listeners: {exc}")
            self.stopping.wait(LISTENERS_INTERVAL_S)

    def measure_resources(self) -> dict[str, Any]:
        busy, total = parse_cpu(_read("/proc/stat"))
        cpu = 0.0
        if self._cpu_prev is not None and total > self._cpu_prev[1]:
            cpu = 100.0 * (busy - self._cpu_prev[0]) / (total - self._cpu_prev[1])
        self._cpu_prev = (busy, total)
        disk: dict[str, int] = {}
        with contextlib.suppress(OSError):
            st = os.statvfs(self.data_mount)
            disk = {
                "total_bytes": st.f_blocks * st.f_frsize,
                "free_bytes": st.f_bavail * st.f_frsize,
                "used_bytes": (st.f_blocks - st.f_bfree) * st.f_frsize,
            }
        return {
            "memory": parse_meminfo(_read("/proc/meminfo")),
            "disk": disk,
            "cpu_percent": round(cpu, 1),
            "cpus": os.cpu_count() or 1,
            "uptime_s": float((_read("/proc/uptime").split() or ["0"])[0]),
        }

    def watch_resources(self) -> None:
        while not self.stopping.is_set():
            res = self.measure_resources()
            with self.lock:
                self.resources = res
                self.resources_version += 1
                self.lock.notify_all()
            self.stopping.wait(RESOURCES_INTERVAL_S)

    # ---- sessions ---------------------------------------------------------------------
    def serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        old = os.umask(0o177)
        try:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(self.socket_path)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        server.listen(64)
        for target in (self.watch_engine, self.watch_listeners, self.watch_resources):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()
        _log(f"agent {AGENT_VERSION} (protocol {PROTOCOL_VERSION}) on {self.socket_path}")
        while not self.stopping.is_set():
            try:
                conn, _ = server.accept()
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.ECONNABORTED):
                    continue
                raise
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        """One connection: a control session or a UDP flow, by its first line."""
        try:
            conn.settimeout(30.0)
            first, rest = _read_first_line(conn)
            conn.settimeout(None)
            message = decode(first)
            if message["type"] == "udp":
                self.udp_flow(conn, int(message["port"]), rest)
            elif message["type"] == "hello":
                self.control(conn, message, rest)
            else:
                conn.sendall(encode({"type": "error", "message": "expected hello or udp"}))
        except (OSError, ProtocolError, KeyError, ValueError) as exc:
            _log(f"connection ended: {exc}")
        finally:
            conn.close()

    def control(self, conn: socket.socket, hello: dict[str, Any], rest: bytes) -> None:
        major = hello.get("protocol")
        if major != PROTOCOL_VERSION:
            conn.sendall(
                encode(
                    {
                        "type": "error",
                        "message": f"protocol {major} not supported (agent speaks"
                        f" {PROTOCOL_VERSION})",
                    }
                )
            )
            return
        if isinstance(hello.get("host_time"), (int, float)):
            self.check_clock(float(hello["host_time"]), 0.0)
        send_lock = threading.Lock()

        def send(message: dict[str, Any]) -> None:
            data = encode(message)
            with send_lock:
                conn.sendall(data)

        with self.lock:
            ports_v, res_v = self.ports_version, self.resources_version
        send(self.hello())
        send(self.snapshot())
        done = threading.Event()

        def pusher() -> None:
            nonlocal ports_v, res_v
            try:
                while not done.is_set():
                    seen = (ports_v, res_v)

                    def changed(seen: tuple[int, int] = seen) -> bool:
                        now = (self.ports_version, self.resources_version)
                        return done.is_set() or now != seen

                    with self.lock:
                        self.lock.wait_for(changed, timeout=1.0)
                        pv, rv = self.ports_version, self.resources_version
                        resources = dict(self.resources)
                    if pv != ports_v:
                        ports_v = pv
                        send({"type": "ports", "ports": self.ports()})
                    if rv != res_v:
                        res_v = rv
                        send({"type": "resources", "resources": resources})
            except OSError:
                pass
            finally:
                done.set()
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

        thread = threading.Thread(target=pusher, name="agent-push", daemon=True)
        thread.start()
        reader = LineReader()
        try:
            pending = reader.feed(rest)
            while not done.is_set():
                for line in pending:
                    self.on_message(decode(line), send)
                data = conn.recv(65536)
                if not data:
                    break
                pending = reader.feed(data)
        finally:
            done.set()
            with self.lock:
                self.lock.notify_all()
            thread.join(5)

    def on_message(self, message: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
        kind = message["type"]
        if kind == "heartbeat":
            offset = 0.0
            host_time = message.get("host_time")
            if isinstance(host_time, (int, float)):
                rtt = message.get("rtt")
                offset = self.check_clock(
                    float(host_time), float(rtt) if isinstance(rtt, (int, float)) else 0.0
                )
            send(
                {
                    "type": "heartbeat",
                    "seq": message.get("seq"),
                    "clock_offset_s": offset,
                    "clock": self.clock(),
                }
            )
        elif kind == "snapshot":  # berthd may ask again at any time
            send(self.snapshot())
        # Unknown types are ignored: a newer berthd may send more (minor additions).

    def udp_flow(self, conn: socket.socket, port: int, rest: bytes) -> None:
        if not 0 < port < 65536:
            raise ProtocolError(f"bad UDP port {port}")
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.connect(("127.0.0.1", port))
            frames = FrameReader()
            for datagram in frames.feed(rest):
                _udp_send(udp, datagram)
            while True:
                readable, _, _ = select.select([conn, udp], [], [])
                if conn in readable:
                    data = conn.recv(65536)
                    if not data:
                        return
                    for datagram in frames.feed(data):
                        _udp_send(udp, datagram)
                if udp in readable:
                    try:
                        datagram = udp.recv(UDP_MAX_DATAGRAM)
                    except ConnectionRefusedError:  # nothing on the port (yet): drop
                        continue
                    conn.sendall(frame(datagram))
        finally:
            udp.close()


def _udp_send(udp: socket.socket, datagram: bytes) -> None:
    with contextlib.suppress(ConnectionRefusedError):
        udp.send(datagram)


def _read_first_line(conn: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\n" not in buf:
        data = conn.recv(65536)
        if not data:
            raise ProtocolError("connection closed before the first line")
        buf += data
        if len(buf) > MAX_LINE:
            raise ProtocolError("first line too long")
    first, _, rest = buf.partition(b"\n")
    return first, rest


def main() -> int:
    agent = Agent()
    try:
        agent.serve()
    except KeyboardInterrupt:
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
