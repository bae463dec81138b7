"""Frozen value objects that cross the engine layer's boundary.

Nothing outside :mod:`vm_backend.engine.client` sees a docker-py object or a raw API dict:
the client converts every answer into one of these. Converters never raise on odd input
from an engine (Podman and Docker differ in small ways); missing fields get neutral values.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"


class EngineKind(enum.Enum):
    DOCKER = "docker"
    PODMAN = "podman"
    UNKNOWN = "unknown"


class EndpointSource(enum.Enum):
    """Where an endpoint was found, in the order a docker user expects them.

    The rootful/rootless members are Linux's; Docker Desktop and the podman machine are
    macOS's and Windows's; the shared /var/run/docker.sock link, Colima, OrbStack and
    Rancher Desktop are macOS's. The values are the ``source`` of ``berth engines --json``.
    """

    DOCKER_HOST = "DOCKER_HOST"
    CONTEXT = "docker context"
    DOCKER_ROOTFUL = "docker (rootful)"
    DOCKER_ROOTLESS = "docker (rootless)"
    PODMAN_ROOTFUL = "podman (rootful)"
    PODMAN_ROOTLESS = "podman (rootless)"
    DOCKER_DESKTOP = "Docker Desktop"
    SHARED_DOCKER_SOCKET = "/var/run/docker.sock"
    PODMAN_MACHINE = "podman machine"
    COLIMA = "Colima"
    ORBSTACK = "OrbStack"
    RANCHER_DESKTOP = "Rancher Desktop"
    BERTH_VM = "berth VM"
    MANUAL = "added by hand"


class EndpointStatus(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    PERMISSION_DENIED = "permission denied"
    NOT_ANSWERING = "not answering"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Endpoint:
    """One place an engine may answer, and what we found there."""

    name: str
    url: str
    source: EndpointSource
    status: EndpointStatus
    kind: EngineKind = EngineKind.UNKNOWN
    version: str = ""
    api_version: str = ""
    os: str = ""
    arch: str = ""
    reason: str = ""
    hint: str = ""

    @property
    def usable(self) -> bool:
        return self.status is EndpointStatus.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "source": self.source.value,
            "status": self.status.value,
            "kind": self.kind.value,
            "version": self.version,
            "api_version": self.api_version,
            "os": self.os,
            "arch": self.arch,
            "reason": self.reason,
            "hint": self.hint,
        }


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: object) -> ContainerState:
        text = str(value or "").lower()
        # Podman reports "configured"/"initialized"/"stopped" where Docker says created/exited.
        aliases = {"configured": "created", "initialized": "created", "stopped": "exited"}
        text = aliases.get(text, text)
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN


class Health(enum.Enum):
    NONE = ""
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class PortBinding:
    """A container port and, when published, where it appears on the host."""

    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_port: int | None = None

    def __str__(self) -> str:
        inner = f"{self.container_port}/{self.protocol}"
        if self.host_port is None:
            return inner
        ip = self.host_ip if self.host_ip not in ("", "0.0.0.0", "::") else ""
        return f"{ip + ':' if ip else ''}{self.host_port}->{inner}"


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str
    image_id: str
    command: str
    state: ContainerState
    status: str
    health: Health
    created: float
    ports: tuple[PortBinding, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    networks: tuple[str, ...] = ()

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def compose_project(self) -> str:
        return self.labels.get(COMPOSE_PROJECT_LABEL, "")

    @property
    def compose_service(self) -> str:
        return self.labels.get(COMPOSE_SERVICE_LABEL, "")

    @property
    def running(self) -> bool:
        return self.state in (ContainerState.RUNNING, ContainerState.RESTARTING)

    def to_json(self) -> dict[str, Any]:
        """The stable ``--json`` shape (documented in docs/cli.md)."""
        return {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "image_id": self.image_id,
            "command": self.command,
            "state": self.state.value,
            "status": self.status,
            "health": self.health.value,
            "created": _iso(self.created),
            "ports": [
                {
                    "container_port": p.container_port,
                    "protocol": p.protocol,
                    "host_ip": p.host_ip,
                    "host_port": p.host_port,
                }
                for p in self.ports
            ],
            "labels": dict(self.labels),
            "networks": list(self.networks),
            "compose_project": self.compose_project,
        }


@dataclass(frozen=True)
class Image:
    id: str
    tags: tuple[str, ...]
    digests: tuple[str, ...]
    size: int
    created: float
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    containers: int = -1  # -1: the engine did not say

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def dangling(self) -> bool:
        return not self.tags or all(t == "<none>:<none>" for t in self.tags)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tags": list(self.tags),
            "digests": list(self.digests),
            "size": self.size,
            "created": _iso(self.created),
            "containers": self.containers,
            "dangling": self.dangling,
            "labels": dict(self.labels),
        }


@dataclass(frozen=True)
class Volume:
    name: str
    driver: str
    mountpoint: str
    created: str
    scope: str = "local"
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    options: Mapping[str, str] = field(default_factory=dict, hash=False)
    size: int = -1  # -1: unknown (only `system df` reports it)
    ref_count: int = -1

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "driver": self.driver,
            "mountpoint": self.mountpoint,
            "created": self.created,
            "scope": self.scope,
            "labels": dict(self.labels),
            "size": self.size,
            "ref_count": self.ref_count,
        }


@dataclass(frozen=True)
class NetworkAttachment:
    container_id: str
    container_name: str
    ipv4: str
    ipv6: str
    mac: str


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    driver: str
    scope: str
    internal: bool
    subnets: tuple[str, ...]
    gateways: tuple[str, ...]
    created: str
    attachments: tuple[NetworkAttachment, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "driver": self.driver,
            "scope": self.scope,
            "internal": self.internal,
            "subnets": list(self.subnets),
            "gateways": list(self.gateways),
            "created": self.created,
            "containers": [
                {"id": a.container_id, "name": a.container_name, "ipv4": a.ipv4, "ipv6": a.ipv6}
                for a in self.attachments
            ],
            "labels": dict(self.labels),
        }


@dataclass(frozen=True)
class EngineInfo:
    kind: EngineKind
    name: str
    version: str
    api_version: str
    os: str
    arch: str
    kernel: str
    operating_system: str
    ncpu: int
    mem_total: int
    containers: int
    containers_running: int
    containers_paused: int
    containers_stopped: int
    images: int
    storage_driver: str
    root_dir: str
    cgroup_version: str
    security_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiskUsageItem:
    """One kind of object in ``system df``: how many, how big, how much can go."""

    kind: str
    total: int
    active: int
    size: int
    reclaimable: int


@dataclass(frozen=True)
class DiskUsage:
    images: DiskUsageItem
    containers: DiskUsageItem
    volumes: DiskUsageItem
    build_cache: DiskUsageItem
    volume_sizes: Mapping[str, int] = field(default_factory=dict, hash=False)

    @property
    def items(self) -> tuple[DiskUsageItem, ...]:
        return (self.images, self.containers, self.volumes, self.build_cache)


@dataclass(frozen=True)
class Event:
    """One engine event, normalised across Docker and Podman."""

    type: str  # container, image, volume, network, ...
    action: str  # start, die, create, destroy, ... (health_status: healthy -> "health_status")
    id: str
    name: str
    time_nano: int
    attributes: Mapping[str, str] = field(default_factory=dict, hash=False)
    detail: str = ""  # the text after ": " in actions like "exec_start: sh"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "action": self.action,
            "id": self.id,
            "name": self.name,
            "time_nano": self.time_nano,
            "attributes": dict(self.attributes),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class StatsSample:
    """One stats reading, with CPU already turned into a percentage of one core."""

    container_id: str
    read: str
    cpu_percent: float
    mem_usage: int
    mem_limit: int
    net_rx: int
    net_tx: int
    blk_read: int
    blk_write: int
    pids: int

    @property
    def mem_percent(self) -> float:
        return 100.0 * self.mem_usage / self.mem_limit if self.mem_limit else 0.0


@dataclass(frozen=True)
class LogEntry:
    stream: str  # "stdout" or "stderr"
    text: str
    timestamp: str | None = None


@dataclass(frozen=True)
class TopResult:
    titles: tuple[str, ...]
    processes: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class HistoryEntry:
    id: str
    created: float
    created_by: str
    size: int
    tags: tuple[str, ...]
    comment: str


@dataclass(frozen=True)
class PullProgress:
    """One line of a pull: a layer's status and bytes, or an overall status."""

    layer: str
    status: str
    current: int = 0
    total: int = 0
    error: str = ""


@dataclass(frozen=True)
class PruneResult:
    deleted: tuple[str, ...]
    space_reclaimed: int


def _iso(epoch: float) -> str:
    if epoch <= 0:
        return ""
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
