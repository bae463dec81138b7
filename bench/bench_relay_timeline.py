"""Where a new connection's time goes inside Berth's engine relay (one timeline per request).

The relay runs in a child process (as in berthd) over a local sshd standing in for the
VM's (tests/integration/sshd_fixtures.py), with its steps stamped by wrapping the relay's
own methods and paramiko's packet reads and writes; the parent connects, sends one
``GET /_ping`` with ``Connection: close``, reads the reply and closes, ``-n`` times. Both
processes stamp with ``time.perf_counter_ns`` (CLOCK_MONOTONIC, shared by the processes of
one Linux host), so every step is printed as the p50 of "µs after the client's
``connect()``" over the requests (the first tenth left out as warm-up).

Steps: ``accepted`` (the accept thread has the client), ``up-start`` / ``down-start`` (the
two pumps run), ``recv`` (the request read from the client), ``sendall`` / ``sent`` (its
channel data written), ``out<N>`` / ``pkt<N>`` (an SSH message of type N sent / received:
90 open, 91 open confirmation, 94 data, 96 EOF, 97 close), ``feed`` / ``fed`` (the reply
handed to the client by the transport thread), ``recv-eof`` (the client closed),
``release`` (the connection's end). A step seen for fewer requests than the others
happened after the client had its reply, for some of them.

Run as root with openssh-server installed:
``python bench/bench_relay_timeline.py [-n 200] [--gap-ms 20] [--spares 2]``.
``--gap-ms 0`` runs the requests back to back, as bench_relay.py's new-connection rounds
do: the previous connection's close then overlaps the next request.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.sshd_fixtures import start_sshd

_now = time.perf_counter_ns


def serve(port: int, key: str, host_pub: str, sock: str, spares: int) -> None:
    """Child: the relay with its steps stamped; prints the stamps when stdin says so."""
    from paramiko.channel import Channel
    from paramiko.packet import Packetizer

    from vm_backend.machine import relay as r
    from vm_backend.machine.ssh import GuestSSH

    marks: list[tuple[str, int]] = []

    def mark(name: str) -> None:
        marks.append((name, _now()))

    def wrap(cls: type, attr: str, before: str | None, after: str | None = None) -> None:
        orig = getattr(cls, attr)

        def wrapper(self: object, *args: object) -> object:
            if before:
                mark(before)
            result = orig(self, *args)
            if after:
                mark(after)
            return result

        setattr(cls, attr, wrapper)

    wrap(r.EngineSocketRelay, "_serve", "accepted")
    wrap(r._Connection, "run_down", "down-start")
    wrap(r._Connection, "_release", "release")
    wrap(r._DirectPipe, "feed", "feed", "fed")
    wrap(Channel, "sendall", "sendall", "sent")

    orig_up = r._Connection.run_up

    class _StampedClient:
        def __init__(self, inner: socket.socket) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

        def recv(self, n: int) -> bytes:
            data = self._inner.recv(n)
            mark("recv" if data else "recv-eof")
            return data

    def run_up(self: r._Connection) -> None:
        mark("up-start")
        self.client = _StampedClient(self.client)  # type: ignore[assignment]
        orig_up(self)

    r._Connection.run_up = run_up  # type: ignore[method-assign]

    orig_read = Packetizer.read_message
    orig_send = Packetizer.send_message

    def read_message(self: Packetizer) -> tuple[int, object]:
        result = orig_read(self)
        mark(f"pkt{result[0]}")
        return result  # type: ignore[no-any-return]

    def send_message(self: Packetizer, m: object) -> None:
        mark(f"out{m.asbytes()[0]}")  # type: ignore[attr-defined]
        orig_send(self, m)

    Packetizer.read_message = read_message  # type: ignore[method-assign]
    Packetizer.send_message = send_message  # type: ignore[method-assign]

    guest = GuestSSH(port, Path(key), host_pub)
    guest.connect()
    relay = r.EngineSocketRelay(guest, Path(sock), spare_channels=spares)
    relay.start()
    print("READY", flush=True)
    sys.stdin.readline()
    print(json.dumps(marks), flush=True)
    relay.stop()
    guest.close()


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        port, key, host_pub, sock, spares = sys.argv[2:7]
        serve(int(port), key, host_pub, sock, int(spares))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="requests")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between requests")
    parser.add_argument("--spares", type=int, default=2, help="spare channels (berthd: 2)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="berth-timeline-"))
    server = start_sshd(workdir / "sshd")
    sock = str(workdir / "r" / "d.sock")
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(server.port),
         str(server.keys.client.private_path), server.keys.host.public_openssh, sock,
         str(args.spares)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline().strip() != "READY":
            raise SystemExit("the relay child did not start")
        req = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
        requests: list[tuple[int, int, int]] = []
        for _ in range(args.n):
            t0 = _now()
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock)
                t1 = _now()
                s.sendall(req)
                buf = b""
                while b"OK" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise SystemExit("the relay closed the connection early")
                    buf += chunk
                t2 = _now()
            requests.append((t0, t1, t2))
            if args.gap_ms:
                time.sleep(args.gap_ms / 1000)
        child.stdin.write("\n")
        child.stdin.flush()
        marks: list[tuple[str, int]] = json.loads(child.stdout.readline())
    finally:
        child.stdin.close()
        child.wait(10)
        server.stop()
    rows: dict[str, list[float]] = {"connect": [], "reply read": []}
    for t0, t1, t2 in requests[args.n // 10:]:
        rows["connect"].append((t1 - t0) / 1e3)
        rows["reply read"].append((t2 - t0) / 1e3)
        seen: set[str] = set()
        for name, t in marks:
            if t0 <= t <= t2 + 500_000 and name not in seen:  # up to 0.5 ms after
                seen.add(name)
                rows.setdefault(name, []).append((t - t0) / 1e3)
    print(f"# bench_relay_timeline, {args.n} requests, gap {args.gap_ms} ms, "
          f"{args.spares} spares, load {os.getloadavg()[0]:.1f}")
    print(f"{'step':12s} {'n':>4s} {'p50 us':>8s}")
    for name, values in sorted(rows.items(), key=lambda kv: statistics.median(kv[1])):
        print(f"{name:12s} {len(values):4d} {statistics.median(values):8.1f}")


if __name__ == "__main__":
    main()
