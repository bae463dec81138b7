"""Engine API JSON -> frozen models. Tolerant: Docker and Podman differ in small ways."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from vm_backend.engine.models import (
    Container,
    ContainerState,
    DiskUsage,
    DiskUsageItem,
    EngineInfo,
    EngineKind,
    Event,
    Health,
    Image,
    Network,
    NetworkAttachment,
    PortBinding,
    StatsSample,
    Volume,
)


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _int(value: object, default: int = 0) -> int:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return default


def parse_time(value: object) -> float:
    """Epoch seconds from an int or an RFC 3339 string (nanoseconds allowed)."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value or "")
    if not text or text.startswith("0001-01-01"):
        return 0.0
    try:
        head, dot, rest = text.partition(".")
        if dot:
            # Trim fractional seconds to microseconds, keep the zone.
            # Only the digits right after the dot: the zone (+02:00) has digits too.
            digits = "".join(itertools.takewhile(str.isdigit, rest))
            zone = rest[len(digits) :]
            text = f"{head}.{digits[:6]}{zone}"
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _health_from_status(status: str) -> Health:
    low = status.lower()
    if "(healthy)" in low:
        return Health.HEALTHY
    if "(unhealthy)" in low:
        return Health.UNHEALTHY
    if "(health: starting)" in low:
        return Health.STARTING
    return Health.NONE


def container_from_list(raw: Mapping[str, Any]) -> Container:
    """A container from ``GET /containers/json``."""
    names = raw.get("Names") or []
    name = str(names[0]).lstrip("/") if names else str(raw.get("Id", ""))[:12]
    ports = []
    for p in raw.get("Ports") or []:
        if not isinstance(p, Mapping):
            continue
        public = p.get("PublicPort")
        ports.append(
            PortBinding(
                container_port=_int(p.get("PrivatePort")),
                protocol=str(p.get("Type") or "tcp"),
                host_ip=str(p.get("IP") or ""),
                host_port=_int(public) if public else None,
            )
        )
    # Docker lists a port once per host address family; show each binding once.
    unique = tuple(
        dict.fromkeys(
            sorted(ports, key=lambda b: (b.container_port, b.protocol, b.host_port or 0, b.host_ip))
        )
    )
    networks = tuple(sorted(((raw.get("NetworkSettings") or {}).get("Networks") or {}).keys()))
    status = str(raw.get("Status") or "")
    command = raw.get("Command")
    if isinstance(command, list):
        command = " ".join(str(c) for c in command)
    return Container(
        id=str(raw.get("Id", "")),
        name=name,
        image=str(raw.get("Image") or ""),
        image_id=str(raw.get("ImageID") or ""),
        command=str(command or ""),
        state=ContainerState.parse(raw.get("State")),
        status=status,
        health=_health_from_status(status),
        created=parse_time(raw.get("Created")),
        ports=unique,
        labels=_str_map(raw.get("Labels")),
        networks=networks,
    )


def image_from_list(raw: Mapping[str, Any], in_use: Mapping[str, int] | None = None) -> Image:
    image_id = str(raw.get("Id", ""))
    tags = tuple(t for t in (raw.get("RepoTags") or []) if t and t != "<none>:<none>")
    count = _int(raw.get("Containers"), -1)
    if in_use is not None:
        count = in_use.get(image_id, 0)
    return Image(
        id=image_id,
        tags=tags,
        digests=tuple(str(d) for d in (raw.get("RepoDigests") or [])),
        size=_int(raw.get("Size")),
        created=parse_time(raw.get("Created")),
        labels=_str_map(raw.get("Labels")),
        containers=count,
    )


def volume_from_api(raw: Mapping[str, Any], sizes: Mapping[str, int] | None = None) -> Volume:
    name = str(raw.get("Name", ""))
    usage = raw.get("UsageData") or {}
    size = _int(usage.get("Size"), -1) if isinstance(usage, Mapping) else -1
    refs = _int(usage.get("RefCount"), -1) if isinstance(usage, Mapping) else -1
    if sizes and name in sizes:
        size = sizes[name]
    return Volume(
        name=name,
        driver=str(raw.get("Driver") or "local"),
        mountpoint=str(raw.get("Mountpoint") or ""),
        created=str(raw.get("CreatedAt") or ""),
        scope=str(raw.get("Scope") or "local"),
        labels=_str_map(raw.get("Labels")),
        options=_str_map(raw.get("Options")),
        size=size,
        ref_count=refs,
    )


def network_from_api(raw: Mapping[str, Any]) -> Network:
    ipam = raw.get("IPAM") or {}
    configs = ipam.get("Config") or [] if isinstance(ipam, Mapping) else []
    subnets = tuple(
        str(c.get("Subnet")) for c in configs if isinstance(c, Mapping) and c.get("Subnet")
    )
    gateways = tuple(
        str(c.get("Gateway")) for c in configs if isinstance(c, Mapping) and c.get("Gateway")
    )
    attachments = []
    for cid, info in (raw.get("Containers") or {}).items():
        if not isinstance(info, Mapping):
            continue
        attachments.append(
            NetworkAttachment(
                container_id=str(cid),
                container_name=str(info.get("Name") or ""),
                ipv4=str(info.get("IPv4Address") or ""),
                ipv6=str(info.get("IPv6Address") or ""),
                mac=str(info.get("MacAddress") or ""),
            )
        )
    return Network(
        id=str(raw.get("Id", "")),
        name=str(raw.get("Name", "")),
        driver=str(raw.get("Driver") or ""),
        scope=str(raw.get("Scope") or "local"),
        internal=bool(raw.get("Internal")),
        subnets=subnets,
        gateways=gateways,
        created=str(raw.get("Created") or ""),
        attachments=tuple(sorted(attachments, key=lambda a: a.container_name)),
        labels=_str_map(raw.get("Labels")),
    )


def info_from_api(
    info: Mapping[str, Any], version: Mapping[str, Any], kind: EngineKind
) -> EngineInfo:
    return EngineInfo(
        kind=kind,
        name=str(info.get("Name") or ""),
        version=str(version.get("Version") or ""),
        api_version=str(version.get("ApiVersion") or ""),
        os=str(version.get("Os") or info.get("OSType") or ""),
        arch=str(version.get("Arch") or info.get("Architecture") or ""),
        kernel=str(info.get("KernelVersion") or version.get("KernelVersion") or ""),
        operating_system=str(info.get("OperatingSystem") or ""),
        ncpu=_int(info.get("NCPU")),
        mem_total=_int(info.get("MemTotal")),
        containers=_int(info.get("Containers")),
        containers_running=_int(info.get("ContainersRunning")),
        containers_paused=_int(info.get("ContainersPaused")),
        containers_stopped=_int(info.get("ContainersStopped")),
        images=_int(info.get("Images")),
        storage_driver=str(info.get("Driver") or ""),
        root_dir=str(info.get("DockerRootDir") or ""),
        cgroup_version=str(info.get("CgroupVersion") or ""),
        security_options=tuple(str(s) for s in info.get("SecurityOptions") or []),
    )


def disk_usage_from_api(raw: Mapping[str, Any]) -> DiskUsage:
    images = raw.get("Images") or []
    containers = raw.get("Containers") or []
    volumes = raw.get("Volumes") or []
    cache = raw.get("BuildCache") or []

    def _img_item() -> DiskUsageItem:
        # Shared layers are counted once overall: LayersSize is the true total.
        total = _int(raw.get("LayersSize")) or sum(_int(i.get("Size")) for i in images)
        active_imgs = [i for i in images if _int(i.get("Containers")) > 0]
        active_size = sum(_int(i.get("Size")) - _int(i.get("SharedSize"), 0) for i in active_imgs)
        return DiskUsageItem(
            "images", len(images), len(active_imgs), total, max(0, total - max(0, active_size))
        )

    running = [c for c in containers if str(c.get("State")) == "running"]
    ctr_size = sum(_int(c.get("SizeRw")) for c in containers)
    ctr_item = DiskUsageItem(
        "containers",
        len(containers),
        len(running),
        ctr_size,
        sum(_int(c.get("SizeRw")) for c in containers if str(c.get("State")) != "running"),
    )
    sizes: dict[str, int] = {}
    vol_total = 0
    vol_reclaim = 0
    vol_active = 0
    for v in volumes:
        usage = v.get("UsageData") or {}
        size = max(0, _int(usage.get("Size")))
        sizes[str(v.get("Name"))] = size
        vol_total += size
        if _int(usage.get("RefCount")) > 0:
            vol_active += 1
        else:
            vol_reclaim += size
    vol_item = DiskUsageItem("volumes", len(volumes), vol_active, vol_total, vol_reclaim)
    cache_size = sum(_int(c.get("Size")) for c in cache)
    cache_item = DiskUsageItem(
        "build cache",
        len(cache),
        sum(1 for c in cache if c.get("InUse")),
        cache_size,
        sum(_int(c.get("Size")) for c in cache if not c.get("InUse") and not c.get("Shared")),
    )
    return DiskUsage(_img_item(), ctr_item, vol_item, cache_item, sizes)


def event_from_api(raw: Mapping[str, Any]) -> Event:
    actor = raw.get("Actor") or {}
    attrs = _str_map(actor.get("Attributes") if isinstance(actor, Mapping) else {})
    action = str(raw.get("Action") or raw.get("status") or "")
    detail = ""
    if ": " in action:  # e.g. "exec_start: sh -c ..." or "health_status: healthy"
        action, detail = action.split(": ", 1)
    time_nano = _int(raw.get("timeNano")) or _int(raw.get("time")) * 1_000_000_000
    ident = str((actor.get("ID") if isinstance(actor, Mapping) else "") or raw.get("id") or "")
    return Event(
        type=str(raw.get("Type") or raw.get("type") or ""),
        action=action,
        id=ident,
        name=attrs.get("name", ""),
        time_nano=time_nano,
        attributes=attrs,
        detail=detail,
    )


def stats_from_api(container_id: str, raw: Mapping[str, Any]) -> StatsSample:
    cpu = raw.get("cpu_stats") or {}
    pre = raw.get("precpu_stats") or {}
    cpu_usage = cpu.get("cpu_usage") or {}
    pre_usage = pre.get("cpu_usage") or {}
    cpu_delta = _int(cpu_usage.get("total_usage")) - _int(pre_usage.get("total_usage"))
    sys_delta = _int(cpu.get("system_cpu_usage")) - _int(pre.get("system_cpu_usage"))
    online = _int(cpu.get("online_cpus")) or len(cpu_usage.get("percpu_usage") or []) or 1
    percent = 0.0
    if cpu_delta > 0 and sys_delta > 0:
        percent = cpu_delta / sys_delta * online * 100.0
    mem = raw.get("memory_stats") or {}
    mem_stats = mem.get("stats") or {}
    # Like the docker CLI: usage minus page cache (cgroup v2: inactive_file).
    cache = _int(mem_stats.get("inactive_file", mem_stats.get("total_inactive_file", 0)))
    usage = max(0, _int(mem.get("usage")) - cache)
    rx = tx = 0
    for net in (raw.get("networks") or {}).values():
        if isinstance(net, Mapping):
            rx += _int(net.get("rx_bytes"))
            tx += _int(net.get("tx_bytes"))
    blk_r = blk_w = 0
    for entry in (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = str(entry.get("op", "")).lower()
        if op == "read":
            blk_r += _int(entry.get("value"))
        elif op == "write":
            blk_w += _int(entry.get("value"))
    return StatsSample(
        container_id=container_id,
        read=str(raw.get("read") or ""),
        cpu_percent=percent,
        mem_usage=usage,
        mem_limit=_int(mem.get("limit")),
        net_rx=rx,
        net_tx=tx,
        blk_read=blk_r,
        blk_write=blk_w,
        pids=_int((raw.get("pids_stats") or {}).get("current")),
    )
