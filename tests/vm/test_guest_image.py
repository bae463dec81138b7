"""Boot the real guest image under QEMU (TCG) and check the guest contract.

The contract is docs/guest-image.md: direct kernel boot, the squashfs root as the first
virtio disk, the qcow2 data disk second, per-VM config through ``-fw_cfg opt/berth/*``,
``BERTH-STAGE <stage> <uptime>`` lines on the serial console, sshd with the host key the
host generated, dockerd on the unix socket only, the data disk persisting, and a clean
ACPI powerdown.

Run: ``pytest -m vm tests/vm/test_guest_image.py`` (``BERTH_BUILD_GUEST=1`` builds the
image first; without an image the tests skip). arm64: ``BERTH_TEST_ARM64=1 pytest -m arm64``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

STAGES = ("init", "network", "datadisk", "sshd", "engine", "agent", "ready")
STAGE_RE = re.compile(r"^BERTH-STAGE ([a-z]+) ([0-9]+(?:\.[0-9]+)?)\s*$")
FAIL_RE = re.compile(r"BERTH-FAIL (\S+) ?(.*)")
# TCG on a shared 2-core machine: a boot normally takes well under two minutes.
BOOT_TIMEOUT_S = float(os.environ.get("BERTH_GUEST_BOOT_TIMEOUT", "600"))
POWERDOWN_TIMEOUT_S = 120.0

ARCHES = {
    "amd64": {
        "qemu": "qemu-system-x86_64",
        "machine": ["-machine", "q35,accel=tcg"],
        "console": "ttyS0",
    },
    "arm64": {
        "qemu": "qemu-system-aarch64",
        # pauth-impdef: QEMU's cheap pointer-authentication algorithm (TCG speed).
        "machine": ["-machine", "virt", "-cpu", "max,pauth-impdef=on", "-accel", "tcg"],
        "console": "ttyAMA0",
    },
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Keys:
    """An ed25519 SSH host key and client key, as the host side generates them."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.host_key = directory / "ssh_host_ed25519_key"
        self.client_key = directory / "client_ed25519"
        self.authorized_keys = directory / "authorized_keys"
        for path in (self.host_key, self.client_key):
            key = Ed25519PrivateKey.generate()
            path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                )
            )
            path.chmod(0o600)
            if path == self.client_key:
                pub = key.public_key().public_bytes(
                    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
                )
                self.authorized_keys.write_bytes(pub + b" berth-test\n")


class QMP:
    """A minimal synchronous QMP client (JSON lines over a unix socket)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rw", encoding="utf-8")
        self.events: list[dict[str, object]] = []
        greeting = json.loads(self.file.readline())
        assert "QMP" in greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str) -> object:
        self.file.write(json.dumps({"execute": command}) + "\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("QMP closed")
            msg = json.loads(line)
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                raise RuntimeError(f"QMP {command}: {msg['error']}")
            return msg.get("return")

    def read_events(self) -> None:
        """Collect events until QEMU closes the socket (it exits)."""
        try:
            for line in self.file:
                msg = json.loads(line)
                if "event" in msg:
                    self.events.append(msg)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.sock.close()


class GuestVM:
    """One QEMU process booting the guest image; the console is collected line by line."""

    def __init__(
        self,
        image: Path,
        arch: str,
        workdir: Path,
        keys: Keys,
        data_disk: Path,
        hostname: str = "berth-test",
    ) -> None:
        spec = ARCHES[arch]
        qemu = shutil.which(str(spec["qemu"]))
        if qemu is None:
            pytest.skip(f"{spec['qemu']} is not installed")
        self.ssh_port = _free_port()
        self.keys = keys
        self.hostname = hostname
        self.qmp_path = workdir / f"qmp-{self.ssh_port}.sock"
        self.console_log = workdir / f"console-{self.ssh_port}.log"
        console = spec["console"]
        argv = [
            qemu, *spec["machine"], "-m", "1024", "-smp", "2", "-nodefaults",
            "-display", "none", "-no-reboot",
            "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
            "-append", f"console={console} panic=-1 quiet",
            "-drive", f"if=virtio,file={image / 'rootfs.squashfs'},format=raw,readonly=on",
            "-drive", f"if=virtio,file={data_disk},format=qcow2",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-rng-pci",
            "-serial", "stdio",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-fw_cfg", f"name=opt/berth/hostname,string={hostname}",
            "-fw_cfg", f"name=opt/berth/ssh_host_ed25519_key,file={keys.host_key}",
            "-fw_cfg", f"name=opt/berth/authorized_keys,file={keys.authorized_keys}",
        ]  # fmt: skip
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()

    def _read_console(self) -> None:
        assert self.proc.stdout is not None
        with self.console_log.open("w", encoding="utf-8") as log:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                log.write(line + "\n")
                log.flush()
                with self._cond:
                    self.lines.append((time.monotonic() - self.started, line))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def console_tail(self, n: int = 40) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[-n:])

    def stages(self) -> list[tuple[str, float, float]]:
        """(stage, guest uptime, host seconds since QEMU started) in console order."""
        out = []
        with self._cond:
            for host_t, line in self.lines:
                m = STAGE_RE.match(line.strip())
                if m:
                    out.append((m.group(1), float(m.group(2)), host_t))
        return out

    def wait_ready(self, timeout: float = BOOT_TIMEOUT_S) -> float:
        """Wait for ``BERTH-STAGE ready``; return host seconds from QEMU start to ready."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for host_t, line in self.lines:
                    if FAIL_RE.search(line):
                        pytest.fail(f"guest boot failed: {line}\n{self.console_tail()}")
                    m = STAGE_RE.match(line.strip())
                    if m and m.group(1) == "ready":
                        return host_t
                if self.proc.poll() is not None:
                    pytest.fail(f"QEMU exited ({self.proc.returncode}):\n{self.console_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no BERTH-STAGE ready in {timeout:.0f}s:\n{self.console_tail()}")
                self._cond.wait(min(left, 1.0))

    def ssh(self, host_key: Path | None = None) -> paramiko.SSHClient:
        """An SSH client to the guest, pinned to ``host_key`` (default: the one we gave)."""
        pinned = paramiko.Ed25519Key.from_private_key_file(str(host_key or self.keys.host_key))
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[127.0.0.1]:{self.ssh_port}", pinned.get_name(), pinned)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            "127.0.0.1", port=self.ssh_port, username="root",
            key_filename=str(self.keys.client_key), look_for_keys=False, allow_agent=False,
            timeout=60, banner_timeout=60, auth_timeout=60,
        )  # fmt: skip
        return client

    def run(self, command: str, timeout: float = 120) -> tuple[int, str, str]:
        client = self.ssh()
        try:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            out = stdout.read().decode()
            err = stderr.read().decode()
            return stdout.channel.recv_exit_status(), out, err
        finally:
            client.close()

    def powerdown(self, timeout: float = POWERDOWN_TIMEOUT_S) -> list[dict[str, object]]:
        """QMP system_powerdown; wait for QEMU to exit; return the QMP events seen."""
        qmp = QMP(self.qmp_path)
        try:
            qmp.execute("system_powerdown")
            reader = threading.Thread(target=qmp.read_events, daemon=True)
            reader.start()
            self.proc.wait(timeout=timeout)
            reader.join(timeout=10)
        finally:
            qmp.close()
        self._reader.join(timeout=10)
        return qmp.events

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=10)


def _make_disk(path: Path, size: str) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True, timeout=60
    )


@pytest.fixture(scope="module")
def vm_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys]:
    work = tmp_path_factory.mktemp("guest")
    return work, Keys(work / "keys")


@pytest.fixture(scope="module")
def booted(guest_image: Path, vm_env: tuple[Path, Keys]) -> Iterator[GuestVM]:
    """The amd64 guest, booted to ready on a fresh data disk (shared by the module)."""
    work, keys = vm_env
    disk = work / "data.qcow2"
    _make_disk(disk, "4G")
    vm = GuestVM(guest_image, "amd64", work, keys, disk)
    try:
        vm.boot_time = vm.wait_ready()  # type: ignore[attr-defined]
        yield vm
    finally:
        vm.kill()


ENGINE_PING = Path(__file__).resolve().parents[2] / "vm_backend/guest/init/engine-ping"


def _engine_ping_wait(sock: Path, pidfile: Path, seconds: int) -> int:
    """Run the guest's engine-ping --wait on the host against ``sock``; its exit status."""
    env = {**os.environ, "BERTH_ENGINE_PING_SOCKET": str(sock)}
    argv = [sys.executable, str(ENGINE_PING), "--wait", str(seconds), "--pid", str(pidfile)]
    return subprocess.run(argv, env=env, timeout=300, check=False).returncode


@pytest.mark.timeout(300)
def test_engine_ping_waits_until_the_api_answers(tmp_path: Path) -> None:
    """Like dockerd: the socket listens first and the API serves later; one engine-ping
    process sees the answer (exit 0)."""
    sock = tmp_path / "docker.sock"
    pidfile = tmp_path / "dockerd.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen(16)
    serving = threading.Event()
    stop = threading.Event()

    def serve() -> None:
        serving.wait()
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        threading.Timer(1.0, serving.set).start()
        assert _engine_ping_wait(sock, pidfile, 240) == 0
    finally:
        serving.set()
        stop.set()
        thread.join(timeout=10)
        server.close()


@pytest.mark.timeout(300)
def test_engine_ping_reports_a_dead_engine_and_a_timeout(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])  # a pid that has exited
    dead.wait()
    pidfile = tmp_path / "dockerd.pid"
    pidfile.write_text(f"{dead.pid}\n")
    sock = tmp_path / "never.sock"
    assert _engine_ping_wait(sock, pidfile, 240) == 2
    pidfile.write_text(f"{os.getpid()}\n")
    assert _engine_ping_wait(sock, pidfile, 1) == 3


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_stages_reported_in_order(booted: GuestVM) -> None:
    stages = booted.stages()
    names = [name for name, _, _ in stages]
    assert names[: len(STAGES)] == list(STAGES), booted.console_tail()
    uptimes = [uptime for _, uptime, _ in stages[: len(STAGES)]]
    assert uptimes == sorted(uptimes)
    # The first boot formats the empty data disk and says so.
    assert "BERTH-INFO datadisk formatting-empty-disk /dev/vdb" in booted.console_tail(200)
    assert not any("BERTH-WARN" in line for _, line in booted.lines), booted.console_tail()
    print(  # shown with -s: the boot timeline under TCG
        "boot timeline (guest uptime s):",
        ", ".join(f"{name}={uptime:.1f}" for name, uptime, _ in stages),
        f"| host: ready {booted.boot_time:.1f}s after QEMU started",  # type: ignore[attr-defined]
    )


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_ssh_with_pinned_host_key(booted: GuestVM, tmp_path: Path) -> None:
    rc, out, _ = booted.run("hostname; id -u; cat /etc/berth-image-version")
    assert rc == 0
    hostname, uid, version = out.split()
    assert (hostname, uid) == ("berth-test", "0")
    assert version
    # Another host key must be refused: the guest really serves the key we generated.
    other = Keys(tmp_path / "other")
    with pytest.raises(paramiko.BadHostKeyException):
        booted.ssh(host_key=other.host_key)


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_ssh_refuses_unknown_client_key(booted: GuestVM, tmp_path: Path) -> None:
    other = Keys(tmp_path / "intruder")
    pinned = paramiko.Ed25519Key.from_private_key_file(str(booted.keys.host_key))
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{booted.ssh_port}", pinned.get_name(), pinned)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(
            "127.0.0.1", port=booted.ssh_port, username="root",
            key_filename=str(other.client_key), look_for_keys=False, allow_agent=False,
            timeout=60, banner_timeout=60, auth_timeout=60,
        )  # fmt: skip
    client.close()


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_docker_runs_in_guest(booted: GuestVM) -> None:
    rc, out, err = booted.run("docker version --format '{{.Server.Version}}'")
    assert rc == 0, err
    assert out.strip()
    # A container really starts (AppArmor profile, cgroups, overlay2 on the data disk);
    # the image is made offline from the guest's static busybox.
    rc, out, err = booted.run(
        "tar -C / -c bin/busybox | docker import - berth-test/bb >/dev/null && "
        "docker run --rm berth-test/bb /bin/busybox echo container-ok && "
        "docker info --format '{{.Driver}} {{.DockerRootDir}}'",
        timeout=300,
    )
    assert rc == 0, err
    assert out.split() == ["container-ok", "overlay2", "/var/lib/docker"]


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_only_sshd_listens_on_tcp(booted: GuestVM) -> None:
    """dockerd must never listen on TCP: the only TCP listener is sshd on port 22."""
    rc, out, err = booted.run("ss -Hltn")
    assert rc == 0, err
    ports = {line.split()[3].rsplit(":", 1)[1] for line in out.splitlines() if line.strip()}
    assert ports == {"22"}, out
    rc, out, _ = booted.run("test -S /var/run/docker.sock && stat -c '%a %U' /var/run/docker.sock")
    assert rc == 0
    assert out.split() == ["660", "root"]


# One script in the guest (each `docker run` costs seconds under TCG): a server on a user
# network publishing a port; a client on that network reaches it by name (embedded DNS,
# same-bridge traffic); a client on another network and one on the default bridge cannot
# reach its address (isolation); a default-bridge container reaches the host through
# QEMU's gateway (masquerade: the guest's forwarded SSH port answers with its banner); the
# published port answers on the guest's own addresses (dockerd's userland proxy).
NETWORK_SCRIPT = r"""
B=/bin/busybox
I=berth-test/bb
run="docker run --rm --label berth-test=guest"
req='printf "GET / HTTP/1.0\r\n\r\n"'
docker image inspect $I >/dev/null 2>&1 \
    || tar -C / -c bin/busybox | docker import - $I >/dev/null || exit 10
docker network create berth-net-a >/dev/null && docker network create berth-net-b >/dev/null \
    || exit 11
docker run -d --name berth-srv --label berth-test=guest --network berth-net-a -p 8080:80 $I \
    $B sh -c "$B mkdir /w && echo hello-srv > /w/index.html && exec $B httpd -f -p 80 -h /w" \
    >/dev/null || exit 12
ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' berth-srv)
echo "by-name: $($run --network berth-net-a $I \
    $B sh -c "$req | $B nc -w 30 berth-srv 80 | $B tail -n 1")"
echo "other-network: $($run --network berth-net-b $I \
    $B sh -c "$req | $B nc -w 5 $ip 80 | $B tail -n 1")"
echo "host: $($run $I $B sh -c "echo | $B nc -w 30 10.0.2.2 $1 | $B head -c 7; \
    $req | $B nc -w 5 $ip 80 | $B tail -n 1")"
echo "published: $(eval "$req" | $B nc -w 30 10.0.2.15 8080 | $B tail -n 1)"
echo "docker-chains: $(iptables-save | grep -c DOCKER)"
docker rm -f berth-srv >/dev/null
docker network rm berth-net-a berth-net-b >/dev/null
"""


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_container_networking(booted: GuestVM) -> None:
    """dockerd runs without iptables (boot time): the guest's own rules keep Docker's
    networking — egress through the VM, DNS and traffic within a network, isolation
    between networks, published ports through the userland proxy."""
    rc, out, err = booted.run(
        f"sh -c {shlex.quote(NETWORK_SCRIPT)} net-test {booted.ssh_port}", timeout=600
    )
    assert rc == 0, (out, err)
    lines: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        lines[key] = value.strip()
    assert lines.get("by-name") == "hello-srv", out
    assert lines.get("other-network") == "", out
    # From the default bridge: the host's SSH banner, and nothing from the other network.
    assert lines.get("host") == "SSH-2.0", out
    assert lines.get("published") == "hello-srv", out
    assert lines.get("docker-chains") == "0", out


@pytest.mark.vm
@pytest.mark.timeout(1500)
def test_powerdown_persistence_and_grow(
    booted: GuestVM, guest_image: Path, vm_env: tuple[Path, Keys]
) -> None:
    """Data survives a clean powerdown and reboot; an enlarged disk is grown."""
    work, keys = vm_env
    rc, _, err = booted.run(
        "echo persisted-$(hostname) > /var/lib/berth/marker && "
        "docker volume create berth-test-vol >/dev/null && sync"
    )
    assert rc == 0, err
    rc, out, _ = booted.run("df -B1 --output=size /mnt/data | tail -n1")
    size_before = int(out)

    events = booted.powerdown()
    assert booted.proc.returncode == 0, booted.console_tail()
    names = [e["event"] for e in events]
    assert "SHUTDOWN" in names, events
    shutdown = next(e for e in events if e["event"] == "SHUTDOWN")
    assert shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}
    tail = booted.console_tail(60)
    assert re.search(r"^BERTH-SHUTDOWN start ", tail, re.M), tail
    assert re.search(r"^BERTH-SHUTDOWN done ", tail, re.M), tail

    disk = work / "data.qcow2"
    subprocess.run(["qemu-img", "resize", "-q", str(disk), "+1G"], check=True, timeout=60)
    vm2 = GuestVM(guest_image, "amd64", work, keys, disk)
    try:
        vm2.wait_ready()
        assert "formatting-empty-disk" not in vm2.console_tail(200)
        rc, out, err = vm2.run(
            "cat /var/lib/berth/marker; docker volume ls -q; "
            "df -B1 --output=size /mnt/data | tail -n1"
        )
        assert rc == 0, err
        marker, volume, size_after = out.split()
        assert marker == "persisted-berth-test"
        assert volume == "berth-test-vol"
        assert int(size_after) >= size_before + 900 * 1024 * 1024
        # "poweroff" typed inside the guest takes the same clean path.
        client = vm2.ssh()
        try:
            client.exec_command("poweroff")
        finally:
            client.close()
        vm2.proc.wait(timeout=POWERDOWN_TIMEOUT_S)
        vm2._reader.join(timeout=10)
        assert vm2.proc.returncode == 0
        assert re.search(r"^BERTH-SHUTDOWN done ", vm2.console_tail(60), re.M)
    finally:
        vm2.kill()


@pytest.mark.vm
@pytest.mark.arm64
@pytest.mark.timeout(3600)
def test_arm64_boots_to_ready(arm64_guest_image: Path, tmp_path: Path) -> None:
    if not os.environ.get("BERTH_TEST_ARM64"):
        pytest.skip("arm64 boot under TCG is slow: opt in with BERTH_TEST_ARM64=1")
    keys = Keys(tmp_path / "keys")
    disk = tmp_path / "data.qcow2"
    _make_disk(disk, "4G")
    vm = GuestVM(arm64_guest_image, "arm64", tmp_path, keys, disk)
    try:
        ready = vm.wait_ready(timeout=max(BOOT_TIMEOUT_S, 1800))
        names = [name for name, _, _ in vm.stages()]
        assert names[: len(STAGES)] == list(STAGES)
        rc, out, err = vm.run("uname -m; docker version --format '{{.Server.Arch}}'", timeout=300)
        assert rc == 0, err
        assert out.split() == ["aarch64", "arm64"]
        print(f"arm64 ready {ready:.1f}s after QEMU started")
        vm.powerdown(timeout=300)
        assert vm.proc.returncode == 0, vm.console_tail()
    finally:
        vm.kill()
