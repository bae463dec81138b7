"""Engine socket latency: Berth's relay vs OpenSSH ``ssh -L`` vs the socket itself.

All paths reach the same dockerd (/var/run/docker.sock) and, except "direct", through the
same local sshd (standing in for the VM's), measured side by side in one run:

* direct            - the engine's own unix socket (baseline)
* ssh -L            - OpenSSH: ``ssh -N -L <sock>:/var/run/docker.sock`` (the reference)
* berth streamlocal - EngineSocketRelay, direct-streamlocal@openssh.com channels, with
                      berthd's spare channels (``ENGINE_SPARE_CHANNELS``)
* berth no spares   - the same opening each client's channel when the client comes
* berth buffered    - the same with ``direct_delivery`` off (every reply through the
                      downstream pump thread, as before the fast path)
* berth dial-stdio  - EngineSocketRelay, ``docker system dial-stdio`` per connection
* paramiko bare     - keep-alive only: a streamlocal channel used directly from the
                      measuring process, no relay (what paramiko alone costs)
* bare C[/MAC]      - the same over a session offering only that cipher (``--cipher``,
                      repeatable): what the algorithm costs paramiko

Two client patterns: "keep-alive" (one connection, many requests: docker-py's pool) and
"new conn" (connect, one request, close: each docker CLI run, and every relay channel
open). Rounds alternate between the paths so that load from other processes hits them
all alike. Prints p50/p99 per path and the ratio against ``ssh -L`` (and, for the bare
paramiko paths, which run in this process, its CPU time per request).

Run as root (the sshd stand-in logs in as root) with openssh-server installed:
``python bench/bench_relay.py [-n 1000] [--new-conn-n 200] [--no-dial-stdio] [--bulk-mib 128]``.

``--bulk-mib N`` adds a throughput table: an N MiB file fetched from a container with
the archive API (``GET /containers/ID/archive``, what ``docker cp`` uses), three rounds
interleaved over every path (dial-stdio excepted), in MB/s.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.sshd_fixtures import DOCKER_SOCK, SshdServer, start_sshd
from tests.openssh_reference import pinned_known_hosts, ssh_base, ssh_forward
from vm_backend.machine.relay import (
    ENGINE_SPARE_CHANNELS,
    EngineSocketRelay,
    RelayMechanism,
)
from vm_backend.machine.ssh import GuestSSH

ENDPOINTS = ("/_ping", "/containers/json?all=1")
ERRORS: dict[str, int] = {}


def _read_response(sock: _Stream, buf: bytearray) -> None:
    """Read one HTTP/1.1 response (Content-Length or chunked) and drop it from ``buf``."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    headers = head.lower()
    if not headers.startswith(b"http/1.1 200"):
        raise ConnectionError(f"unexpected reply: {head[:80]!r}")
    body = bytearray(rest)
    if b"transfer-encoding: chunked" in headers:
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed mid-body")
            body += chunk
        buf[:] = b""
        return
    length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        body += chunk
    buf[:] = body[length:]


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: docker\r\n\r\n".encode()


class _Stream(Protocol):
    def sendall(self, data: bytes, /) -> None: ...

    def recv(self, n: int, /) -> bytes: ...


def keepalive_sampler(sock_path: str, endpoint: str) -> Callable[[int], list[float]]:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sock_path)
    return stream_sampler(sock, endpoint)


def stream_sampler(sock: _Stream, endpoint: str) -> Callable[[int], list[float]]:
    buf = bytearray()
    req = _request(endpoint)

    def run(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            sock.sendall(req)
            _read_response(sock, buf)
            times.append(time.perf_counter() - t0)
        return times

    return run


def newconn_sampler(sock_path: str, endpoint: str) -> Callable[[int], list[float]]:
    req = f"GET {endpoint} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode()

    def run(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(sock_path)
                    sock.sendall(req)
                    _read_response(sock, bytearray())
            except OSError as exc:
                # Counted, not fatal: on a shared, loaded machine a guest-side spawn can
                # fail now and then, and one failure must not discard the whole run.
                ERRORS[sock_path] = ERRORS.get(sock_path, 0) + 1
                print(f"request via {sock_path} failed: {exc}", file=sys.stderr)
                continue
            times.append(time.perf_counter() - t0)
        return times

    return run


def bulk_setup(mib: int) -> str:
    """A stopped container holding /big (``mib`` MiB of random bytes); returns its id."""
    import docker  # only the bulk mode needs docker-py

    client = docker.DockerClient(base_url=f"unix://{DOCKER_SOCK}")
    try:
        c = client.containers.run(
            "berth-test/busybox:latest",
            ["sh", "-c", f"head -c {mib * 1048576} /dev/urandom > /big"],
            detach=True, labels={"berth-bench": "relay"}, network_mode="none",
        )
        c.wait(timeout=300)
        return str(c.id)
    finally:
        client.close()


def bulk_teardown(container_id: str) -> None:
    import docker

    client = docker.DockerClient(base_url=f"unix://{DOCKER_SOCK}")
    try:
        client.api.remove_container(container_id, force=True)
    finally:
        client.close()


def bulk_fetch(sock_path: str, container_id: str) -> tuple[int, float]:
    """Fetch /big through ``sock_path``; returns (bytes of tar stream, seconds)."""
    req = (f"GET /containers/{container_id}/archive?path=/big HTTP/1.1\r\n"
           "Host: docker\r\nConnection: close\r\n\r\n").encode()
    t0 = time.perf_counter()
    total = 0
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(sock_path)
        sock.sendall(req)
        buf = bytearray(1 << 20)
        while n := sock.recv_into(buf):
            total += n
    return total, time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def ssh_forward_sock(server: SshdServer, workdir: Path) -> Iterator[str]:
    """OpenSSH's own unix-socket forward to the guest docker.sock, pinned like ours."""
    known = pinned_known_hosts(workdir, server.port, server.keys.host.public_openssh)
    local = workdir / "ssh-L.sock"
    base = ssh_base(server.port, server.keys.client.private_path, known)
    with ssh_forward(base, f"{local}:{DOCKER_SOCK}", local.exists, timeout=15):
        yield str(local)


@contextmanager
def relay_process(server: SshdServer, workdir: Path, dial_stdio: bool) -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [
            sys.executable, __file__, "--serve", str(server.port),
            str(server.keys.client.private_path), server.keys.host.public_openssh, str(workdir),
            "1" if dial_stdio else "0",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        paths: dict[str, str] = {}
        for line in proc.stdout:
            if line.strip() == "READY":
                break
            name, _, path = line.rstrip("\n").partition("\t")
            paths[name] = path
        else:
            raise RuntimeError("the relay process exited before it was ready")
        yield paths
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: the server stops its relays and exits
        proc.wait(10)


def serve(port: int, client_key: str, host_pub: str, workdir: Path, dial_stdio: bool) -> None:
    """Child mode: run Berth's relays until stdin closes."""
    guest = GuestSSH(port, Path(client_key), host_pub)
    guest.connect()
    relays = []
    spares = ENGINE_SPARE_CHANNELS  # as berthd's engine socket
    variants = [("berth streamlocal", RelayMechanism.STREAMLOCAL, True, spares),
                ("berth no spares", RelayMechanism.STREAMLOCAL, True, 0),
                ("berth buffered", RelayMechanism.STREAMLOCAL, False, spares)]
    if dial_stdio:
        variants.append(("berth dial-stdio", RelayMechanism.DIAL_STDIO, True, spares))
    for i, (name, mech, direct, spare) in enumerate(variants):
        relay = EngineSocketRelay(guest, workdir / f"r{i}" / "d.sock", mechanism=mech,
                                  spare_channels=spare)
        relay.direct_delivery = direct
        relay.start()
        relays.append(relay)
        print(f"{name}\t{relay.socket_path}", flush=True)
    print("READY", flush=True)
    sys.stdin.read()
    for relay in relays:
        relay.stop()
    guest.close()


def main() -> None:
    if len(sys.argv) == 7 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4], Path(sys.argv[5]), sys.argv[6] == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="keep-alive requests per path")
    parser.add_argument("--new-conn-n", type=int, default=200, help="new-connection requests")
    parser.add_argument("--rounds", type=int, default=10, help="interleaving rounds")
    parser.add_argument("--no-dial-stdio", action="store_true",
                        help="skip the dial-stdio relay (slow: a process per connection)")
    parser.add_argument("--bulk-mib", type=int, default=0,
                        help="also measure throughput with a file of this many MiB")
    parser.add_argument("--cipher", action="append", default=[], metavar="C[/MAC]",
                        help="also a bare paramiko channel offering only this cipher"
                             " (and MAC), keep-alive only (repeatable)")
    args = parser.parse_args()
    if shutil.which("ssh") is None:
        sys.exit("needs the OpenSSH client (ssh) and server (sshd)")

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="berth-bench-")))
        server = start_sshd(workdir / "sshd")
        stack.callback(server.stop)
        paths: dict[str, str] = {"direct": DOCKER_SOCK}
        paths["ssh -L"] = stack.enter_context(ssh_forward_sock(server, workdir))
        # The relays run in a process of their own, as in berthd: sharing this process's
        # GIL with the measuring loop would charge Berth for the benchmark's own work.
        paths.update(
            stack.enter_context(relay_process(server, workdir, not args.no_dial_stdio))
        )
        # paramiko alone, in this process (nothing else runs in it while it measures).
        bare = GuestSSH(server.port, server.keys.client.private_path,
                        server.keys.host.public_openssh)
        bare.connect()
        stack.callback(bare.close)
        bare_by_cipher: dict[str, GuestSSH] = {}
        for spec in args.cipher:
            cipher, _, mac = spec.partition("/")
            one = GuestSSH(server.port, server.keys.client.private_path,
                           server.keys.host.public_openssh, ciphers=[cipher],
                           macs=[mac] if mac else None)
            one.connect()
            stack.callback(one.close)
            bare_by_cipher[spec] = one
        results: dict[tuple[str, str, str], list[float]] = {}
        own_cpu: dict[tuple[str, str, str], float] = {}
        for mode, factory, n in (
            ("keep-alive", keepalive_sampler, args.n),
            ("new conn", newconn_sampler, args.new_conn_n),
        ):
            for endpoint in ENDPOINTS:
                samplers = {name: factory(p, endpoint) for name, p in paths.items()}
                if mode == "keep-alive":
                    chan = bare.open_unix_socket(DOCKER_SOCK)
                    stack.callback(chan.close)
                    samplers["paramiko bare"] = stream_sampler(chan, endpoint)
                    for spec, one in bare_by_cipher.items():
                        chan = one.open_unix_socket(DOCKER_SOCK)
                        stack.callback(chan.close)
                        samplers[f"bare {spec}"] = stream_sampler(chan, endpoint)
                for sampler in samplers.values():
                    sampler(max(1, n // 50))  # warm-up, discarded
                per_round = max(1, n // args.rounds)
                for _ in range(args.rounds):
                    for name, sampler in samplers.items():
                        cpu0 = time.process_time()
                        results.setdefault((mode, endpoint, name), []).extend(sampler(per_round))
                        if name == "paramiko bare" or name.startswith("bare "):
                            # In this process: its CPU time is what paramiko spends.
                            key = (mode, endpoint, name)
                            own_cpu[key] = own_cpu.get(key, 0.0) + time.process_time() - cpu0
        bulk: dict[str, list[float]] = {}
        if args.bulk_mib:
            cid = bulk_setup(args.bulk_mib)
            stack.callback(bulk_teardown, cid)
            sizes = set()
            for _ in range(3):
                for name, path in paths.items():
                    if name == "berth dial-stdio":
                        continue
                    size, secs = bulk_fetch(path, cid)
                    sizes.add(size)
                    bulk.setdefault(name, []).append(size / secs / 1e6)
            if len(sizes) != 1:
                raise RuntimeError(f"the paths returned different sizes: {sorted(sizes)}")

    print(
        f"# bench_relay {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC,"
        f" {platform.node()}, {platform.machine()}, python {platform.python_version()},"
        f" {_cpu_model()}"
    )
    width = max(20, *(len(name) + 2 for _, _, name in results))
    print(f"{'mode':<11}{'endpoint':<24}{'path':<{width}}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'p50/ssh-L':>11}{'p99/ssh-L':>11}{'p50/direct':>12}{'CPU us/req':>11}")
    for key, values in results.items():
        mode, endpoint, name = key
        ref = results[(mode, endpoint, "ssh -L")]
        base = results[(mode, endpoint, "direct")]
        p50, p99 = pct(values, 0.5), pct(values, 0.99)
        print(
            f"{mode:<11}{endpoint:<24}{name:<{width}}{len(values):>6}{p50 * 1e3:>9.3f}"
            f"{p99 * 1e3:>9.3f}{p50 / pct(ref, 0.5):>11.2f}{p99 / pct(ref, 0.99):>11.2f}"
            f"{p50 / pct(base, 0.5):>12.1f}"
            + (f"{own_cpu[key] / len(values) * 1e6:>11.1f}" if key in own_cpu else "")
        )
    if bulk:
        print(f"# bulk: {args.bulk_mib} MiB via the archive API, MB/s per round"
              " (median / ssh -L median)")
        bulk_ref = statistics.median(bulk["ssh -L"])
        for name, rates in bulk.items():
            med = statistics.median(rates)
            print(f"bulk       {name:<20}{' / '.join(f'{r:.1f}' for r in rates):>26}"
                  f"{med / bulk_ref:>8.2f}")
    if ERRORS:
        names = {p: n for n, p in paths.items()}
        failed = ", ".join(f"{names.get(p, p)}: {c}" for p, c in ERRORS.items())
        print(f"# failed requests: {failed}")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(f"# load average at end: {' '.join(load)}; mean of all samples"
          f" {statistics.fmean(v for vs in results.values() for v in vs) * 1e3:.3f} ms")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


if __name__ == "__main__":
    main()
