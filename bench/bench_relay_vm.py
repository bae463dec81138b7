"""Engine socket latency through the real guest: Berth's relay vs OpenSSH ``ssh -L``.

Boots the real guest image under QEMU through a berthd of its own (private
``BERTH_HOME``; TCG on this machine), puts ~20 containers in the guest's engine, then
measures GET ``/_ping`` and ``/containers/json?all=1`` side by side, rounds interleaved so
that load from other processes hits every path alike, over:

* **berthd relay**   - the engine socket the real berthd serves (EngineSocketRelay over
                       GuestSSH, paramiko, the algorithms ``vm_backend.machine.ssh`` offers);
* **ssh -L**         - OpenSSH ``ssh -N -L <sock>:/var/run/docker.sock`` with the
                       machine's client key and a known_hosts holding only the pinned guest
                       host key (StrictHostKeyChecking=yes), OpenSSH's default algorithms;
* **ssh -L CIPHER**  - the same, forced to another cipher (``--ssh-cipher``, repeatable;
                       default ``aes128-ctr/hmac-sha2-256``, the pair paramiko used to
                       negotiate, and ``aes128-gcm@openssh.com``), which separates what the
                       cipher costs the emulated guest from what the implementation costs;
* **berth CIPHER**   - Berth's relay in a child process of its own (as in berthd) over a
                       GuestSSH offering only that cipher/MAC (``--berth-cipher``,
                       repeatable);
* **in guest**       - the same requests made inside the guest on its own docker.sock by a
                       python3 loop (timed by the guest's clock): what dockerd alone costs
                       under emulation, the floor every path sits on.

Two client patterns: "keep-alive" (one connection, many requests: docker-py's pool, the
Berth window) and "new conn" (connect, one request with ``Connection: close``, close: each
docker CLI run). Prints p50/p95 per path, every round's p50, the ratio to ``ssh -L``, and
the algorithms each SSH path negotiated.

``python bench/bench_relay_vm.py [-n 200] [--new-conn-n 40] [--rounds 5]``
(root, the OpenSSH client, docker CLI with ``berth-test/busybox:latest`` on the host's
engine; ``--home DIR --keep`` reuses/keeps a VM between runs while iterating;
``--profile SECONDS`` also samples berthd with py-spy during an extra keep-alive run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_relay import keepalive_sampler, newconn_sampler, pct  # noqa: E402
from tests.openssh_reference import pinned_known_hosts, ssh_base, ssh_forward  # noqa: E402
from vm_backend.machine.keys import ensure_machine_keys  # noqa: E402
from vm_backend.machine.relay import (  # noqa: E402
    ENGINE_SPARE_CHANNELS,
    GUEST_DOCKER_SOCKET,
    EngineSocketRelay,
)
from vm_backend.machine.ssh import GuestSSH  # noqa: E402

ENDPOINTS = ("/_ping", "/containers/json?all=1")
HOST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
LABEL = "berth-bench=relay-vm"
MACHINE = "default"

# Runs inside the guest (python3-minimal): n requests on the guest's docker.sock, keep-alive
# or one connection each, printing one duration in seconds per line.
GUEST_LOOP = r"""
import socket, sys, time
path, endpoint, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def read(sock, buf):
    while b"\r\n\r\n" not in buf:
        c = sock.recv(65536)
        if not c: raise ConnectionError("closed")
        buf += c
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    h = head.lower()
    body = bytearray(rest)
    if b"transfer-encoding: chunked" in h:
        while not body.endswith(b"0\r\n\r\n"):
            c = sock.recv(65536)
            if not c: raise ConnectionError("closed")
            body += c
        buf[:] = b""
        return
    length = int(h.split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        c = sock.recv(65536)
        if not c: raise ConnectionError("closed")
        body += c
    buf[:] = body[length:]
out = []
if mode == "keep":
    req = ("GET %s HTTP/1.1\r\nHost: docker\r\n\r\n" % endpoint).encode()
    s = socket.socket(socket.AF_UNIX); s.connect(path); buf = bytearray()
    for _ in range(n):
        t0 = time.perf_counter(); s.sendall(req); read(s, buf)
        out.append(time.perf_counter() - t0)
else:
    req = ("GET %s HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n" % endpoint).encode()
    for _ in range(n):
        t0 = time.perf_counter()
        s = socket.socket(socket.AF_UNIX); s.connect(path); s.sendall(req); read(s, bytearray())
        s.close()
        out.append(time.perf_counter() - t0)
print("\n".join("%.9f" % t for t in out))
"""


# Runs inside the guest: for each given TCP port of a client on the host (QEMU's user
# networking keeps the source port), the CPU time (ns, schedstat) of the guest processes
# holding that connection: the sshd serving that SSH session. One "port ns" line each.
GUEST_CPU = r"""
import os, sys
want = {int(p) for p in sys.argv[1:]}
inode_port = {}
for name in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = open(name).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        f = line.split()
        lport = int(f[1].rsplit(":", 1)[1], 16); rport = int(f[2].rsplit(":", 1)[1], 16)
        if lport == 22 and rport in want:
            inode_port[f[9]] = rport
cpu = {p: 0 for p in want}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        fds = os.listdir("/proc/%s/fd" % pid)
        ports = set()
        for fd in fds:
            link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
            if link.startswith("socket:["):
                port = inode_port.get(link[8:-1])
                if port is not None:
                    ports.add(port)
        if not ports:
            continue
        ns = 0
        for tid in os.listdir("/proc/%s/task" % pid):
            ns += int(open("/proc/%s/task/%s/schedstat" % (pid, tid)).read().split()[0])
        for port in ports:
            cpu[port] += ns
    except OSError:
        continue
for port, ns in cpu.items():
    print(port, ns)
"""


def host_cpu_ns(pid: int) -> int:
    """CPU time of every thread of a host process, in ns (schedstat)."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def client_ports(pid: int, ssh_port: int) -> list[int]:
    """The local TCP ports of ``pid``'s SSH connections to the guest (berthd has two: its
    engine relay's session and the one for everything else)."""
    import psutil

    return sorted(c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
                  if c.raddr and c.raddr.port == ssh_port and c.status == "ESTABLISHED")


def guest_cpu(guest: GuestSSH, ports: list[int]) -> dict[int, int]:
    rc, out, err = guest.exec(["python3", "-c", GUEST_CPU, *map(str, ports)], timeout=300)
    if rc != 0:
        raise RuntimeError(f"in-guest CPU probe failed: {err.decode(errors='replace')[-500:]}")
    return {int(a): int(b) for a, b in (line.split() for line in out.decode().splitlines())}


def berth(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vm_backend.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
        env={**os.environ, "BERTH_HOME": str(home), "DOCKER_CONFIG": str(home / "docker")},
    )


def must(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def daemon_socket(home: Path) -> Path:
    from vm_backend.daemon.server import socket_path

    return socket_path(home)


@contextmanager
def berthd(home: Path, keep: bool) -> Iterator[int | None]:
    """Our own berthd on ``home`` (or the one already serving it); yields its pid."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(daemon_socket(home)))
        pid_text = subprocess.run(["fuser", str(daemon_socket(home))], capture_output=True,
                                  text=True, check=False).stdout.split()
        yield int(pid_text[0]) if pid_text else None
        return
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = open(home / "berthd-bench.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "vm_backend.daemon.server", "--home", str(home)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(daemon_socket(home)))
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"berthd did not start; see {home / 'berthd-bench.log'}")
            time.sleep(0.05)
        yield proc.pid
    finally:
        if not keep:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


@contextmanager
def machine(home: Path, args: argparse.Namespace) -> Iterator[dict[str, object]]:
    """The machine, started (created first if needed); stopped and deleted unless --keep."""
    found = berth(home, "machine", "status", "--json")
    status = json.loads(found.stdout) if found.returncode == 0 else {}
    created = False
    if status.get("spec") is None:
        must(berth(home, "machine", "init", "--no-shares", "--cpus", str(args.cpus),
                   "--memory", str(args.memory)), "machine init")
        created = True
    try:
        if status.get("state") != "running" or not status.get("socket"):
            t0 = time.monotonic()
            must(berth(home, "machine", "start", timeout=1800), "machine start")
            print(f"# booted in {time.monotonic() - t0:.1f} s", flush=True)
        status = json.loads(must(berth(home, "machine", "status", "--json"), "machine status"))
        yield status
    finally:
        if not args.keep:
            berth(home, "machine", "stop", timeout=300)
            if created:
                berth(home, "machine", "rm", "-f", timeout=300)


def docker_env(sock: str) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": f"unix://{sock}"}


def populate(sock: str, count: int) -> None:
    """``count`` created containers (labelled) in the guest's engine."""
    env = docker_env(sock)
    have = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}"], env=env,
                          capture_output=True, text=True, check=True).stdout.split()
    if len(have) >= count:
        return
    if subprocess.run(["docker", "image", "inspect", HOST_IMAGE], env=env,
                      capture_output=True, check=False).returncode != 0:
        saved = subprocess.run(["docker", "save", HOST_IMAGE], capture_output=True, check=True)
        subprocess.run(["docker", "load"], input=saved.stdout, env=env, capture_output=True,
                       check=True, timeout=600)
    for i in range(len(have), count):
        subprocess.run(["docker", "create", "--label", LABEL, "--name", f"relay-bench-{i}",
                        HOST_IMAGE, "true"], env=env, capture_output=True, check=True,
                       timeout=300)


def unpopulate(sock: str) -> None:
    env = docker_env(sock)
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}"], env=env,
                         capture_output=True, text=True, check=False).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], env=env, capture_output=True,
                       check=False, timeout=300)


def algo_args(spec: str) -> list[str]:
    """``cipher`` or ``cipher/mac`` as ssh options."""
    cipher, _, mac = spec.partition("/")
    return ["-c", cipher, *(["-m", mac] if mac else [])]


def ssh_negotiated(base: list[str], extra: list[str]) -> str:
    """What OpenSSH negotiates with these options (one ``ssh -v ... true``)."""
    out = subprocess.run([*base, "-v", *extra, "root@127.0.0.1", "true"], capture_output=True,
                         text=True, timeout=120, check=False).stderr
    m = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+)", out)
    return f"{m.group(1)} / {m.group(2)}" if m else "?"


@contextmanager
def ssh_forward_sock(base: list[str], extra: list[str], local: Path) -> Iterator[tuple[str, int]]:
    """OpenSSH's forward to the guest's docker.sock; yields (host socket, ssh pid)."""
    forward = f"{local}:{GUEST_DOCKER_SOCKET}"
    with ssh_forward(base, forward, local.exists, extra=extra, timeout=120) as proc:
        yield str(local), proc.pid


@contextmanager
def relay_child(port: int, client_key: Path, host_pub: str, workdir: Path,
                spec: str, spares: int = ENGINE_SPARE_CHANNELS
                ) -> Iterator[tuple[str, str, int]]:
    """Berth's relay in a child process over a GuestSSH offering only ``spec`` (all of
    Berth's algorithms if empty), with ``spares`` spare channels; yields (host socket,
    negotiated algorithms, pid)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", json.dumps([port, str(client_key), host_pub,
                                                          str(workdir), spec, spares])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the relay process exited before it was ready")
        path, negotiated = line.rstrip("\n").split("\t")
        yield path, negotiated, proc.pid
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(30)


def negotiated_of(guest: GuestSSH) -> str:
    transport = guest._transport  # bench-only look at paramiko's choice
    if transport is None:
        return "?"
    t: object = transport
    cipher = str(getattr(t, "local_cipher", "?"))
    mac = "<implicit>" if "gcm" in cipher else str(getattr(t, "local_mac", "?"))
    return f"{cipher} / {mac}"


def serve(arg: str) -> None:
    """Child mode: one GuestSSH + EngineSocketRelay offering one cipher spec, until EOF."""
    port, client_key, host_pub, workdir, spec, spares = json.loads(arg)
    cipher, _, mac = spec.partition("/")
    guest = GuestSSH(port, Path(client_key), host_pub, ciphers=[cipher] if cipher else None,
                     macs=[mac] if mac else None, connect_timeout_s=60)
    guest.connect(retry_for_s=60)
    relay = EngineSocketRelay(guest, Path(workdir) / f"r-{os.getpid()}" / "d.sock",
                              spare_channels=spares)
    relay.start()
    print(f"{relay.socket_path}\t{negotiated_of(guest)}", flush=True)
    sys.stdin.read()
    relay.stop()
    guest.close()


def guest_sampler(guest: GuestSSH, endpoint: str, mode: str) -> Callable[[int], list[float]]:
    def run(n: int) -> list[float]:
        rc, out, err = guest.exec(["python3", "-c", GUEST_LOOP, GUEST_DOCKER_SOCKET, endpoint,
                                   str(n), mode], timeout=600)
        if rc != 0:
            raise RuntimeError(f"in-guest loop failed: {err.decode(errors='replace')[-500:]}")
        return [float(x) for x in out.split()]

    return run


def profile_berthd(pid: int, sock: str, seconds: float, out: Path) -> None:
    """py-spy samples berthd while a keep-alive /_ping loop runs against its socket."""
    if shutil.which("py-spy") is None:
        print("# py-spy not found: no profile", flush=True)
        return
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration",
                            str(int(seconds)), "--format", "raw", "--threads", "--idle",
                            "-o", str(out)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    run = keepalive_sampler(sock, "/_ping")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and spy.poll() is None:
        run(20)
    spy.wait(60)
    print(f"# py-spy raw profile of berthd: {out}", flush=True)


Key = tuple[str, str, str]  # mode, endpoint, path


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="keep-alive requests per path")
    parser.add_argument("--new-conn-n", type=int, default=40, help="new-connection requests")
    parser.add_argument("--rounds", type=int, default=5, help="interleaving rounds")
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", type=int, default=2048, help="MiB")
    parser.add_argument("--ssh-cipher", action="append", default=None, metavar="C[/MAC]",
                        help="extra ssh -L paths forced to this cipher (repeatable)")
    parser.add_argument("--berth-cipher", action="append", default=None, metavar="C[/MAC]",
                        help="extra Berth relays offering only this cipher (repeatable)")
    parser.add_argument("--berth-child", action="append", type=int, default=[],
                        metavar="SPARES",
                        help="also Berth's relay in a child process on an SSH session of its "
                             "own, with this many spare channels (berthd's relay has "
                             f"{ENGINE_SPARE_CHANNELS}; repeatable)")
    parser.add_argument("--home", type=Path, default=None,
                        help="BERTH_HOME to use (default: a fresh one under /tmp)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the VM, its containers and berthd running")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="also profile berthd with py-spy for this long")
    args = parser.parse_args()
    ssh_specs = args.ssh_cipher if args.ssh_cipher is not None else [
        "aes128-ctr/hmac-sha2-256", "aes128-gcm@openssh.com"]
    berth_specs = args.berth_cipher if args.berth_cipher is not None else []
    if shutil.which("ssh") is None or shutil.which("docker") is None:
        sys.exit("needs the OpenSSH client (ssh) and the docker CLI")

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="berth-rvm-")))
        home = args.home or workdir / "home"
        daemon_pid = stack.enter_context(berthd(home, args.keep))
        status = stack.enter_context(machine(home, args))
        sock = str(status["socket"])
        port = int(str(status["ssh_port"]))
        qemu_pid = int(str(status["pid"]))
        keys = ensure_machine_keys(home / "machines" / MACHINE, MACHINE)
        populate(sock, args.containers)
        if not args.keep:
            stack.callback(unpopulate, sock)
        known = pinned_known_hosts(workdir, port, keys.host.public_openssh)
        base = ssh_base(port, keys.client.private_path, known)

        # The bench's own session: the in-guest loop and the CPU probes (its sshd is
        # busy only while those run, so it does not count against any path).
        guest = GuestSSH(port, keys.client.private_path, keys.host.public_openssh)
        guest.connect(retry_for_s=60)
        stack.callback(guest.close)
        paths: dict[str, str] = {"berthd relay": sock}
        pids: dict[str, int | None] = {"berthd relay": daemon_pid}
        negotiated: dict[str, str] = {"berthd relay": negotiated_of(guest) + " (same offer)"}
        negotiated["ssh -L"] = ssh_negotiated(base, [])
        paths["ssh -L"], pids["ssh -L"] = stack.enter_context(
            ssh_forward_sock(base, [], workdir / "ssh-L.sock"))
        for i, spec in enumerate(ssh_specs):
            name = f"ssh -L {spec}"
            negotiated[name] = ssh_negotiated(base, algo_args(spec))
            paths[name], pids[name] = stack.enter_context(
                ssh_forward_sock(base, algo_args(spec), workdir / f"ssh-L{i}.sock"))
        for spec in berth_specs:
            name = f"berth {spec}"
            paths[name], negotiated[name], pids[name] = stack.enter_context(relay_child(
                port, keys.client.private_path, keys.host.public_openssh, workdir, spec))
        for spares in args.berth_child:
            name = f"berth child, {spares} spares"
            paths[name], negotiated[name], pids[name] = stack.enter_context(relay_child(
                port, keys.client.private_path, keys.host.public_openssh, workdir, "", spares))
        ports = {name: client_ports(pid, port) if pid else [] for name, pid in pids.items()}
        watched = sorted(p for found in ports.values() for p in found)

        results: dict[Key, list[float]] = {}
        round_p50: dict[Key, list[float]] = {}
        qemu_cpu: dict[Key, int] = {}
        host_cpu: dict[Key, int] = {}
        sshd_cpu: dict[Key, int] = {}
        for mode, factory, n in (
            ("keep-alive", keepalive_sampler, args.n),
            ("new conn", newconn_sampler, args.new_conn_n),
        ):
            for endpoint in ENDPOINTS:
                samplers = {name: factory(p, endpoint) for name, p in paths.items()}
                samplers["in guest"] = guest_sampler(
                    guest, endpoint, "keep" if mode == "keep-alive" else "new")
                for sampler in samplers.values():
                    sampler(max(2, n // 20))  # warm-up, discarded
                per_round = max(1, n // args.rounds)
                before = guest_cpu(guest, watched) if watched else {}
                for _ in range(args.rounds):
                    for name, sampler in samplers.items():
                        key = (mode, endpoint, name)
                        pid = pids.get(name)
                        q0 = host_cpu_ns(qemu_pid)
                        h0 = host_cpu_ns(pid) if pid else 0
                        got = sampler(per_round)
                        if name != "in guest":  # its exec session is not a relay's cost
                            qemu_cpu[key] = qemu_cpu.get(key, 0) + host_cpu_ns(qemu_pid) - q0
                        if pid:
                            host_cpu[key] = host_cpu.get(key, 0) + host_cpu_ns(pid) - h0
                        results.setdefault(key, []).extend(got)
                        if got:
                            round_p50.setdefault(key, []).append(pct(got, 0.5))
                after = guest_cpu(guest, watched) if watched else {}
                for name, found in ports.items():
                    if found and all(c in before and c in after for c in found):
                        sshd_cpu[(mode, endpoint, name)] = sum(after[c] - before[c]
                                                               for c in found)
                print(f"# {mode} {endpoint} done", flush=True)
        if args.profile and daemon_pid is not None:
            profile_berthd(daemon_pid, sock, args.profile,
                           Path(f"/tmp/berthd-relay-{os.getpid()}.txt"))
        report(results, round_p50, negotiated, (qemu_cpu, host_cpu, sshd_cpu), args)


def report(results: dict[Key, list[float]], round_p50: dict[Key, list[float]],
           negotiated: dict[str, str], cpu: tuple[dict[Key, int], ...],
           args: argparse.Namespace) -> None:
    qemu_cpu, host_cpu, sshd_cpu = cpu
    load = os.getloadavg()
    print(f"\n# bench_relay_vm {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC,"
          f" {platform.node()}, python {platform.python_version()}, guest under TCG"
          f" ({args.cpus} vCPU, {args.memory} MiB), {args.containers} containers,"
          f" {args.rounds} rounds; load average at end {load[0]:.1f} {load[1]:.1f}"
          f" {load[2]:.1f}")
    for name, neg in negotiated.items():
        print(f"#   {name}: {neg}")
    print("# CPU per request in ms: qemu = the whole guest (host CPU of QEMU), sshd = the"
          " guest's sshd for that path's sessions (berthd: both of its sessions; guest"
          " clock), client = the host process"
          " (berthd, ssh, relay child; berthd includes its other threads)")
    print(f"{'mode':<11}{'endpoint':<24}{'path':<36}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}"
          f"{'p50/ssh-L':>10}{'p95/ssh-L':>10}{'qemu':>7}{'sshd':>7}{'client':>7}"
          "  per-round p50 ms")

    def per_req(table: dict[Key, int], key: Key, n: int) -> str:
        return f"{table[key] / n / 1e6:.2f}" if key in table and n else "-"

    for key, values in results.items():
        mode, endpoint, name = key
        ref = results[(mode, endpoint, "ssh -L")]
        p50, p95 = pct(values, 0.5), pct(values, 0.95)
        rounds = " ".join(f"{v * 1e3:.2f}" for v in round_p50.get(key, []))
        n = len(values)
        print(f"{mode:<11}{endpoint:<24}{name:<36}{n:>5}{p50 * 1e3:>9.3f}"
              f"{p95 * 1e3:>9.3f}{p50 / pct(ref, 0.5):>10.2f}{p95 / pct(ref, 0.95):>10.2f}"
              f"{per_req(qemu_cpu, key, n):>7}{per_req(sshd_cpu, key, n):>7}"
              f"{per_req(host_cpu, key, n):>7}  {rounds}")


if __name__ == "__main__":
    main()
