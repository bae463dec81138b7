"""specs.py parsers and RunRequest: valid inputs parse to the expected values, and any
text either parses or raises InputError (property-tested with hypothesis)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vm_backend.engine import specs
from vm_backend.engine.run import RunRequest
from vm_backend.engine.specs import ImageRef, PortSpec, RestartPolicy, VolumeSpec
from vm_backend.errors import InputError

PARSERS: list[Callable[[str], Any]] = [
    specs.parse_image_ref, specs.parse_port_spec, specs.parse_env, specs.parse_volume_spec,
    specs.parse_memory, specs.parse_cpus, specs.parse_container_name,
    specs.parse_restart_policy, specs.parse_command,
]
# Text that looks like what users type, plus anything at all.
TOKENS = ["0", "1", "80", "8080", "65535", "99999", ":", "::", ".", "-", "/", "[", "]",
          "::1", "127.0.0.1", "udp", "tcp", "a", "Z", "@", "sha256", "=", ",", "~", "ro",
          "rw", "m", "g", "GiB", " ", "'", '"', "\\", "on-failure", "latest", "\x00", "é"]
SPEC_TEXT = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(TOKENS), max_size=12).map("".join),
)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@given(text=SPEC_TEXT)
@settings(max_examples=150, deadline=None)
def test_parsers_raise_only_input_error(parser: Callable[[str], Any], text: str) -> None:
    try:
        parser(text)
    except InputError as err:
        assert err.message


# ---- image references ----------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("alpine", ImageRef("", "alpine", "latest", "")),
    ("nginx:1.27", ImageRef("", "nginx", "1.27", "")),
    ("library/nginx", ImageRef("", "library/nginx", "latest", "")),
    ("docker.io/library/nginx:1", ImageRef("docker.io", "library/nginx", "1", "")),
    ("localhost:5000/x/y:dev", ImageRef("localhost:5000", "x/y", "dev", "")),
    ("localhost/x", ImageRef("localhost", "x", "latest", "")),
    ("[::1]:5000/x", ImageRef("[::1]:5000", "x", "latest", "")),
    ("ghcr.io/a/b@sha256:" + "a" * 64, ImageRef("ghcr.io", "a/b", "", "sha256:" + "a" * 64)),
    ("a/b:t@sha256:" + "0" * 64, ImageRef("", "a/b", "t", "sha256:" + "0" * 64)),
    ("  busybox  ", ImageRef("", "busybox", "latest", "")),
])
def test_image_ref_valid(text: str, expected: ImageRef) -> None:
    ref = specs.parse_image_ref(text)
    assert ref == expected
    assert specs.parse_image_ref(str(ref)) == ref


@pytest.mark.parametrize("text", [
    "", "  ", "Nginx", "nginx:", "nginx:-x", ":tag", "a//b", "a/b/", "-a", "a b",
    "nginx@sha256:short", "x" * 500, "UPPER/case", "a:b:c",
])
def test_image_ref_invalid(text: str) -> None:
    with pytest.raises(InputError):
        specs.parse_image_ref(text)


@given(
    path=st.lists(st.from_regex(r"\A[a-z0-9]+([._-][a-z0-9]+)?\Z"), min_size=1, max_size=3),
    tag=st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z"),
)
@settings(max_examples=60, deadline=None)
def test_image_ref_round_trip(path: list[str], tag: str) -> None:
    text = "/".join(path) + ":" + tag
    ref = specs.parse_image_ref(text)
    assert ref.tag == tag and str(ref) == text


# ---- ports ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("80", [PortSpec(80)]),
    ("8080:80", [PortSpec(80, "tcp", "", 8080)]),
    ("127.0.0.1:8080:80/udp", [PortSpec(80, "udp", "127.0.0.1", 8080)]),
    ("[::1]:8080:80", [PortSpec(80, "tcp", "::1", 8080)]),
    ("127.0.0.1::80", [PortSpec(80, "tcp", "127.0.0.1", None)]),
    ("53/UDP", [PortSpec(53, "udp")]),
    ("8000-8002:80-82", [PortSpec(80, "tcp", "", 8000), PortSpec(81, "tcp", "", 8001),
                         PortSpec(82, "tcp", "", 8002)]),
    ("7000-7001", [PortSpec(7000), PortSpec(7001)]),
])
def test_port_valid(text: str, expected: list[PortSpec]) -> None:
    assert specs.parse_port_spec(text) == expected
    if len(expected) == 1:
        assert specs.parse_port_spec(str(expected[0])) == expected


@pytest.mark.parametrize("text", [
    "", "0", "65536", "80:0", "x", "80/icmp", "1:2:3:4", "8000-8002:80", "90-80",
    "1-2000", "300.1.1.1:80:80", "[::1:80:80", "::1:8080:80", "80:", ":80:",
])
def test_port_invalid(text: str) -> None:
    with pytest.raises(InputError):
        specs.parse_port_spec(text)


@given(host=st.integers(1, 65535), ctr=st.integers(1, 65535),
       ip=st.sampled_from(["", "127.0.0.1", "0.0.0.0", "::1"]),
       proto=st.sampled_from(["tcp", "udp", "sctp"]))
def test_port_round_trip(host: int, ctr: int, ip: str, proto: str) -> None:
    spec = PortSpec(ctr, proto, ip, host)
    assert specs.parse_port_spec(str(spec)) == [spec]


def test_ports_for_api_groups_bindings() -> None:
    ports = specs.parse_port_spec("8080:80") + specs.parse_port_spec("127.0.0.1:9090:80")
    assert specs.ports_for_api(ports) == {"80/tcp": [("", 8080), ("127.0.0.1", 9090)]}


# ---- env, volumes ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("A=1", ("A", "1")), ("A=", ("A", "")), ("A=b=c", ("A", "b=c")),
    (" KEY =v", ("KEY", "v")), ("lower.dot-key=x y", ("lower.dot-key", "x y")),
])
def test_env_valid(text: str, expected: tuple[str, str]) -> None:
    assert specs.parse_env(text) == expected


@pytest.mark.parametrize("text", ["", "A", "=1", "A B=1", "A=\x00"])
def test_env_invalid(text: str) -> None:
    with pytest.raises(InputError):
        specs.parse_env(text)


@pytest.mark.parametrize("text,expected", [
    ("/data", VolumeSpec("", "/data")),
    ("/host:/ctr", VolumeSpec("/host", "/ctr", False, True)),
    ("/host:/ctr:ro", VolumeSpec("/host", "/ctr", True, True)),
    ("name:/ctr", VolumeSpec("name", "/ctr", False, False)),
    ("name:/ctr:rw,z", VolumeSpec("name", "/ctr", False, False)),
    ("~/src:/src", VolumeSpec("~/src", "/src", False, True)),
    ("C:\\Users\\me:/w", VolumeSpec("C:\\Users\\me", "/w", False, True)),
    ("c:/src:/src:ro", VolumeSpec("c:/src", "/src", True, True)),
    ("v:/data", VolumeSpec("v", "/data", False, False)),  # a one-letter volume, no drive
    ("v:/data:ro", VolumeSpec("v", "/data", True, False)),
])
def test_volume_valid(text: str, expected: VolumeSpec) -> None:
    assert specs.parse_volume_spec(text) == expected
    assert specs.parse_volume_spec(str(expected)) == expected


@pytest.mark.parametrize("text", [
    "", "relative", "a:b", "/a:/b:xx", "/a:/b:ro,rw", "bad name:/x", "/a:/b:/c:ro",
])
def test_volume_invalid(text: str) -> None:
    with pytest.raises(InputError):
        specs.parse_volume_spec(text)


# ---- limits, restart, names, commands -------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("512m", 512 * 2**20), ("1g", 2**30), ("1.5GiB", int(1.5 * 2**30)), ("6m", 6 * 2**20),
    ("10485760", 10485760), ("2 G", 2 * 2**30), ("64MB", 64 * 2**20), ("1t", 2**40),
])
def test_memory_valid(text: str, expected: int) -> None:
    assert specs.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "1k", "5m", "abc", "-1g", "1x", "99999999p", "1e9"])
def test_memory_invalid(text: str) -> None:
    with pytest.raises(InputError):
        specs.parse_memory(text)


@pytest.mark.parametrize("text,expected", [("1", 10**9), ("0.5", 5 * 10**8), (" 2 ", 2 * 10**9)])
def test_cpus_valid(text: str, expected: int) -> None:
    assert specs.parse_cpus(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "nan", "inf", "x", "2000"])
def test_cpus_invalid(text: str) -> None:
    with pytest.raises(InputError):
        specs.parse_cpus(text)
    with pytest.raises(InputError):
        specs.parse_cpus("3", host_cpus=2)


@pytest.mark.parametrize("text,expected", [
    ("no", RestartPolicy("no")), ("", RestartPolicy("no")), ("always", RestartPolicy("always")),
    ("unless-stopped", RestartPolicy("unless-stopped")),
    ("on-failure", RestartPolicy("on-failure")), ("on-failure:3", RestartPolicy("on-failure", 3)),
])
def test_restart_valid(text: str, expected: RestartPolicy) -> None:
    policy = specs.parse_restart_policy(text)
    assert policy == expected
    assert specs.parse_restart_policy(str(policy)) == policy


@pytest.mark.parametrize("text", ["never", "always:3", "on-failure:x", "on-failure:-1",
                                  "on-failure:99999"])
def test_restart_invalid(text: str) -> None:
    with pytest.raises(InputError):
        specs.parse_restart_policy(text)


def test_restart_for_api() -> None:
    assert RestartPolicy("no").for_api() is None
    assert RestartPolicy("on-failure", 3).for_api() == {"Name": "on-failure",
                                                        "MaximumRetryCount": 3}


@pytest.mark.parametrize("text,expected", [("", ""), ("web", "web"), ("/web-1.a_b", "web-1.a_b")])
def test_name_valid(text: str, expected: str) -> None:
    assert specs.parse_container_name(text) == expected


@pytest.mark.parametrize("text", ["-x", "_x", "a b", "a/b", "é", "a:b"])
def test_name_invalid(text: str) -> None:
    with pytest.raises(InputError):
        specs.parse_container_name(text)


def test_command() -> None:
    assert specs.parse_command("sh -c 'echo $HOME; ls'") == ["sh", "-c", "echo $HOME; ls"]
    assert specs.parse_command("") == []
    with pytest.raises(InputError):
        specs.parse_command("echo 'unterminated")


@given(st.lists(st.text(min_size=1).filter(lambda s: "\x00" not in s), max_size=5))
@settings(max_examples=60, deadline=None)
def test_command_round_trip(argv: list[str]) -> None:
    assert specs.parse_command(shlex.join(argv)) == argv


# ---- RunRequest -----------------------------------------------------------------------------
def _flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_docker_run_argv_round_trips_flags() -> None:
    req = RunRequest(
        image="nginx:1.27", name="web", command=("nginx", "-g", "daemon off;"),
        entrypoint=("/docker-entrypoint.sh",),
        ports=tuple(specs.parse_port_spec("127.0.0.1:8080:80") + specs.parse_port_spec("53/udp")),
        env=(("A", "1"), ("B", "x y")),
        volumes=(specs.parse_volume_spec("/srv:/usr/share/nginx/html:ro"),
                 specs.parse_volume_spec("/cache")),
        restart=specs.parse_restart_policy("on-failure:3"),
        memory=specs.parse_memory("512m"), nano_cpus=specs.parse_cpus("1.5"),
        network="none", auto_remove=True, tty=True, stdin_open=True, workdir="/w",
        user="1000:1000", labels=(("a.b", "c"),),
    )
    argv = req.docker_run_argv()
    assert argv[:3] == ["docker", "run", "-d"]
    assert _flag_values(argv, "--name") == ["web"]
    assert {"--rm", "-t", "-i"} <= set(argv)
    ports = [specs.parse_port_spec(p)[0] for p in _flag_values(argv, "-p")]
    assert tuple(ports) == req.ports
    assert [specs.parse_env(e) for e in _flag_values(argv, "-e")] == list(req.env)
    assert tuple(specs.parse_volume_spec(v) for v in _flag_values(argv, "-v")) == req.volumes
    assert specs.parse_restart_policy(_flag_values(argv, "--restart")[0]) == req.restart
    assert specs.parse_memory(_flag_values(argv, "--memory")[0]) == req.memory
    assert specs.parse_cpus(_flag_values(argv, "--cpus")[0]) == req.nano_cpus
    assert _flag_values(argv, "--network") == ["none"]
    assert _flag_values(argv, "--workdir") == ["/w"]
    assert _flag_values(argv, "--user") == ["1000:1000"]
    assert _flag_values(argv, "--label") == ["a.b=c"]
    assert _flag_values(argv, "--entrypoint") == ["/docker-entrypoint.sh"]
    assert argv[-4:] == ["nginx:1.27", "nginx", "-g", "daemon off;"]
    assert shlex.split(req.docker_run_command()) == argv


def test_create_kwargs() -> None:
    req = RunRequest(image="x", ports=tuple(specs.parse_port_spec("8080:80")),
                     volumes=(specs.parse_volume_spec("v:/data:ro"),
                              specs.parse_volume_spec("/anon")),
                     memory=2**30, restart=RestartPolicy("always"))
    kw = req.create_kwargs()
    hc = kw["host_config"]
    assert hc["port_bindings"] == {"80/tcp": [("", 8080)]}
    assert hc["binds"] == {"v": {"bind": "/data", "mode": "ro"}}
    assert hc["mem_limit"] == 2**30 and hc["restart_policy"] == {"Name": "always"}
    assert kw["ports"] == [(80, "tcp")] and kw["anonymous"] == ["/anon"]
    assert kw["volumes"] == ["/data", "/anon"]


@given(mem=st.integers(6, 10**6))
def test_memory_in_argv_is_exact(mem: int) -> None:
    req = RunRequest(image="x", memory=mem * 2**20)
    assert specs.parse_memory(_flag_values(req.docker_run_argv(), "--memory")[0]) == req.memory
