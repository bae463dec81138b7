"""Published ports through the real VM: QEMU hostfwd vs Berth's direct-tcpip vs ``ssh -L``.

Boots the real guest image (``BERTH_GUEST_IMAGE_DIR`` or packaging/guest/out/amd64) under
QEMU with its own ``BERTH_HOME`` (through :class:`MachineService`, as berthd does), loads
the busybox test image into the guest, runs ``httpd`` published on ``-p P:80`` with an
N MiB random file (its sha256 computed in the container), and fetches it from the host
four ways, interleaved round by round so that load from other processes hits all alike:

* hostfwd     - a QMP ``hostfwd_add tcp:127.0.0.1:H-:P`` rule: QEMU's slirp copies the
                bytes to the guest's ``10.0.2.15:P`` in C, no encryption;
* direct-tcpip - a ``PortForwarder`` without QMP on the VM's SSH session (paramiko
                ``direct-tcpip`` on the pinned transport to the guest's
                ``127.0.0.1:P``): Berth's forward before hostfwd, and still its path
                for loopback-only guest listeners;
* berth       - the port as berthd's own forwarder publishes it on ``127.0.0.1:P``
                (its table row, printed, says which way: ``via`` hostfwd or ssh; since
                the hostfwd change it is a hostfwd rule, so it should match "hostfwd");
* ssh -L      - OpenSSH: ``ssh -N -L 127.0.0.1:L:127.0.0.1:P`` with the machine's client
                key and the pinned host key (the issue's reference).

Throughput: ``curl | sha256sum`` in their own processes, digest compared with the
container's. Connect latency: a client subprocess opens a fresh TCP connection, sends
``GET /small`` and waits for the first byte of the answer, ``--latency-n`` times per path
per round; p50/p90 are printed. Ratios are against ``ssh -L``.

Run: ``python bench/bench_ports_vm.py [--mib 256] [--rounds 3] [--latency-n 30]``
(needs qemu-system-x86_64, docker (the host CLI, for ``docker save`` of the test image),
curl, sha256sum and the OpenSSH client).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.openssh_reference import pinned_known_hosts, ssh_base, ssh_forward
from vm_backend.daemon.service import MachineService
from vm_backend.machine.hostinfo import detect_host
from vm_backend.machine.image import GuestImage
from vm_backend.machine.keys import ensure_machine_keys
from vm_backend.machine.machine import MachineState
from vm_backend.machine.portfwd import PortForwarder
from vm_backend.machine.spec import MachineSpec

REPO = Path(__file__).resolve().parents[1]
HOST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
LABEL = "berth.test=bench-ports-vm"

# The latency client runs in its own process (the forwarder's threads live in this one).
LATENCY_CLIENT = r"""
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
out = []
for _ in range(n):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /small HTTP/1.0\r\nHost: x\r\n\r\n")
    first = s.recv(1)
    out.append(time.perf_counter() - t0)
    assert first == b"H", first
    while s.recv(65536):
        pass
    s.close()
print(" ".join(f"{v:.6f}" for v in out))
"""


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return body if head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0] else None


def docker(svc: MachineService, *args: str, stdin: bytes | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, timeout=timeout, check=False,
        env={**os.environ, "DOCKER_HOST": f"unix://{svc.engine_socket}"},
    )


def download(port: int) -> tuple[str, float]:
    t0 = time.monotonic()
    curl = subprocess.Popen(
        ["curl", "-sSf", "--max-time", "900", f"http://127.0.0.1:{port}/big"],
        stdout=subprocess.PIPE,
    )
    assert curl.stdout is not None
    summer = subprocess.run(["sha256sum"], stdin=curl.stdout, capture_output=True, check=True)
    curl.stdout.close()
    if curl.wait() != 0:
        raise RuntimeError(f"curl through port {port} failed")
    return summer.stdout.split()[0].decode(), time.monotonic() - t0


def latencies(port: int, n: int) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", LATENCY_CLIENT, str(port), str(n)],
        capture_output=True, text=True, timeout=600, check=True,
    )
    return [float(v) for v in out.stdout.split()]


@contextlib.contextmanager
def ssh_tunnel(svc: MachineService, workdir: Path, local: int, remote: int) -> Iterator[None]:
    """OpenSSH's ``ssh -L`` to the guest's sshd, with the machine's keys, host key pinned."""
    machine = svc.machine
    ssh_port = machine.status().ssh_port
    assert ssh_port is not None
    keys = ensure_machine_keys(machine.paths.state_dir, machine.name)
    known = pinned_known_hosts(workdir, ssh_port, keys.host.public_openssh)
    base = ssh_base(ssh_port, keys.client.private_path, known)
    forward = f"127.0.0.1:{local}:127.0.0.1:{remote}"
    with ssh_forward(base, forward, lambda: http_get(local, "/small") is not None):
        yield


def fmt(values: list[float], unit: str = "") -> str:
    return " / ".join(f"{v:.1f}{unit}" for v in values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-n", type=int, default=30)
    ap.add_argument("--port", type=int, default=18480, help="the port published in the guest")
    ap.add_argument("--image", type=Path, default=None, help="guest image directory")
    args = ap.parse_args()

    image_dir = args.image or Path(
        os.environ.get("BERTH_GUEST_IMAGE_DIR") or REPO / "packaging" / "guest" / "out" / "amd64"
    )
    home = Path(f"/tmp/bpv-{uuid.uuid4().hex[:6]}")  # short: unix socket path limit
    home.mkdir(mode=0o700)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ports-vm-"))
    host = detect_host()
    svc = MachineService("bench", home=home, image=GuestImage.from_dir(image_dir),
                         manage_context=False)
    svc.create(MachineSpec(name="bench", cpus=min(2, host.cpus), memory_mib=1536, disk_gib=4))
    port = args.port
    size = args.mib * 1024 * 1024
    try:
        t0 = time.monotonic()
        status = svc.start()
        assert status.state is MachineState.RUNNING, status
        boot_s = time.monotonic() - t0
        print(f"boot to engine-ready: {boot_s:.1f} s (QEMU pid {status.pid})", flush=True)
        saved = subprocess.run(["docker", "save", HOST_IMAGE], capture_output=True, check=True)
        load = docker(svc, "load", stdin=saved.stdout)
        assert load.returncode == 0, load.stderr
        script = (
            f"mkdir -p /www && head -c {size} /dev/urandom > /www/big"
            " && sha256sum /www/big > /www/big.sha256 && echo berth > /www/small"
            " && exec httpd -f -p 80 -h /www"
        )
        run = docker(svc, "run", "-d", "--label", LABEL, "--name", "bench-ports",
                     "-p", f"{port}:80", HOST_IMAGE, "sh", "-c", script)
        assert run.returncode == 0, run.stderr
        qmp = svc.machine.qmp
        assert qmp is not None
        hostfwd_port = free_port()
        qmp.hostfwd_add("tcp", "127.0.0.1", hostfwd_port, port)
        try:
            # The file is written before httpd starts: wait for it through the forward.
            if not wait_for(lambda: http_get(port, "/big.sha256") is not None, 900, 1.0):
                raise RuntimeError(f"the forward never answered: {svc.status_json()['ports']}")
            expected = (http_get(port, "/big.sha256") or b"").split()[0].decode()
            rows = [r for r in svc.status_json()["ports"] if r["host_port"] == port]
            print(f"forwarder row: {rows}", flush=True)
            assert http_get(hostfwd_port, "/small") == b"berth\n", "hostfwd rule does not answer"
            local = free_port()
            assert svc.ssh is not None and svc.agent is not None
            ssh_only = PortForwarder(svc.ssh, None, host_port_offset=free_port() - port)
            ssh_only.set_guest_ports(p for p in svc.agent.snapshot().ports if p.port == port)
            ssh_port = port + ssh_only.host_port_offset
            assert http_get(ssh_port, "/small") == b"berth\n", ssh_only.table()
            with contextlib.ExitStack() as stack:
                stack.callback(ssh_only.stop)
                stack.enter_context(ssh_tunnel(svc, workdir, local, port))
                paths = {"hostfwd": hostfwd_port, "berth": port, "direct-tcpip": ssh_port,
                         "ssh -L": local}
                rates: dict[str, list[float]] = {k: [] for k in paths}
                lat: dict[str, list[float]] = {k: [] for k in paths}
                for rnd in range(args.rounds):
                    for name, p in paths.items():
                        digest, secs = download(p)
                        if digest != expected:
                            raise RuntimeError(f"{name}: sha256 mismatch")
                        rates[name].append(size / secs / 1e6)
                        lat[name].extend(latencies(p, args.latency_n))
                    print(f"round {rnd + 1}: " + "  ".join(
                        f"{k} {v[-1]:.1f} MB/s" for k, v in rates.items()
                    ) + f"  load {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            with contextlib.suppress(Exception):
                qmp.hostfwd_remove("tcp", "127.0.0.1", hostfwd_port)
            docker(svc, "rm", "-f", "bench-ports")

        accel = getattr(status.accelerator, "value", status.accelerator)
        ref = statistics.median(rates["ssh -L"])
        ref_lat = statistics.median(lat["ssh -L"])
        print()
        print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
              f"{platform.node()}, {os.cpu_count()} CPUs, accel {accel}, "
              f"{args.mib} MiB x {args.rounds} rounds, latency n={args.latency_n}/round")
        print("| path | MB/s per round | median MB/s | vs ssh -L | TTFB p50 ms | p90 ms |")
        print("|---|---|---|---|---|---|")
        for name in paths:
            med = statistics.median(rates[name])
            ls = sorted(lat[name])
            p50 = statistics.median(ls) * 1e3
            p90 = ls[int(0.9 * (len(ls) - 1))] * 1e3
            print(f"| {name} | {fmt(rates[name])} | {med:.1f} | {med / ref:.2f}x | "
                  f"{p50:.2f} ({statistics.median(ls) / ref_lat:.2f}x) | {p90:.2f} |")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        return 0
    finally:
        svc.machine.kill()
        svc.close()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
