"""Endpoint discovery against the real engines and against broken sockets.

The permission test runs the probe in a child whose capability bounding set lacks
CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: root then meets file permissions like any user
(``setpriv --reuid=nobody`` cannot work here, the interpreter lives under a 0700 /root).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import DOCKER_URL, PODMAN_URL, ping_socket
from vm_backend.engine import discovery
from vm_backend.engine.models import Endpoint, EndpointSource, EndpointStatus, EngineKind

pytestmark = pytest.mark.engine
REPO = Path(__file__).resolve().parents[2]
# The real engines get a long probe timeout: under CI load (other suites booting VMs),
# Podman's /version has taken 4-6 s, over the product's 5 s default now and then.


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No DOCKER_HOST/DOCKER_CONTEXT, an empty HOME and docker config, no Berth VMs."""
    for var in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BERTH_HOME", str(tmp_path / "berth"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return home


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for sockets (sun_path is limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="bd", dir="/tmp"))
    yield d
    d.chmod(0o755)
    shutil.rmtree(d, ignore_errors=True)


def require(url: str) -> None:
    problem = ping_socket(url)
    if problem:
        pytest.skip(f"engine not answering: {problem}")


def write_context(config_dir: Path, name: str, host: str, current: bool = True) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    if current:
        (config_dir / "config.json").write_text(json.dumps({"currentContext": name}))
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({
        "Name": name, "Metadata": {"Description": "test"},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}},
    }))


def test_docker_host_comes_first(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require(PODMAN_URL)
    monkeypatch.setenv("DOCKER_HOST", PODMAN_URL)
    cands = discovery.candidates()
    assert cands[0] == ("DOCKER_HOST", PODMAN_URL, EndpointSource.DOCKER_HOST)
    # The same socket is not listed twice (the rootful podman entry folds into it).
    assert [c[1] for c in cands].count(PODMAN_URL) == 1
    found = discovery.discover(timeout=15)
    assert found[0].source is EndpointSource.DOCKER_HOST
    assert found[0].kind is EngineKind.PODMAN and found[0].usable
    assert discovery.choose(found) == found[0]


def test_docker_context_from_config(clean_env: Path) -> None:
    require(PODMAN_URL)
    write_context(clean_env / ".docker", "berth-test-ctx", PODMAN_URL)
    assert discovery.context_endpoint() == ("berth-test-ctx", PODMAN_URL)
    cands = discovery.candidates()
    assert cands[0] == ("context berth-test-ctx", PODMAN_URL, EndpointSource.CONTEXT)
    ep = discovery.discover(timeout=15)[0]
    assert ep.source is EndpointSource.CONTEXT and ep.kind is EngineKind.PODMAN


def test_docker_context_env_and_config_dir(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "dockercfg"
    write_context(cfg, "other", "unix:///tmp/berth-nowhere.sock", current=False)
    write_context(cfg, "chosen", DOCKER_URL, current=True)
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    assert discovery.context_endpoint() == ("chosen", DOCKER_URL)
    monkeypatch.setenv("DOCKER_CONTEXT", "other")
    assert discovery.context_endpoint() == ("other", "unix:///tmp/berth-nowhere.sock")
    monkeypatch.setenv("DOCKER_CONTEXT", "default")
    assert discovery.context_endpoint() is None
    monkeypatch.setenv("DOCKER_CONTEXT", "no-such-context")
    assert discovery.context_endpoint() is None


def test_broken_docker_config_is_ignored(clean_env: Path) -> None:
    (clean_env / ".docker").mkdir()
    (clean_env / ".docker" / "config.json").write_text("{not json")
    assert discovery.context_endpoint() is None
    assert discovery.candidates()[0][2] is EndpointSource.DOCKER_ROOTFUL


def test_rootful_engines_found(clean_env: Path) -> None:
    found = {ep.url: ep for ep in discovery.discover(timeout=15)}
    for url, kind in ((DOCKER_URL, EngineKind.DOCKER), (PODMAN_URL, EngineKind.PODMAN)):
        if ping_socket(url):
            continue
        ep = found[url]
        assert ep.status is EndpointStatus.OK, ep
        assert ep.kind is kind
        assert ep.version and ep.api_version.startswith("1.")
        assert ep.os == "linux" and ep.arch in ("amd64", "arm64")
    rootless = [ep for ep in found.values() if ep.source is EndpointSource.DOCKER_ROOTLESS]
    assert rootless and rootless[0].status is EndpointStatus.MISSING
    assert "systemctl --user" in rootless[0].hint


def test_missing_socket(short_dir: Path) -> None:
    ep = discovery.probe("x", f"unix://{short_dir}/docker.sock", EndpointSource.DOCKER_ROOTFUL)
    assert ep.status is EndpointStatus.MISSING and not ep.usable
    assert "does not exist" in ep.reason and "systemctl start docker" in ep.hint


def test_not_a_socket(short_dir: Path) -> None:
    (short_dir / "file").write_text("x")
    ep = discovery.probe("x", f"unix://{short_dir}/file", EndpointSource.MANUAL)
    assert ep.status is EndpointStatus.UNSUPPORTED and ep.hint


def test_socket_without_listener_is_refused(short_dir: Path) -> None:
    path = short_dir / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # bound, never listened: connect() gets ECONNREFUSED
    ep = discovery.probe("x", f"unix://{path}", EndpointSource.PODMAN_ROOTFUL)
    assert ep.status is EndpointStatus.NOT_ANSWERING
    assert "refused" in ep.reason and "podman.socket" in ep.hint


def test_socket_that_never_answers_times_out(short_dir: Path) -> None:
    path = short_dir / "hung.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)  # accepts into the backlog, never answers
    try:
        ep = discovery.probe("x", f"unix://{path}", EndpointSource.MANUAL, timeout=0.5)
    finally:
        s.close()
    assert ep.status is EndpointStatus.NOT_ANSWERING
    assert "hung" in ep.hint or "starting" in ep.hint


def _probe_without_dac(url: str, source: EndpointSource) -> dict[str, str]:
    if not shutil.which("setpriv") or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
    code = (
        "import json, sys\n"
        "from vm_backend.engine.discovery import probe\n"
        "from vm_backend.engine.models import EndpointSource\n"
        f"ep = probe('x', {url!r}, EndpointSource[{source.name!r}], timeout=2)\n"
        "print(json.dumps({'status': ep.status.name, 'reason': ep.reason, 'hint': ep.hint}))\n"
    )
    out = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code],
        capture_output=True, text=True, cwd=REPO, timeout=30, check=True,
    ).stdout
    result: dict[str, str] = json.loads(out)
    return result


def test_permission_denied_socket(short_dir: Path) -> None:
    path = short_dir / "docker.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    try:
        path.chmod(0)
        got = _probe_without_dac(f"unix://{path}", EndpointSource.DOCKER_ROOTFUL)
    finally:
        s.close()
    assert got["status"] == "PERMISSION_DENIED", got
    assert "docker group" in got["hint"]


def test_permission_denied_parent_dir(short_dir: Path) -> None:
    inner = short_dir / "p"
    inner.mkdir()
    path = inner / "podman.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    try:
        inner.chmod(0)
        got = _probe_without_dac(f"unix://{path}", EndpointSource.PODMAN_ROOTFUL)
    finally:
        inner.chmod(0o755)
        s.close()
    assert got["status"] == "PERMISSION_DENIED", got
    assert got["hint"]


def _ep(name: str, url: str, ok: bool) -> Endpoint:
    return Endpoint(name, url, EndpointSource.MANUAL,
                    EndpointStatus.OK if ok else EndpointStatus.NOT_ANSWERING)


def test_choose_with_preference() -> None:
    eps = [_ep("a", "unix:///a", False), _ep("b", "unix:///b", True), _ep("c", "unix:///c", True)]
    assert discovery.choose(eps) == eps[1]
    assert discovery.choose(eps, preferred="unix:///c") == eps[2]
    assert discovery.choose(eps, preferred="/c") == eps[2]  # a bare path means unix://
    assert discovery.choose(eps, preferred="c") == eps[2]  # by name
    assert discovery.choose(eps, preferred="unix:///a") == eps[1]  # unusable: fall back
    assert discovery.choose(eps, preferred="unix:///zzz") == eps[1]
    assert discovery.choose([eps[0]]) is None
    assert discovery.choose([]) is None
