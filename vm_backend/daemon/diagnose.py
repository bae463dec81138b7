"""``berth machine diagnose``: hop-by-hop checks and a redacted support bundle.

The checks run in berthd (docs/diagnose.md), in the order a request travels, so the first
failed check is the broken hop and its ``fix`` says what to do:

    vm → ssh → engine → port-in-vm → port-on-host → dns-vm → dns-container
    → host-from-container → share:<tag> …

A check whose prerequisite failed is ``skipped`` (never reported as a second failure).
``warning`` is for what is not Berth's to fix (no upstream DNS on this computer).

:func:`write_bundle` writes a ``.tar.gz`` with logs, the machine's settings, versions and
the results. Every member passes :class:`Redactor`: the environment values of every
container in the VM are removed verbatim, and anything that looks like an environment
assignment, a private key or a token is masked.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vm_backend import __version__
from vm_backend.errors import BerthError
from vm_backend.machine.machine import MachineState
from vm_backend.machine.ports import pick_free_port
from vm_backend.machine.ssh import SSHState

if TYPE_CHECKING:
    from vm_backend.daemon.service import MachineService

OK = "ok"
FAILED = "failed"
WARNING = "warning"
SKIPPED = "skipped"

#: A name every working resolver knows; the check only needs an answer.
DNS_PROBE_NAME = "deb.debian.org"
CONTAINER_PORT = 8080
HOP_TIMEOUT_S = 45.0
#: How long one probe container may take from start to exit (a TCG VM on a loaded
#: computer needs a minute for what takes a second with KVM).
PROBE_TIMEOUT_S = 180.0
#: The container's verdict when it got an answer that is not the token (see PROBE_*).
PROBE_WRONG_ANSWER = 3
LABEL = "berth.diagnose"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | failed | warning | skipped
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (OK, WARNING)


@dataclass(frozen=True)
class ProbeRun:
    """What one probe container did: its exit status and output, or why it never ran.

    The verdict of a container probe is its exit status, never its output: dockerd can
    lose the last line of a container's output when it has no trailing newline
    (moby/moby#43860; docs/diagnose.md), and an HTTP body has none.
    """

    exit_code: int | None
    out: str = ""
    err: str = ""
    error: str = ""  # the engine's error when the container could not run to its end

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        """Plain words for a report: exit status (and signal), stderr, stdout."""
        if self.exit_code is None:
            return f"the probe container did not run to its end: {self.error or 'no reason given'}"
        parts = [f"exit status {self.exit_code}{_signal_name(self.exit_code)}"]
        if self.err.strip():
            parts.append(f"stderr: {self.err.strip()}")
        if self.out.strip():
            parts.append(f"stdout: {self.out.strip()}")
        return "; ".join(parts)


def _signal_name(exit_code: int) -> str:
    """`` (killed by SIGSEGV)`` for a shell-style status above 128, else ``""``."""
    if 128 < exit_code < 128 + 65:
        try:
            return f" (killed by {signal.Signals(exit_code - 128).name})"
        except ValueError:
            return f" (killed by signal {exit_code - 128})"
    return ""


def first_broken(checks: list[Check]) -> Check | None:
    return next((c for c in checks if c.status == FAILED), None)


def checks_to_json(checks: list[Check]) -> dict[str, Any]:
    broken = first_broken(checks)
    return {
        "ok": broken is None,
        "first_broken": broken.name if broken else None,
        "checks": [{**asdict(c), "ok": c.ok} for c in checks],
    }


def format_checks(doc: dict[str, Any], name: str) -> str:
    """The human report (the CLI prints it; plain text only)."""
    marks = {OK: "ok  ", FAILED: "FAIL", WARNING: "warn", SKIPPED: "skip"}
    lines = [f"Diagnose of machine {name}:"]
    width = max((len(c["name"]) for c in doc["checks"]), default=10)
    for c in doc["checks"]:
        lines.append(f"  [{marks.get(c['status'], '?   ')}] {c['name']:<{width}}  {c['detail']}")
        if c["status"] == FAILED and c["fix"]:
            lines.append(f"  {'':6} {'':<{width}}  fix: {c['fix']}")
    broken = doc.get("first_broken")
    if broken:
        fix = next(c["fix"] for c in doc["checks"] if c["name"] == broken)
        lines.append(f"First broken hop: {broken}. {fix}")
    else:
        lines.append("Every hop works.")
    return "\n".join(lines) + "\n"


# ---- the checks -------------------------------------------------------------------------------
class _Diagnose:
    def __init__(
        self, service: MachineService, image: str | None, forward_timeout: float = HOP_TIMEOUT_S
    ) -> None:
        self.service = service
        self.image_hint = image
        # How long port-on-host waits for Berth's forwarder once the port answers in the VM.
        self.forward_timeout = forward_timeout
        self.checks: list[Check] = []
        self.engine: Any = None
        self.image: str | None = None

    def add(self, name: str, status: str, detail: str, fix: str = "") -> bool:
        self.checks.append(Check(name, status, detail, fix))
        return status in (OK, WARNING)

    def skip(self, name: str, needs: str) -> None:
        self.add(name, SKIPPED, f"not checked: needs {needs}")

    def guest(self, argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
        ssh = self.service.ssh
        if ssh is None:
            raise BerthError("no SSH session", "")
        rc, out, err = ssh.exec(argv, timeout=timeout)
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def run(self) -> list[Check]:
        vm = self.check_vm()
        ssh = vm and self.check_ssh()
        if not vm:
            self.skip("ssh", "the VM running")
        engine = ssh and self.check_engine()
        if not ssh:
            self.skip("engine", "SSH to the VM")
        if engine:
            self.check_ports()
        else:
            self.skip("port-in-vm", "the engine")
            self.skip("port-on-host", "the engine")
        if ssh:
            self.check_dns_vm()
        else:
            self.skip("dns-vm", "SSH to the VM")
        if engine and self.image:
            self.check_dns_container()
            self.check_host_from_container()
        else:
            need = "the engine" if not engine else "an image with a shell in the VM"
            self.skip("dns-container", need)
            self.skip("host-from-container", need)
        self.check_shares(ssh)
        if self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.close()
        return self.checks

    # host → VM
    def check_vm(self) -> bool:
        status = self.service.machine.status()
        if status.state is not MachineState.RUNNING:
            return self.add(
                "vm", FAILED, f"the machine is {status.state.value}",
                "Start it: berth machine start",
            )
        qmp_state = "unknown"
        qmp = self.service.machine.qmp
        if qmp is not None:
            try:
                reply = qmp.execute("query-status")
                qmp_state = str(reply.get("status", "unknown"))
            except (BerthError, OSError, RuntimeError) as err:  # the finding itself
                return self.add(
                    "vm", FAILED, f"QEMU does not answer on QMP: {err}",
                    "Restart the machine: berth machine stop && berth machine start",
                )
        if qmp_state not in ("running", "unknown"):
            return self.add(
                "vm", FAILED, f"QEMU reports the VM as {qmp_state}",
                "Resume it from the Machine page, or restart it.",
            )
        accel = status.accelerator.value if status.accelerator else "?"
        return self.add("vm", OK, f"running (QMP: {qmp_state}, accelerator {accel})")

    def check_ssh(self) -> bool:
        ssh = self.service.ssh
        if ssh is None or ssh.state is not SSHState.CONNECTED:
            state = ssh.state.value if ssh else "not opened"
            return self.add(
                "ssh", FAILED, f"the SSH session to the VM is {state}",
                "Restart the machine; if it persists, see berth machine logs --daemon.",
            )
        try:
            _, out, _ = self.guest(["uname", "-r"], timeout=20)
        except BerthError as err:
            return self.add("ssh", FAILED, f"a command in the VM failed: {err}",
                            "Restart the machine.")
        return self.add("ssh", OK, f"connected on 127.0.0.1:{ssh.port}, guest kernel "
                        f"{out.strip()}")

    def check_engine(self) -> bool:
        from vm_backend.daemon.service import ping_unix

        # Pinged by its path or pipe name; named to the user (and given to docker-py) as
        # the DOCKER_HOST they would use: unix://... or, on Windows, npipe:////./pipe/...
        url = self.service.engine_url
        try:
            ok = self.service.relay is not None and ping_unix(self.service.engine_endpoint)
        except OSError as err:
            ok = False
            why = str(err)
        else:
            why = "no answer" if self.service.relay is not None else "the socket is not served"
        if not ok:
            return self.add(
                "engine", FAILED, f"GET /_ping on {url}: {why}",
                "See dockerd's log (berth machine ssh -- tail /var/log/berth/dockerd.log) "
                "and restart the machine.",
            )
        import docker

        try:
            self.engine = docker.DockerClient(base_url=url, timeout=120)
            self.image = self._pick_image()
        except Exception as err:  # noqa: BLE001 (docker-py's kinds, and pywintypes.error)
            return self.add(
                "engine", FAILED, f"{url} answers /_ping, but not docker-py's requests: {err}",
                _docker_py_fix(err),
            )
        return self.add("engine", OK, f"{url} answers /_ping")

    def _pick_image(self) -> str | None:
        tags: list[str] = []
        for img in self.engine.images.list():
            tags.extend(img.tags)
        if self.image_hint:
            return self.image_hint
        ranked = sorted(tags, key=lambda t: (0 if "busybox" in t else 1 if "alpine" in t else 2))
        return ranked[0] if ranked else None

    # VM → container port → host
    def check_ports(self) -> None:
        if not self.image:
            self.skip("port-in-vm", "an image with a shell in the VM (docker load one)")
            self.skip("port-on-host", "an image in the VM")
            return
        token = secrets.token_hex(8)
        port = pick_free_port()
        script = (
            f"mkdir -p /w && echo {token} > /w/index.html && "
            f"exec httpd -f -p {CONTAINER_PORT} -h /w"
        )
        try:
            container = self.engine.containers.run(
                self.image, ["sh", "-c", script], detach=True,
                ports={f"{CONTAINER_PORT}/tcp": port}, labels={LABEL: "port"},
            )
        except Exception as err:  # noqa: BLE001 (docker-py raises many kinds; all are findings)
            self.add("port-in-vm", FAILED, f"could not start a test container from "
                     f"{self.image}: {err}", "Check the engine: berth machine logs")
            self.skip("port-on-host", "the test container")
            return
        try:
            in_vm = self._retry(lambda: self._guest_http(port, token))
            if not in_vm:
                self.add(
                    "port-in-vm", FAILED,
                    f"a container publishing {port}:{CONTAINER_PORT} does not answer on "
                    f"127.0.0.1:{port} inside the VM",
                    "The engine's port publishing is broken: restart the machine.",
                )
                self.skip("port-on-host", "the port inside the VM")
                return
            self.add("port-in-vm", OK, f"container port {CONTAINER_PORT} answers on "
                     f"127.0.0.1:{port} in the VM")
            if self._retry(lambda: _host_http(port) == token, self.forward_timeout):
                self.add("port-on-host", OK, f"reached from this computer on 127.0.0.1:{port}")
            else:
                self.add(
                    "port-on-host", FAILED,
                    f"127.0.0.1:{port} on this computer does not reach the container",
                    "Berth is not forwarding published ports: check `berth machine status` "
                    "and the daemon log, then restart the machine.",
                )
        finally:
            with contextlib.suppress(Exception):
                container.remove(force=True)

    def _guest_http(self, port: int, token: str) -> bool:
        # python3 is in the guest image (Debian's busybox 1.35 wget segfaults on -T).
        rc, out, _ = self.guest(["python3", "-c", _GUEST_HTTP_GET, str(port)], timeout=30)
        return rc == 0 and out.strip() == token

    @staticmethod
    def _retry(probe: Callable[[], bool], timeout: float = HOP_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if probe():
                    return True
            except (OSError, BerthError):
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    # DNS
    def check_dns_vm(self) -> None:
        try:
            rc, out, _ = self.guest(["getent", "hosts", DNS_PROBE_NAME], timeout=30)
        except BerthError as err:
            self.add("dns-vm", FAILED, f"could not run getent in the VM: {err}",
                     "Restart the machine.")
            return
        if rc == 0 and out.strip():
            address = out.split()[0]
            self.add("dns-vm", OK, f"{DNS_PROBE_NAME} → {address} through 10.0.2.3 "
                     "(QEMU's DNS, which asks this computer's resolver)")
            return
        self._dns_failed("dns-vm", "in the VM (resolver 10.0.2.3)")

    def _dns_failed(self, name: str, where: str, why: str = "") -> None:
        if not _host_resolves(DNS_PROBE_NAME):
            self.add(
                name, WARNING,
                f"{DNS_PROBE_NAME} does not resolve {where}, and this computer cannot resolve "
                "it either: no upstream DNS (offline?), not a Berth problem",
            )
            return
        self.add(
            name, FAILED,
            f"{DNS_PROBE_NAME} resolves on this computer but not {where}"
            + (f" ({_short(why)})" if why else ""),
            "QEMU's DNS forwarder (10.0.2.3) reads this computer's resolver settings at VM "
            "start: restart the machine after a network change (VPN, Wi-Fi).",
        )

    def check_dns_container(self) -> None:
        # busybox nslookup exits 0 only when it got an answer.
        run = self._run_container(["nslookup", DNS_PROBE_NAME])
        if run.ok and "Address" in run.out.split(DNS_PROBE_NAME, 1)[-1]:
            self.add("dns-container", OK, f"{DNS_PROBE_NAME} resolves in a container")
            return
        self._dns_failed("dns-container", "in a container", run.describe())

    def check_host_from_container(self) -> None:
        token = secrets.token_hex(8)
        with _token_server(token) as server:
            # The container judges the answer itself and says so in its exit status (0:
            # the token came back; PROBE_WRONG_ANSWER: something else did; nc's own
            # status otherwise). busybox nc, not wget: Debian's busybox 1.35 wget
            # segfaults on -T (built without FEATURE_WGET_TIMEOUT). -w bounds the connect.
            run = self._run_container(
                ["sh", "-c", _HOST_PROBE, "sh", "host.docker.internal", str(server.port), token],
                extra_hosts={"host.docker.internal": "host-gateway"},
            )
        if run.ok:
            self.add(
                "host-from-container", OK,
                f"host.docker.internal:{server.port} (with --add-host host.docker.internal:"
                "host-gateway) reaches this computer's 127.0.0.1",
            )
            return
        seen = (
            f"the listener on this computer answered {server.answered} request(s)"
            if server.answered else "no connection reached the listener on this computer"
        )
        self.add(
            "host-from-container", FAILED,
            f"a container could not reach this computer at host.docker.internal:"
            f"{server.port} ({_short(run.describe())}; {seen})",
            "The VM's dockerd must run with --host-gateway-ip 10.0.2.2 (Berth's guest image "
            "does): update the guest image and restart the machine.",
        )

    def _run_container(self, cmd: list[str], **kwargs: Any) -> ProbeRun:
        """Run a probe container to its end; never raises.

        Not ``containers.run(detach=False)``: docker-py reads that output from a
        ``logs?follow=1`` stream, which loses a last line without a newline when the
        container exits (moby/moby#43860). Output read after the exit is complete.
        """
        try:
            container = self.engine.containers.run(
                self.image, cmd, detach=True, labels={LABEL: "probe"}, **kwargs
            )
        except Exception as err:  # noqa: BLE001 (docker-py raises many kinds; all are findings)
            return ProbeRun(None, error=str(err))
        try:
            status = container.wait(timeout=PROBE_TIMEOUT_S)
            code = int(status.get("StatusCode", -1))
            reported = (status.get("Error") or {}).get("Message") or ""
            out = bytes(container.logs(stdout=True, stderr=False)).decode("utf-8", "replace")
            stderr = bytes(container.logs(stdout=False, stderr=True)).decode("utf-8", "replace")
            return ProbeRun(code, out, stderr, reported)
        except Exception as err:  # noqa: BLE001 (a timeout or a lost engine: a finding)
            return ProbeRun(None, error=f"{type(err).__name__}: {err}")
        finally:
            with contextlib.suppress(Exception):
                container.remove(force=True)

    # shares
    def check_shares(self, ssh_ok: bool) -> None:
        shares = self.service.shares
        if shares is None:
            for share in self.service.machine.spec.shares:
                self.skip(f"share:{share.tag}", "the VM running with its shares started")
            return
        for row in shares.table():
            name = f"share:{row.tag}"
            if not ssh_ok:
                self.skip(name, "SSH to the VM")
                continue
            if not os.path.isdir(row.host_path):
                self.add(
                    name, FAILED, f"the shared folder {row.host_path} no longer exists on "
                    "this computer",
                    "Create the folder again (or remove the share) and restart the machine.",
                )
                continue
            if row.state != "mounted":
                self.add(name, FAILED, f"not mounted in the VM: {row.error or row.state}",
                         "Restart the machine; see docs/shares.md if it persists.")
                continue
            self._share_round_trip(name, row.host_path, row.guest_path, row.read_only)

    def _share_round_trip(self, name: str, host_dir: str, guest_dir: str, ro: bool) -> None:
        token = secrets.token_hex(8)
        fname = f".berth-diagnose-{token}"
        host_file = os.path.join(host_dir, fname)
        reply_file = host_file + ".reply"
        try:
            try:
                with open(host_file, "x", encoding="ascii") as fh:
                    fh.write(token)
            except OSError as err:
                self.add(name, FAILED, f"cannot write in {host_dir} on this computer: {err}",
                         "Check the folder's permissions.")
                return
            guest_file = f"{guest_dir.rstrip('/')}/{fname}"
            try:
                rc, out, msg = self.guest(["cat", guest_file], timeout=30)
            except BerthError as e:
                rc, out, msg = 1, "", str(e)
            if rc != 0 or out != token:
                self.add(
                    name, FAILED,
                    f"a file written in {host_dir} is not visible at {guest_dir} in the VM "
                    f"({msg.strip() or 'different content'})",
                    "The share is stale: restart the machine (berth machine stop, then start).",
                )
                return
            if ro:
                self.add(name, OK, f"{host_dir} → {guest_dir} (read-only): host file read "
                         "in the VM")
                return
            reply = secrets.token_hex(8)
            try:
                rc, _, msg = self.guest(
                    ["sh", "-c", 'printf %s "$2" > "$1"', "sh", guest_file + ".reply", reply],
                    timeout=30,
                )
            except BerthError as e:
                rc, msg = 1, str(e)
            got = ""
            with contextlib.suppress(OSError), open(reply_file, encoding="ascii") as fh:
                got = fh.read()
            if rc != 0 or got != reply:
                self.add(name, FAILED, f"the VM cannot write into {guest_dir} "
                         f"({msg.strip() or 'not seen on this computer'})",
                         "Check the folder's permissions; restart the machine if it persists.")
                return
            self.add(name, OK, f"{host_dir} ↔ {guest_dir}: written and read both ways")
        finally:
            for path in (host_file, reply_file):
                with contextlib.suppress(OSError):
                    os.unlink(path)


_GUEST_HTTP_GET = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5)
s.settimeout(5)
s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.split(b"\\r\\n\\r\\n", 1)[-1].decode("ascii", "replace"))
"""


# The host-from-container probe, run by the container's sh with $1 host, $2 port, $3 token.
# $(...) drops trailing newlines only; the body has none.
_HOST_PROBE = f"""
answer=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 30 "$1" "$2")
rc=$?
case "$answer" in
  *"$3") exit 0 ;;
esac
printf 'nc exit status %s; %s bytes came back: %.120s\\n' "$rc" "${{#answer}}" "$answer" >&2
[ "$rc" -ne 0 ] && exit "$rc"
exit {PROBE_WRONG_ANSWER}
"""


def _docker_py_fix(err: BaseException) -> str:
    """What to do when docker-py fails on an engine that answered ``/_ping``."""
    # docker-py's npipe:// transport imports pywin32 lazily and says so in its message.
    if isinstance(err, ImportError) or "pywin32" in str(err) or "pypiwin32" in str(err):
        return (
            "docker-py needs pywin32 for npipe:// on Windows: reinstall Berth "
            "(or pip install pywin32 in its environment)."
        )
    return (
        "The engine stops answering after /_ping: see dockerd's log (berth machine ssh -- "
        "tail /var/log/berth/dockerd.log) and restart the machine."
    )


def run_checks(service: MachineService, image: str | None = None) -> list[Check]:
    """Run every hop check against ``service``'s machine. Never raises for a broken hop."""
    return _Diagnose(service, image).run()


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _host_http(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[-1].decode("ascii", "replace").strip()


def _host_resolves(name: str, timeout: float = 10.0) -> bool:
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(name, None)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


@dataclass
class TokenServer:
    port: int
    answered: int = 0  # requests answered so far (the report says whether any came)


@contextlib.contextmanager
def _token_server(token: str) -> Iterator[TokenServer]:
    """A one-purpose HTTP listener on the host's 127.0.0.1 answering ``token``."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.5)
    stop = threading.Event()
    body = token.encode()
    response = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    server = TokenServer(int(srv.getsockname()[1]))

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    conn.sendall(response)
                    server.answered += 1

    thread = threading.Thread(target=serve, name="diagnose-host", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=5)
        srv.close()


# ---- the support bundle -----------------------------------------------------------------------
_PEM = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.S,
)
_ENV_ASSIGN = re.compile(r"\b([A-Z][A-Z0-9_]{1,})=(\"[^\"]*\"|'[^']*'|[^\s\"',;]+)")
_SECRET_KEY = re.compile(
    r"(?i)\b([\w.-]*(?:token|secret|passw(?:or)?d|api[_-]?key|credential|auth)[\w.-]*)"
    r"(\"?\s*[:=]\s*\"?)([^\s\"',;}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
REDACTED = "<redacted>"


class Redactor:
    """Masks secrets in text: exact container env values first, then patterns."""

    def __init__(self, env_values: set[str]) -> None:
        # Longest first, so a value containing another is removed whole.
        self.values = sorted((v for v in env_values if len(v) >= 3), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        text = _PEM.sub("<redacted private key>", text)
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        text = _ENV_ASSIGN.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
        return _SECRET_KEY.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)

    def leaks(self, text: str) -> bool:
        return any(v in text for v in self.values)


def container_env_values(engine: Any) -> set[str]:
    """Every environment value of every container (running or not) in the engine."""
    values: set[str] = set()
    for container in engine.containers.list(all=True):
        for item in (container.attrs.get("Config") or {}).get("Env") or []:
            _, _, value = str(item).partition("=")
            if value:
                values.add(value)
    return values


def _tail(path: Path, limit: int = 1024 * 1024) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read()
    except OSError as err:
        return f"(not available: {err})\n".encode()


def _qemu_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
        return out.stdout.splitlines()[0] if out.stdout else out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({err})"


def write_bundle(
    service: MachineService, dest: Path, checks: list[Check], daemon_log: Path | None
) -> dict[str, Any]:
    """Write the redacted support bundle to ``dest`` (.tar.gz, mode 0600)."""
    machine = service.machine
    members: dict[str, bytes] = {}
    env_values: set[str] = set()
    engine_version: Any = None
    containers: list[dict[str, Any]] = []
    engine = None
    if service.relay is not None:
        try:
            import docker

            engine = docker.DockerClient(base_url=service.engine_url, timeout=60)
            env_values = container_env_values(engine)
            engine_version = engine.version()
            for c in engine.containers.list(all=True):
                containers.append({
                    "id": c.short_id, "name": c.name,
                    "image": (c.attrs.get("Config") or {}).get("Image"),
                    "state": c.status,
                    "ports": (c.attrs.get("NetworkSettings") or {}).get("Ports"),
                })
        except Exception as err:  # noqa: BLE001 (a bundle is still written without the engine)
            engine_version = f"unavailable: {err}"
        finally:
            if engine is not None:
                with contextlib.suppress(Exception):
                    engine.close()
    guest: dict[str, str] = {}
    ssh = service.ssh
    if ssh is not None and ssh.state is SSHState.CONNECTED:
        for key, argv in {
            "kernel": ["uname", "-r"],
            "image": ["cat", "/etc/berth-image-version"],
        }.items():
            with contextlib.suppress(BerthError):
                guest[key] = ssh.exec(argv, timeout=20).out.decode("utf-8", "replace").strip()
        with contextlib.suppress(BerthError):
            names = ssh.exec(["ls", "/var/log/berth"], timeout=20).out.decode().split()
            for name in names:
                if name.endswith(".log") and "/" not in name:
                    res = ssh.exec(["tail", "-c", "262144", f"/var/log/berth/{name}"], timeout=30)
                    members[f"logs/guest/{name}"] = res.out
    versions = {
        "berth": __version__,
        "python": platform.python_version(),
        "host": platform.platform(),
        "qemu": _qemu_version(machine.spec.arch.qemu_system),
        "guest_kernel": guest.get("kernel", "unknown (VM not reachable)"),
        "guest_image": guest.get("image", "unknown (VM not reachable)"),
        "engine": engine_version,
    }
    status = service.status_json()
    members["README.txt"] = (
        "Berth support bundle. Secrets are removed: every container environment value, "
        "anything shaped like NAME=value, private keys and tokens are replaced by "
        f"{REDACTED}.\n"
    ).encode()
    members["diagnose.json"] = json.dumps(checks_to_json(checks), indent=2).encode()
    members["versions.json"] = json.dumps(versions, indent=2, default=str).encode()
    members["status.json"] = json.dumps(status, indent=2, default=str).encode()
    members["containers.json"] = json.dumps(containers, indent=2, default=str).encode()
    members["machine.json"] = _tail(machine.paths.spec_file)
    members["logs/console.log"] = _tail(machine.paths.console_log)
    members["logs/qemu.log"] = _tail(machine.paths.qemu_log)
    if daemon_log is not None:
        members["logs/berthd.log"] = _tail(daemon_log)

    redact = Redactor(env_values)
    clean = {n: redact(b.decode("utf-8", "replace")).encode() for n, b in members.items()}
    leaked = [n for n, b in clean.items() if redact.leaks(b.decode("utf-8", "replace"))]
    if leaked:  # cannot happen after replace(); refuse rather than ship a secret
        raise BerthError(f"The bundle would contain a secret ({', '.join(leaked)}).", "")

    dest = dest.expanduser().resolve()
    tmp = dest.with_name(dest.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    now = time.time()
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in clean.items():
            info = tarfile.TarInfo(f"berth-bundle/{name}")
            info.size = len(data)
            info.mtime = int(now)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, dest)
    return {"path": str(dest), "members": sorted(clean), "redacted_values": len(redact.values)}
