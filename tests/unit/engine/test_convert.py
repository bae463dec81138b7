"""convert.py on API JSON recorded from Docker 20.10 and Podman 4.3 (tests/unit/engine/data),
plus hand-made odd and missing fields.

The recordings were captured once from the CI engines (containers created, paused,
exited and never started; a published port on Podman; a user network with a subnet).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vm_backend.engine import convert
from vm_backend.engine.models import ContainerState, EngineKind, Health

DATA = Path(__file__).parent / "data"
ENGINES = ("docker", "podman")


def load(engine: str, what: str) -> Any:
    return json.loads((DATA / f"{engine}_{what}.json").read_text())


@pytest.mark.parametrize("engine", ENGINES)
def test_containers(engine: str) -> None:
    by_name = {c.name: c for c in map(convert.container_from_list, load(engine, "containers"))}
    prefix = f"berth-capture-{engine}-"
    assert by_name[prefix + "0"].state is ContainerState.RUNNING
    assert by_name[prefix + "1"].state is ContainerState.PAUSED
    assert by_name[prefix + "2"].state is ContainerState.EXITED
    assert by_name[prefix + "3"].state is ContainerState.CREATED
    web = by_name[prefix + "0"]
    assert web.compose_project == "demo" and web.compose_service == "web"
    assert web.labels["berth.test"] == "engine"
    assert web.command == "sleep 300"
    assert len(web.id) == 64 and web.created > 1.7e9
    assert web.image.endswith("berth-test/busybox:latest")
    assert all(not c.name.startswith("/") for c in by_name.values())
    assert "exit 3" in by_name[prefix + "2"].command
    if engine == "docker":
        assert by_name[prefix + "0"].networks == ("none",)
    else:
        # Podman lists no network for --network none, and its port publishes.
        assert by_name[prefix + "0"].networks == ()
        httpd = by_name[prefix + "4"]
        assert [str(p) for p in httpd.ports] == ["127.0.0.1:18089->80/tcp"]


@pytest.mark.parametrize("engine", ENGINES)
def test_images(engine: str) -> None:
    (img,) = [convert.image_from_list(i) for i in load(engine, "images")]
    assert img.id.startswith("sha256:") and img.size > 1_000_000 and not img.dangling
    assert any(t.endswith("berth-test/busybox:latest") for t in img.tags)
    counted = convert.image_from_list(load(engine, "images")[0], {img.id: 3})
    assert counted.containers == 3
    if engine == "docker":
        assert img.containers == -1  # Docker's list does not count unless asked
    else:
        assert img.digests  # Podman lists repo digests for local images too


@pytest.mark.parametrize("engine", ENGINES)
def test_volumes_networks(engine: str) -> None:
    (vol,) = [convert.volume_from_api(v) for v in load(engine, "volumes")]
    assert vol.name == f"berth-capture-vol-{engine}" and vol.labels == {"berth.test": "engine"}
    assert vol.driver == "local" and vol.size == -1
    assert convert.volume_from_api(load(engine, "volumes")[0], {vol.name: 42}).size == 42
    (net,) = [convert.network_from_api(n) for n in load(engine, "network_inspect")]
    third = "9" if engine == "docker" else "10"
    assert net.subnets == (f"10.231.{third}.0/24",) and net.gateways == (f"10.231.{third}.1",)
    if engine == "docker":
        # The container was connected but never started: Docker has no endpoint yet.
        assert net.attachments == ()
    else:
        assert [a.container_name for a in net.attachments] == [f"berth-capture-{engine}-4"]
        assert net.attachments[0].ipv4.startswith(f"10.231.{third}.")
    listed = {n["Name"]: n for n in load(engine, "networks_list")}
    if engine == "docker":
        # Docker's list has an empty Containers map: the client must inspect.
        assert listed[f"berth-capture-net-{engine}"]["Containers"] == {}
    else:
        assert listed[f"berth-capture-net-{engine}"]["Containers"]


@pytest.mark.parametrize("engine", ENGINES)
def test_stats_info_df(engine: str) -> None:
    s = convert.stats_from_api("abc", load(engine, "stats"))
    assert s.container_id == "abc" and s.mem_usage > 0 and s.mem_limit > s.mem_usage
    assert s.pids == 1 and 0.0 <= s.cpu_percent < 200.0 and s.read.startswith("20")
    kind = EngineKind.DOCKER if engine == "docker" else EngineKind.PODMAN
    info = convert.info_from_api(load(engine, "info"), load(engine, "version"), kind)
    assert info.kind is kind and info.ncpu >= 1 and info.version and info.api_version == "1.41"
    assert info.os == "linux" and info.arch == "amd64"
    df = convert.disk_usage_from_api(load(engine, "df"))
    raw = load(engine, "df")
    assert df.containers.total == len(raw["Containers"])
    assert df.containers.active == sum(c["State"] == "running" for c in raw["Containers"])
    assert df.volume_sizes == {f"berth-capture-vol-{engine}": 0}
    assert df.images.total == len(raw["Images"])
    if engine == "podman":
        assert df.containers.size == sum(c["SizeRw"] for c in raw["Containers"])


@pytest.mark.parametrize("engine", ENGINES)
def test_events(engine: str) -> None:
    events = [convert.event_from_api(e) for e in load(engine, "events")]
    assert all(e.time_nano > 1.7e18 for e in events)
    creates = [e for e in events if e.type == "container" and e.action == "create"]
    assert creates and all(len(e.id) == 64 and e.name.startswith("berth-capture") for e in creates)
    gone = {"docker": "destroy", "podman": "remove"}[engine]
    assert any(e.action == gone for e in events)


def test_container_odd_and_missing_fields() -> None:
    c = convert.container_from_list({"Id": "abcdef0123456789"})
    assert c.name == "abcdef012345" and c.state is ContainerState.UNKNOWN
    assert c.ports == () and c.labels == {} and c.created == 0.0
    c = convert.container_from_list({
        "Id": "x", "Names": ["/web"], "State": "stopped", "Command": ["a", "b"],
        "Status": "Up 2 minutes (unhealthy)", "Labels": {"k": None},
        "Ports": [{"PrivatePort": 80, "PublicPort": 8080, "IP": "0.0.0.0", "Type": "tcp"},
                  {"PrivatePort": 80, "PublicPort": 8080, "IP": "0.0.0.0", "Type": "tcp"},
                  "garbage", {"PrivatePort": "53", "Type": "udp"}],
        "Created": "2024-05-01T10:00:00.123456789Z",
        "NetworkSettings": None,
    })
    assert c.name == "web" and c.state is ContainerState.EXITED  # Podman's "stopped"
    assert c.command == "a b" and c.health is Health.UNHEALTHY and c.labels == {"k": ""}
    assert len(c.ports) == 2 and c.ports[0].container_port == 53
    assert c.created == pytest.approx(1714557600.123456)


@pytest.mark.parametrize("value,expected", [
    (None, 0.0), ("", 0.0), ("0001-01-01T00:00:00Z", 0.0), ("garbage", 0.0),
    (1714557600, 1714557600.0), ("2024-05-01T10:00:00Z", 1714557600.0),
    ("2024-05-01T12:00:00.5+02:00", 1714557600.5),
    ("2024-05-01T12:00:00.123456789+02:00", 1714557600.123456),
])
def test_parse_time(value: object, expected: float) -> None:
    assert convert.parse_time(value) == pytest.approx(expected)


def test_event_odd_fields() -> None:
    e = convert.event_from_api({"status": "health_status: healthy", "id": "abc", "time": 5})
    assert (e.action, e.detail, e.id, e.time_nano) == ("health_status", "healthy", "abc", 5 * 10**9)
    e = convert.event_from_api({"Type": "container", "Action": "exec_start: sh -c ls",
                                "Actor": "not a map"})
    assert (e.action, e.detail, e.id, e.name) == ("exec_start", "sh -c ls", "", "")


def test_stats_empty_and_odd() -> None:
    s = convert.stats_from_api("x", {})
    assert (s.cpu_percent, s.mem_usage, s.pids, s.net_rx) == (0.0, 0, 0, 0)
    s = convert.stats_from_api("x", {
        "cpu_stats": {"cpu_usage": {"total_usage": 200, "percpu_usage": [1, 1]},
                      "system_cpu_usage": 1000},
        "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 500},
        "memory_stats": {"usage": 100, "stats": {"inactive_file": 30}, "limit": 1000},
        "networks": {"eth0": {"rx_bytes": 5, "tx_bytes": 6}, "bad": None},
        "blkio_stats": {"io_service_bytes_recursive": [{"op": "Read", "value": 7},
                                                       {"op": "write", "value": 8}]},
    })
    assert s.cpu_percent == pytest.approx(100 / 500 * 2 * 100)
    assert (s.mem_usage, s.net_rx, s.net_tx, s.blk_read, s.blk_write) == (70, 5, 6, 7, 8)


def test_network_and_volume_odd_fields() -> None:
    n = convert.network_from_api({"Id": "n", "Name": "x", "IPAM": {"Config": None},
                                  "Containers": {"c": "bad", "d": {"Name": "dd"}}})
    assert n.subnets == () and [a.container_id for a in n.attachments] == ["d"]
    v = convert.volume_from_api({"Name": "v", "UsageData": {"Size": -1, "RefCount": 2}})
    assert (v.size, v.ref_count, v.driver) == (-1, 2, "local")
