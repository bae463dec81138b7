"""The guest agent's codec and parsers (vm_backend/guest/agent.py), on the host."""

from __future__ import annotations

import pytest

from vm_backend.guest import agent as ga


def test_encode_decode_round_trip() -> None:
    msg = {"type": "hello", "protocol": 1, "host_time": 1.5, "text": "é\n"}
    line = ga.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert ga.decode(line) == msg


@pytest.mark.parametrize(
    "line", [b"not json", b"[1, 2]", b'{"no": "type"}', b'{"type": 3}', b"\xff\xfe"]
)
def test_decode_rejects_malformed_lines(line: bytes) -> None:
    with pytest.raises(ga.ProtocolError):
        ga.decode(line)


def test_encode_needs_a_type() -> None:
    with pytest.raises(ga.ProtocolError):
        ga.encode({"protocol": 1})


def test_line_reader_splits_and_keeps_partial_lines() -> None:
    reader = ga.LineReader()
    assert reader.feed(b'{"type":"a"}\n{"type"') == [b'{"type":"a"}']
    assert reader.feed(b':"b"}\n\n') == [b'{"type":"b"}']
    with pytest.raises(ga.ProtocolError):
        reader.feed(b"x" * (ga.MAX_LINE + 1))


def test_frames_round_trip_across_arbitrary_chunks() -> None:
    datagrams = [b"", b"a", b"x" * 65535, bytes(range(256))]
    stream = b"".join(ga.frame(d) for d in datagrams)
    reader = ga.FrameReader()
    got: list[bytes] = []
    for i in range(0, len(stream), 7):
        got += reader.feed(stream[i : i + 7])
    assert got == datagrams
    with pytest.raises(ga.ProtocolError):
        ga.frame(b"x" * 65536)


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 0F02000A:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1
   3: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 444 1
"""
_ZERO6 = "0" * 32
PROC_TCP6 = "\n".join(
    [
        "  sl  local_address remote_address st ...",
        f"   0: {_ZERO6}:1F92 {_ZERO6}:0000 0A 0:0 0:0 0 0 0 555 1",
        f"   1: {'0' * 24}01000000:1F93 {_ZERO6}:0000 0A 0:0 0:0 0 0 0 666 1",
    ]
)
PROC_UDP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2
   1: 0100007F:D431 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 888 2
"""


def test_parse_proc_net_tcp_listeners_on_wildcard_and_loopback_only() -> None:
    assert ga.parse_proc_net(PROC_TCP, "tcp") == [("0.0.0.0", 8080, 111), ("127.0.0.1", 22, 222)]
    assert ga.parse_proc_net(PROC_TCP6, "tcp") == [("::", 8082, 555), ("::1", 8083, 666)]


def test_parse_proc_net_udp_unconnected_sockets_only() -> None:
    assert ga.parse_proc_net(PROC_UDP, "udp") == [("0.0.0.0", 53, 777)]


def _container(
    cid: str, state: str, ports: list[dict[str, object]], created: int = 1
) -> dict[str, object]:
    return {
        "Id": cid,
        "Names": [f"/{cid}-name"],
        "State": state,
        "Created": created,
        "Ports": ports,
    }


def test_ports_from_containers() -> None:
    containers = [
        _container(
            "a" * 64,
            "running",
            [
                {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                {"PrivatePort": 81, "Type": "tcp"},  # exposed, not published
                {"IP": "127.0.0.1", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"},
            ],
        ),
        _container(
            "b" * 64,
            "exited",
            [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 9090, "Type": "tcp"}],
        ),
        _container(
            "c" * 64, "paused", [{"IP": "", "PrivatePort": 80, "PublicPort": 9091, "Type": "tcp"}]
        ),
    ]
    ports = ga.ports_from_containers(containers)
    assert [(p["protocol"], p["port"], p["container_port"]) for p in ports] == [
        ("udp", 5353, 53),
        ("tcp", 8080, 80),
        ("tcp", 9091, 80),
    ]
    assert ports[0]["host_ip"] == "127.0.0.1"
    assert ports[1]["container_name"] == "a" * 64 + "-name"
    assert all(p["source"] == "engine" for p in ports)


def test_container_id_from_cgroup() -> None:
    cid = "0123456789abcdef" * 4
    assert ga.container_id_from_cgroup(f"0::/system.slice/docker-{cid}.scope\n") == cid
    assert ga.container_id_from_cgroup(f"0::/docker/{cid}\n") == cid
    assert ga.container_id_from_cgroup("0::/\n") == ""


def test_parse_meminfo_and_cpu() -> None:
    mem = ga.parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\n")
    assert mem == {"total_bytes": 1024000, "available_bytes": 409600, "used_bytes": 614400}
    busy, total = ga.parse_cpu("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 1 1 1 1 1 1 1\n")
    assert (busy, total) == (20, 100)


def test_check_clock_sets_the_time_only_beyond_the_threshold() -> None:
    calls: list[float] = []
    agent = ga.Agent(set_clock=calls.append)
    import time

    assert abs(agent.check_clock(time.time(), 0.0)) < ga.CLOCK_THRESHOLD_S
    assert calls == []
    offset = agent.check_clock(time.time() + 3600, 0.0)
    assert -3601 < offset < -3599
    assert len(calls) == 1 and abs(calls[0] - (time.time() + 3600)) < 1
    assert agent.clock_corrections == 1
    # The round trip's half is added to the host's time.
    agent.check_clock(time.time() - 1.0, 2.0)
    assert len(calls) == 1
    # 300 ms off: noise within a 1 s round trip's uncertainty, corrected with a short one.
    agent.check_clock(time.time() - 0.5 + 0.3, 1.0)
    assert len(calls) == 1
    agent.check_clock(time.time() - 0.005 + 0.3, 0.01)
    assert len(calls) == 1  # under a second: a second heartbeat must agree first
    agent.check_clock(time.time() - 0.005 + 0.3, 0.01)
    assert len(calls) == 2
    # A one-off delay (guest looks 400 ms ahead), then the other way: never corrected.
    agent.check_clock(time.time() - 0.4, 0.0)
    agent.check_clock(time.time() + 0.4, 0.0)
    agent.check_clock(time.time() - 0.4, 0.0)
    assert len(calls) == 2
