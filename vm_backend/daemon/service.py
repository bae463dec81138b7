"""One helper VM as berthd runs it: the Machine, its SSH session, the engine socket.

:class:`MachineService` adds the host-side data plane to :class:`Machine`: once the guest
is ready it opens the pinned SSH transport, serves the guest's docker.sock on the host
(``<run dir>/docker.sock``, 0600 in a 0700 dir), checks ``/_ping`` through it (the
``socket`` readiness stage) and points the ``berth`` docker context at it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vm_backend.errors import BerthError
from vm_backend.guest.agent import AGENT_PATH
from vm_backend.machine.agent import AgentClient
from vm_backend.machine.context import engine_host_url, remove_context, write_context
from vm_backend.machine.disk import ReclaimResult, trim_guest
from vm_backend.machine.hostinfo import Arch
from vm_backend.machine.image import GuestImage, ImageError
from vm_backend.machine.keys import ensure_machine_keys
from vm_backend.machine.machine import Machine, MachineState, MachineStatus, StopOutcome
from vm_backend.machine.portfwd import PortForwarder
from vm_backend.machine.relay import ENGINE_SPARE_CHANNELS, EngineSocketRelay
from vm_backend.machine.shares import ShareManager
from vm_backend.machine.spec import MachineSpec, spec_to_json
from vm_backend.machine.ssh import GuestSSH
from vm_backend.machine.timeline import Stage, StageRecord
from vm_backend.winpipe import connect_local

log = logging.getLogger(__name__)

CONTEXT_NAME = "berth"
PING_TIMEOUT = 10.0


def image_search_path(arch: Arch) -> list[Path]:
    """Where the guest image may be: an override, the bundle, the user's data, the build."""
    out: list[Path] = []
    # The same variables the VM tests use (tests/vm/conftest.py).
    variable = "BERTH_GUEST_IMAGE_DIR" if arch is Arch.AMD64 else "BERTH_GUEST_IMAGE_DIR_ARM64"
    override = os.environ.get(variable)
    if override:
        out.append(Path(override))
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        out.append(Path(bundle) / "guest" / arch.value)
    from vm_backend.paths import berth_home

    out.append(berth_home() / "images" / arch.value)
    out.append(Path(__file__).resolve().parents[2] / "packaging" / "guest" / "out" / arch.value)
    return out


def find_guest_image(arch: Arch) -> GuestImage:
    tried = []
    for directory in image_search_path(arch):
        tried.append(str(directory))
        if (directory / "vmlinuz").exists():
            return GuestImage.from_dir(directory, arch)
    hint = (
        "Reinstall Berth: its package carries the guest image."
        if getattr(sys, "frozen", False)
        else "Build it with: bash packaging/guest/build.sh --arch " + arch.value
    )
    raise ImageError(f"No {arch.value} guest image found (looked in {', '.join(tried)}).", hint)


def ping_unix(path: Path | str, timeout: float = PING_TIMEOUT) -> bool:
    """``GET /_ping`` on a unix socket (or a Windows pipe name); True when the engine
    answers OK."""
    data = b""
    with connect_local(str(path), timeout) as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        while chunk := sock.recv(4096):
            data += chunk
    return data.startswith(b"HTTP/1.1 200") and data.rstrip().endswith(b"OK")


class MachineService:
    """The VM plus its SSH session and engine socket; thread-safe."""

    def __init__(
        self,
        name: str = "default",
        *,
        home: Path | None = None,
        image: GuestImage | None = None,
        machine: Machine | None = None,
        manage_context: bool = True,
    ) -> None:
        self.name = name
        self.machine = machine or Machine(name, home=home, image=image)
        self.manage_context = manage_context
        self._lock = threading.RLock()
        self.ssh: GuestSSH | None = None
        # The engine socket's relay has an SSH session of its own (same keys, same pinned
        # host key): its requests then never queue behind the agent's, the shares' or the
        # port forwards' packets, in berthd's transport thread or in the guest's sshd, and
        # a drop of one session leaves the other working. Its latency effect was within the
        # noise (docs/benchmarks-relay.md); it is kept for that isolation.
        self.engine_ssh: GuestSSH | None = None
        self.relay: EngineSocketRelay | None = None
        self.ports: PortForwarder | None = None
        self.agent: AgentClient | None = None
        self.shares: ShareManager | None = None
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self.machine.add_readiness_hook(Stage.SOCKET, self._open_engine_socket)
        self.machine.on_stage(self._stage_changed)
        self.machine.on_state_change(self._state_changed)

    @property
    def engine_socket(self) -> Path:
        return self.machine.paths.run_dir / "docker.sock"

    @property
    def engine_endpoint(self) -> str:
        """The engine socket's path, or on Windows its named pipe's name."""
        return self.machine.paths.engine_pipe or str(self.engine_socket)

    @property
    def engine_url(self) -> str:
        """``DOCKER_HOST`` for the engine: ``unix://...`` or ``npipe:////./pipe/...``."""
        return engine_host_url(self.engine_socket, self.machine.paths.engine_pipe)

    # ---- listeners ----------------------------------------------------------------------
    def add_listener(self, callback: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[dict[str, Any]], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def _broadcast(self, message: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for cb in listeners:
            try:
                cb(message)
            except Exception:
                log.debug("listener failed", exc_info=True)

    def _stage_changed(self, record: StageRecord) -> None:
        self._broadcast({"stage": stage_to_json(record)})

    def _state_changed(self, status: MachineStatus) -> None:
        if status.state in (MachineState.STOPPED, MachineState.CRASHED):
            self._close_data_plane()
        self._broadcast({"state": status.state.value, "detail": status.detail})

    # ---- lifecycle ----------------------------------------------------------------------
    def create(self, spec: MachineSpec) -> MachineSpec:
        return self.machine.create(spec)

    def start(self) -> MachineStatus:
        if self.machine.image is None:
            self.machine.image = find_guest_image(self.machine.spec.arch)
        status = self.machine.start()
        # Already running (e.g. started by a previous berthd): make sure the socket is up.
        if self.relay is None and status.state is MachineState.RUNNING:
            self._open_engine_socket(self.machine)
        return self.machine.status()

    def attach(self) -> bool:
        """Reattach to a VM that kept running while berthd was away."""
        if not self.machine.exists or not self.machine.attach():
            return False
        try:
            self._open_engine_socket(self.machine)
        except BerthError as err:
            log.warning("reattached to %s but its engine socket failed: %s", self.name, err)
        return True

    def stop(self, timeout: float | None = None) -> StopOutcome:
        self._close_data_plane()
        return self.machine.stop(timeout)

    def delete(self) -> None:
        self._close_data_plane()
        self.machine.delete()
        if self.manage_context:
            with contextlib.suppress(BerthError, OSError):
                remove_context(CONTEXT_NAME)

    def reclaim(self, compact: bool = False) -> ReclaimResult:
        """Give the data disk's free space back to the host (vm_backend/machine/disk.py).

        Running: fstrim in the guest. Stopped (or ``compact``): compact the qcow2, which
        the machine refuses plainly while the VM runs.
        """
        with self._lock:
            ssh = self.ssh
        running = self.machine.status().state is MachineState.RUNNING
        if compact or not running:
            return self.machine.compact_disk()
        if ssh is None:
            raise BerthError("The VM's SSH session is not open.", "Wait for the start to end.")
        return trim_guest(ssh, self.machine.paths.data_disk)

    def close(self) -> None:
        """berthd is exiting: drop connections, leave the VM running."""
        self._close_data_plane()
        self.machine.close()

    # ---- data plane ---------------------------------------------------------------------
    def _open_engine_socket(self, machine: Machine) -> None:
        with self._lock:
            status = machine.status()
            if status.ssh_port is None:
                raise BerthError("The VM has no SSH port.", "Restart the machine.")
            keys = ensure_machine_keys(machine.paths.state_dir, machine.name)
            if self.ssh is None or self.ssh.port != status.ssh_port:
                if self.ssh is not None:
                    self.ssh.close()
                self.ssh = GuestSSH(
                    status.ssh_port, keys.client.private_path, keys.host.public_openssh
                )
            self.ssh.connect()
            if self.engine_ssh is None or self.engine_ssh.port != status.ssh_port:
                if self.relay is not None:
                    self.relay.stop()
                    self.relay = None
                if self.engine_ssh is not None:
                    self.engine_ssh.close()
                self.engine_ssh = GuestSSH(
                    status.ssh_port, keys.client.private_path, keys.host.public_openssh
                )
            self.engine_ssh.connect()
            if self.relay is None:
                self.relay = EngineSocketRelay(
                    self.engine_ssh, self.engine_socket,
                    spare_channels=ENGINE_SPARE_CHANNELS,
                    pipe_name=self.machine.paths.engine_pipe,
                )
                self.relay.start()
        if not ping_unix(self.engine_endpoint):
            raise BerthError(
                "The engine socket does not answer /_ping.",
                "See the console log (berth machine logs) for dockerd's errors.",
            )
        with self._lock:
            # Published ports follow the engine from here on (docs/ports.md).
            # A failure here costs the ports, not the machine: it is logged, not raised.
            if self.ports is None and self.ssh is not None:
                # The guest agent is the source of published ports (TCP and UDP, docs/
                # agent.md); an image without one falls back to watching the engine.
                has_agent = self._guest_has_agent(self.ssh)
                ports = PortForwarder(
                    self.ssh,
                    None if has_agent else self.engine_url,
                    expose_on_lan=machine.spec.expose_ports_on_lan,
                    udp=has_agent,
                    retry_interval_s=5.0 if has_agent else 0.0,
                    # QEMU hostfwd rules for ports the guest publishes on all its
                    # interfaces (docs/ports.md); never touching the SSH forward's rule.
                    hostfwd=machine.qmp,
                    reserved_ports=(status.ssh_port,),
                )
                try:
                    ports.start()
                    self.ports = ports
                except BerthError as err:
                    log.warning("published ports are not forwarded: %s", err)
                if has_agent and self.agent is None:
                    self.agent = AgentClient(self.ssh)
                    if self.ports is not None:
                        forwarder = self.ports
                        self.agent.on_ports(forwarder.set_guest_ports)
                        # Every heartbeat: a conflicting host port freed since is bound.
                        self.agent.on_change(lambda _snap: forwarder.refresh())
                    self.agent.start()
        self._start_shares(machine)
        if self.manage_context:
            try:
                write_context(self.engine_url, name=CONTEXT_NAME)
            except (BerthError, OSError) as err:
                log.warning("could not write the docker context: %s", err)

    def _start_shares(self, machine: Machine) -> None:
        """Shared folders (docs/shares.md): 9p ones are checked, SFTP ones mounted now.

        A share that fails is reported in ``status_json()["shares"]``, never raised.
        """
        with self._lock:
            if self.shares is not None or self.ssh is None or not machine.spec.shares:
                return
            shares = ShareManager(self.ssh, machine.spec, machine.host.os)
            self.shares = shares
        shares.start()

    @staticmethod
    def _guest_has_agent(ssh: GuestSSH) -> bool:
        try:
            # The image ships one (its socket may come later: the client keeps trying).
            return ssh.exec(["test", "-f", AGENT_PATH], timeout=30).rc == 0
        except BerthError as err:
            log.warning("could not look for the guest agent: %s", err)
            return False

    def _close_data_plane(self) -> None:
        with self._lock:
            agent, self.agent = self.agent, None
            shares, self.shares = self.shares, None
            ports, self.ports = self.ports, None
            relay, self.relay = self.relay, None
            ssh, self.ssh = self.ssh, None
            engine_ssh, self.engine_ssh = self.engine_ssh, None
        if shares is not None:
            shares.stop()
        if agent is not None:
            agent.stop()
        if ports is not None:
            ports.stop()
        if relay is not None:
            relay.stop()
        for session in (engine_ssh, ssh):
            if session is not None:
                session.close()

    def status_json(self) -> dict[str, Any]:
        status = self.machine.status()
        spec = self.machine.spec if self.machine.exists else None
        doc = status_to_json(status)
        doc["socket"] = self.engine_endpoint if self.relay is not None else ""
        doc["docker_host"] = self.engine_url if self.relay is not None else ""
        doc["spec"] = spec_to_json(spec) if spec else None
        doc["relay_connections"] = self.relay.active_connections if self.relay else 0
        ports = self.ports
        doc["ports"] = [asdict(p) for p in ports.table()] if ports is not None else []
        agent = self.agent
        if agent is not None:
            doc["agent"] = agent.snapshot().to_json()
            del doc["agent"]["ports"]  # the forwarded table above is what the user needs
        else:
            doc["agent"] = None
        shares = self.shares
        doc["shares"] = [asdict(s) for s in shares.table()] if shares is not None else []
        return doc


def stage_to_json(record: StageRecord) -> dict[str, Any]:
    return {
        "stage": record.stage.value,
        "state": record.state.value,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "duration": record.duration,
        "guest_uptime": record.guest_uptime,
        "detail": record.detail,
    }


def status_to_json(status: MachineStatus) -> dict[str, Any]:
    timeline = status.timeline
    return {
        "name": status.name,
        "state": status.state.value,
        "accelerator": status.accelerator.value if status.accelerator else None,
        "accelerator_reason": status.accel_reason,
        "slow_mode": status.slow_mode,
        "pid": status.pid,
        "uptime_s": status.uptime_s,
        "ssh_port": status.ssh_port,
        "timeline": [stage_to_json(r) for r in timeline.stages] if timeline else [],
        "resources": {"qemu_rss_bytes": status.rss_bytes, "qemu_cpu_percent": status.cpu_percent},
        "detail": status.detail,
    }
