"""The helper VM end to end: berth machine start → the real docker CLI through the socket.

Boots the real guest image under QEMU (TCG here) through berthd, exactly as a user does:
`berth machine init/start/env/stop`, then the docker CLI with DOCKER_HOST from `env`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.berth_cli import run_berth
from vm_backend.daemon.service import find_guest_image
from vm_backend.errors import BerthError
from vm_backend.machine.hostinfo import Arch

pytestmark = pytest.mark.vm

HOST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
DOCKER = shutil.which("docker") or "docker"




def _docker(
    host: str, *args: str, input_text: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input_text,
        env={**os.environ, "DOCKER_HOST": host},
    )


@pytest.fixture(scope="module")
def vm_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    try:
        find_guest_image(Arch.AMD64)
    except BerthError as err:
        pytest.skip(f"no guest image: {err}")
    # Short path: unix socket paths are limited to ~104 bytes.
    home = Path(f"/tmp/bvm-{uuid.uuid4().hex[:6]}")
    home.mkdir(mode=0o700)
    init = run_berth(
        home, "machine", "init", "--cpus", "2", "--memory", "1536", "--disk", "8", "--accel", "auto"
    )
    assert init.returncode == 0, init.stderr
    yield home
    run_berth(home, "machine", "stop", "--timeout", "20")
    subprocess.run(["pkill", "-f", f"vm_backend.daemon.server --home {home}"], check=False)
    # berthd's own log goes with the folder: its tail is what explains a failure here.
    log = home / "daemon" / "berthd.log"
    if os.environ.get("BERTH_KEEP_LOGS"):
        shutil.copytree(home, os.environ["BERTH_KEEP_LOGS"], ignore_dangling_symlinks=True,
                        ignore=shutil.ignore_patterns("*.qcow2", "*.sock", "*.squashfs", "vmlinuz"))
    console = home / "machines" / "default" / "console.log"
    for name, path, lines in (("berthd.log", log, 80), ("console.log", console, 60)):
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            print(f"---- {name} (tail) ----\n" + "\n".join(tail))
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def docker_host(vm_home: Path) -> str:
    started = time.monotonic()
    start = run_berth(vm_home, "machine", "start")
    assert start.returncode == 0, start.stdout + start.stderr
    print(f"boot to engine-ready: {time.monotonic() - started:.1f} s\n{start.stdout}")
    env = run_berth(vm_home, "machine", "env")
    assert env.returncode == 0, env.stderr
    line = env.stdout.strip()
    assert line.startswith("export DOCKER_HOST=unix://")
    host = line.split("=", 1)[1]
    # Bring the local test image into the VM's engine (no registry is reachable).
    saved = subprocess.run([DOCKER, "save", HOST_IMAGE], capture_output=True, check=True)
    load = subprocess.run(
        [DOCKER, "load"],
        input=saved.stdout,
        capture_output=True,
        env={**os.environ, "DOCKER_HOST": host},
        timeout=300,
        check=False,
    )
    assert load.returncode == 0, load.stderr
    return host


def test_status_json_reports_the_running_vm(vm_home: Path, docker_host: str) -> None:
    doc = json.loads(run_berth(vm_home, "machine", "status", "--json").stdout)
    assert doc["state"] == "running"
    assert doc["docker_host"] == docker_host
    assert doc["accelerator"] in ("kvm", "tcg")
    stages = {s["stage"]: s for s in doc["timeline"]}
    for name in ("qemu", "kernel", "init", "network", "sshd", "engine", "ready", "socket"):
        assert stages[name]["state"] == "done", (name, stages[name])
    assert doc["resources"]["qemu_rss_bytes"] > 0


def test_engine_socket_is_private(docker_host: str) -> None:
    path = Path(docker_host.removeprefix("unix://"))
    st = path.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(path.parent.lstat().st_mode) == 0o700


def test_docker_cli_runs_a_container_and_reads_its_output(docker_host: str) -> None:
    run = _docker(docker_host, "run", "--rm", HOST_IMAGE, "echo", "hello from the vm")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "hello from the vm"
    info = _docker(docker_host, "info", "--format", "{{.OperatingSystem}}")
    assert "Debian" in info.stdout or "Berth" in info.stdout, info.stdout


def test_exec_interactive_and_logs_follow(docker_host: str) -> None:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    started = _docker(
        docker_host,
        "run",
        "-d",
        "--name",
        name,
        HOST_IMAGE,
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 1; done; sleep 300",
    )
    assert started.returncode == 0, started.stderr
    try:
        # docker exec -i with stdin: the relay must carry half-close so `cat` ends.
        cat = _docker(docker_host, "exec", "-i", name, "cat", input_text="through the relay\n")
        assert cat.returncode == 0 and cat.stdout == "through the relay\n"
        # -it needs a terminal: `script` gives docker one.
        it = subprocess.run(
            ["script", "-qec", f"{DOCKER} exec -it {name} sh -c 'echo tty:$(tty)'", "/dev/null"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "DOCKER_HOST": docker_host},
        )
        assert "tty:/dev/pts/" in it.stdout, it.stdout + it.stderr
        follow = subprocess.Popen(
            [DOCKER, "logs", "-f", name],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "DOCKER_HOST": docker_host},
        )
        try:
            assert follow.stdout is not None
            lines = [follow.stdout.readline().strip() for _ in range(3)]
            assert lines == ["line1", "line2", "line3"]
        finally:
            follow.terminate()
            follow.wait(10)
    finally:
        _docker(docker_host, "rm", "-f", name)


def test_named_volume_survives_a_vm_restart(vm_home: Path, docker_host: str) -> None:
    vol = f"keep-{uuid.uuid4().hex[:6]}"
    write = _docker(
        docker_host,
        "run",
        "--rm",
        "-v",
        f"{vol}:/data",
        HOST_IMAGE,
        "sh",
        "-c",
        "echo persisted > /data/f && sync",
    )
    assert write.returncode == 0, write.stderr
    stop = run_berth(vm_home, "machine", "stop")
    assert stop.returncode == 0, stop.stderr
    assert "powered-off" in stop.stdout or "quit" in stop.stdout
    status = json.loads(run_berth(vm_home, "machine", "status", "--json").stdout)
    assert status["state"] == "stopped"
    assert status["pid"] is None
    start = run_berth(vm_home, "machine", "start")
    assert start.returncode == 0, start.stderr
    read = _docker(docker_host, "run", "--rm", "-v", f"{vol}:/data", HOST_IMAGE, "cat", "/data/f")
    assert read.stdout.strip() == "persisted", read.stderr


def test_docker_context_points_at_the_socket(vm_home: Path, docker_host: str) -> None:
    ctx = subprocess.run(
        [DOCKER, "--context", "berth", "version", "--format", "{{.Server.Os}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "DOCKER_CONFIG": str(vm_home / "docker")},
    )
    assert ctx.returncode == 0, ctx.stderr
    assert ctx.stdout.strip() == "linux"


def test_no_engine_or_control_endpoint_listens_on_tcp(vm_home: Path, docker_host: str) -> None:
    """On the host only the SSH forward (127.0.0.1) is QEMU's; in the guest only sshd."""
    doc = json.loads(run_berth(vm_home, "machine", "status", "--json").stdout)
    pid = doc["pid"]
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    qemu_listeners = [line for line in out.splitlines() if f"pid={pid}," in line]
    assert qemu_listeners, out
    for line in qemu_listeners:
        local = line.split()[3]
        assert local.startswith("127.0.0.1:"), line
    ssh = run_berth(vm_home, "machine", "ssh", "--", "cat", "/proc/net/tcp", "/proc/net/tcp6")
    assert ssh.returncode == 0, ssh.stderr
    listening = [ln.split() for ln in ssh.stdout.splitlines()[1:] if ln.split()[3:4] == ["0A"]]
    ports = {int(fields[1].rsplit(":", 1)[1], 16) for fields in listening if len(fields) > 3}
    assert ports <= {22}, f"guest listens on TCP ports {sorted(ports)}"
    # From a container, the engine API is not reachable over the network either.
    probe = _docker(
        docker_host,
        "run",
        "--rm",
        HOST_IMAGE,
        "sh",
        "-c",
        "for p in 2375 2376; do nc -w 2 10.0.2.2 $p </dev/null && echo open$p; "
        "nc -w 2 172.17.0.1 $p </dev/null && echo open$p; done; true",
    )
    assert "open" not in probe.stdout


def _berth_env(home: Path) -> dict[str, str]:
    return {**os.environ, "BERTH_HOME": str(home), "DOCKER_CONFIG": str(home / "docker")}


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    """Read ``fd`` until ``marker`` shows up (or EOF / the timeout); everything read."""
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # a pty whose child exited
            break
        if not chunk:
            break
        out += chunk
    return out


def test_machine_ssh_shell_in_a_terminal(vm_home: Path, docker_host: str) -> None:
    """`berth machine ssh` with no command, in a real terminal: a guest shell on a pty, our
    terminal in raw mode meanwhile, and the shell's exit status as berth's."""
    env = _berth_env(vm_home)
    pid, fd = pty.fork()
    if pid == 0:  # the child: berth on the pty, as in a terminal window
        os.execve(sys.executable, [sys.executable, "-m", "vm_backend.cli", "machine", "ssh"],
                  env)
    try:
        prompt = _read_until(fd, b"# ", 120)  # root's prompt: the shell is up, raw mode set
        assert b"# " in prompt, prompt.decode(errors="replace")
        os.write(fd, b"echo term-$((6*7))-$TERM; exit 3\r")
        out = _read_until(fd, b"term-42-", 60)
        assert b"term-42-" in out, out.decode(errors="replace")
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, "berth machine ssh did not end after exit"
            _read_until(fd, b"\0", 0.2)  # keep draining the pty
        assert os.waitstatus_to_exitcode(status) == 3
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_machine_console_reaches_the_guest_shell(vm_home: Path, docker_host: str) -> None:
    """`berth machine console` with piped input: typed lines reach the serial console's
    shell and its output comes back; the attach stays until the user ends it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vm_backend.cli", "machine", "console"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_berth_env(vm_home),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"\necho console-$((6*7))\n")
        proc.stdin.flush()
        out = _read_until(proc.stdout.fileno(), b"console-42", 60)
        assert b"console-42" in out, out.decode(errors="replace")
        assert proc.poll() is None, "still attached"
    finally:
        proc.terminate()
        proc.wait(10)


def test_machine_stop_ends_qemu_cleanly(vm_home: Path, docker_host: str) -> None:
    doc = json.loads(run_berth(vm_home, "machine", "status", "--json").stdout)
    pid = doc["pid"]
    stop = run_berth(vm_home, "machine", "stop")
    assert stop.returncode == 0, stop.stderr
    assert "powered-off" in stop.stdout, stop.stdout
    assert not Path(f"/proc/{pid}").exists()
    sock = Path(docker_host.removeprefix("unix://"))
    assert not sock.exists()
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(OSError):
        s.connect(str(sock))
