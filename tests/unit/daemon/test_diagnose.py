"""Diagnose: report shape, human text, redaction and the bundle file (no VM here).

The real hops are checked against a booted guest in tests/vm/test_diagnose.py.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vm_backend.daemon.diagnose import (
    _HOST_PROBE,
    FAILED,
    OK,
    PROBE_WRONG_ANSWER,
    SKIPPED,
    WARNING,
    Check,
    ProbeRun,
    Redactor,
    _Diagnose,
    _host_http,
    _token_server,
    checks_to_json,
    first_broken,
    format_checks,
    write_bundle,
)
from vm_backend.machine.hostinfo import Arch

CHECKS = [
    Check("vm", OK, "running"),
    Check("dns-vm", WARNING, "no upstream DNS"),
    Check("share:home", FAILED, "the shared folder /x no longer exists", "Create it again."),
    Check("share:other", FAILED, "second failure", "Other fix."),
    Check("port-on-host", SKIPPED, "not checked"),
]


def test_first_broken_hop_is_the_first_failure_and_warnings_do_not_count() -> None:
    assert first_broken(CHECKS) is CHECKS[2]
    doc = checks_to_json(CHECKS)
    assert doc["ok"] is False and doc["first_broken"] == "share:home"
    assert [c["ok"] for c in doc["checks"]] == [True, True, False, False, False]
    assert checks_to_json(CHECKS[:2]) == {
        "ok": True, "first_broken": None,
        "checks": [
            {"name": "vm", "status": "ok", "detail": "running", "fix": "", "ok": True},
            {"name": "dns-vm", "status": "warning", "detail": "no upstream DNS", "fix": "",
             "ok": True},
        ],
    }


def test_human_text_names_the_broken_hop_and_its_fix() -> None:
    text = format_checks(checks_to_json(CHECKS), "default")
    lines = text.splitlines()
    assert lines[0] == "Diagnose of machine default:"
    assert any(line.startswith("  [ok  ] vm") for line in lines)
    assert any("[warn] dns-vm" in line for line in lines)
    assert any("[skip] port-on-host" in line for line in lines)
    assert lines[-1] == "First broken hop: share:home. Create it again."
    assert "Every hop works." in format_checks(checks_to_json(CHECKS[:1]), "default")


def test_redactor_removes_env_values_keys_and_tokens() -> None:
    canary = "c4n4ry-" + os.urandom(8).hex()
    redact = Redactor({canary, "ab"})  # values under 3 characters are too common to mask
    text = (
        f"starting with {canary} inside\n"
        "env DATABASE_URL=postgres://u:pw@db/x and PATH=/usr/bin\n"
        'config {"api_key": "sk-123456", "password":"hunter2"} token=abc.def\n'
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig\n"
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----\n"
        "kept: berth.data=/dev/vdb ab\n"
    )
    out = redact(text)
    assert canary not in out and not redact.leaks(out)
    for secret in ("postgres://", "sk-123456", "hunter2", "abc.def", "eyJhbGci", "b3BlbnNzaC1rZXk"):
        assert secret not in out, secret
    assert "DATABASE_URL=<redacted>" in out and "<redacted private key>" in out
    assert "kept: berth.data=/dev/vdb ab" in out


def test_token_server_answers_http_on_loopback_and_counts() -> None:
    with _token_server("tok123") as server:
        assert server.answered == 0
        assert _host_http(server.port) == "tok123"
        assert _host_http(server.port) == "tok123"
        assert server.answered == 2


def test_probe_run_names_exit_status_signal_and_output() -> None:
    assert ProbeRun(0).ok and not ProbeRun(3).ok and not ProbeRun(None).ok
    text = ProbeRun(139, "partial", "Segmentation fault\n").describe()
    assert text == (
        "exit status 139 (killed by SIGSEGV); stderr: Segmentation fault; stdout: partial"
    )
    assert ProbeRun(1).describe() == "exit status 1"
    assert ProbeRun(None, error="Read timed out").describe() == (
        "the probe container did not run to its end: Read timed out"
    )


class _FakeContainer:
    def __init__(self, status: dict[str, Any], out: bytes, err: bytes) -> None:
        self.status, self.out, self.err = status, out, err
        self.removed = False

    def wait(self, timeout: float) -> dict[str, Any]:
        if isinstance(self.status, Exception):
            raise self.status
        return self.status

    def logs(self, stdout: bool, stderr: bool) -> bytes:
        return self.out if stdout else self.err

    def remove(self, force: bool) -> None:
        self.removed = True


def _diagnose_with(container: _FakeContainer | Exception) -> _Diagnose:
    def run(*_a: Any, **kw: Any) -> _FakeContainer:
        assert kw["detach"] is True  # never docker-py's follow stream (moby/moby#43860)
        if isinstance(container, Exception):
            raise container
        return container

    d = _Diagnose(SimpleNamespace(), None)
    d.engine = SimpleNamespace(containers=SimpleNamespace(run=run))
    d.image = "busybox"
    return d


def test_run_container_reports_status_and_output_and_always_removes() -> None:
    c = _FakeContainer({"StatusCode": 3, "Error": None}, b"HTTP/1.0 200 OK\r\n\r\n", b"nc: x\n")
    run = _diagnose_with(c)._run_container(["sh"])
    assert run == ProbeRun(3, "HTTP/1.0 200 OK\r\n\r\n", "nc: x\n", "")
    assert c.removed
    stuck = _FakeContainer(TimeoutError("Read timed out"), b"", b"")  # type: ignore[arg-type]
    run = _diagnose_with(stuck)._run_container(["sh"])
    assert run.exit_code is None and "Read timed out" in run.error and stuck.removed
    run = _diagnose_with(RuntimeError("no such image"))._run_container(["sh"])
    assert run == ProbeRun(None, error="no such image")


def test_host_check_failure_names_the_probe_and_what_the_host_saw() -> None:
    refused = b"nc: can't connect to remote host: Connection refused\n"
    c = _FakeContainer({"StatusCode": 1}, b"", refused)
    d = _diagnose_with(c)
    d.check_host_from_container()
    check = d.checks[-1]
    assert check.name == "host-from-container" and check.status == FAILED
    assert "exit status 1" in check.detail and "Connection refused" in check.detail
    assert "no connection reached the listener on this computer" in check.detail


def test_dns_container_check_judges_by_exit_status(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = b"Server: 10.0.2.3\nName: deb.debian.org\nAddress: 151.101.2.132\n"
    d = _diagnose_with(_FakeContainer({"StatusCode": 0}, answer, b""))
    d.check_dns_container()
    assert d.checks[-1].status == OK
    monkeypatch.setattr("vm_backend.daemon.diagnose._host_resolves", lambda _n: True)
    d = _diagnose_with(_FakeContainer({"StatusCode": 1}, answer, b"nslookup: timeout\n"))
    d.check_dns_container()
    assert d.checks[-1].status == FAILED and "nslookup: timeout" in d.checks[-1].detail


def _host_engine() -> Any:
    docker = pytest.importorskip("docker")
    try:
        client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=60)
        client.images.get("berth-test/busybox:latest")
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"no host dockerd with berth-test/busybox: {err}")
    return client


@pytest.mark.engine
def test_probe_script_against_a_real_engine() -> None:
    """The host probe and _run_container on the host's dockerd (host network: 127.0.0.1).

    An answer with no trailing newline is read whole, a wrong answer is exit status 3 with
    what came back, and no probe container is left behind.
    """
    d = _Diagnose(SimpleNamespace(), None)
    d.engine, d.image = _host_engine(), "berth-test/busybox:latest"
    try:
        run = d._run_container(["sh", "-c", "printf 'a\\nno-newline'"])
        assert run == ProbeRun(0, "a\nno-newline", "", "")
        with _token_server("tok-42") as server:
            base = ["sh", "-c", _HOST_PROBE, "sh", "127.0.0.1", str(server.port)]
            assert d._run_container([*base, "tok-42"], network_mode="host").ok
            wrong = d._run_container([*base, "other"], network_mode="host")
            assert server.answered == 2
        assert wrong.exit_code == PROBE_WRONG_ANSWER
        assert "tok-42" in wrong.err and "nc exit status 0" in wrong.err
        left = d.engine.containers.list(all=True, filters={"label": "berth.diagnose"})
        assert left == []
    finally:
        d.engine.close()


def _fake_service(tmp_path: Path) -> Any:
    for name in ("machine.json", "console.log", "qemu.log"):
        (tmp_path / name).write_text(f"{name} SECRET_TOKEN=s3cr3t-value\n")
    paths = SimpleNamespace(
        spec_file=tmp_path / "machine.json",
        console_log=tmp_path / "console.log",
        qemu_log=tmp_path / "qemu.log",
    )
    machine = SimpleNamespace(paths=paths, spec=SimpleNamespace(arch=Arch.AMD64))
    return SimpleNamespace(
        machine=machine, relay=None, ssh=None,
        status_json=lambda: {"name": "default", "state": "stopped", "shares": []},
    )


def test_bundle_is_private_complete_and_redacted(tmp_path: Path) -> None:
    daemon_log = tmp_path / "berthd.log"
    daemon_log.write_text(
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\n"
    )
    dest = tmp_path / "out" / "bundle.tar.gz"
    dest.parent.mkdir()
    result = write_bundle(_fake_service(tmp_path), dest, CHECKS, daemon_log)
    assert result["path"] == str(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    with tarfile.open(dest) as tar:
        names = {m.name.removeprefix("berth-bundle/") for m in tar.getmembers()}
        assert {
            "README.txt", "diagnose.json", "versions.json", "status.json", "containers.json",
            "machine.json", "logs/console.log", "logs/qemu.log", "logs/berthd.log",
        } <= names
        blob = b"".join(
            tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers() if m.isfile()
        )
    assert b"s3cr3t-value" not in blob and b"MIIEow" not in blob
    assert b"share:home" in blob and b"berth" in blob


def test_daemon_diagnose_of_a_stopped_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through berthd's control API and the CLI: the VM hop fails, the rest is skipped."""
    import io
    import threading

    from vm_backend.cli import build_parser
    from vm_backend.daemon.client import DaemonClient, DaemonError
    from vm_backend.daemon.server import make_server, run_server

    home = tmp_path / "home"
    monkeypatch.setenv("BERTH_HOME", str(home))
    shared = tmp_path / "shared"
    shared.mkdir()
    server = make_server(home)
    thread = threading.Thread(target=run_server, args=(server,), daemon=True)
    thread.start()
    try:
        client = DaemonClient(home)
        client.call("machine.init", {
            "name": "d1", "cpus": 1, "memory_mib": 512, "disk_gib": 4, "accelerator": "tcg",
            "shares": [{"host_path": str(shared), "tag": "s", "read_only": False}],
        })
        with pytest.raises(DaemonError, match="absolute"):
            client.call("machine.diagnose", {"name": "d1", "bundle": "rel.tar.gz"})
        bundle = tmp_path / "b.tar.gz"
        doc = client.call("machine.diagnose", {"name": "d1", "bundle": str(bundle)})
        assert doc["first_broken"] == "vm" and not doc["ok"]
        assert {c["name"]: c["status"] for c in doc["checks"]} == {
            "vm": FAILED, "ssh": SKIPPED, "engine": SKIPPED, "port-in-vm": SKIPPED,
            "port-on-host": SKIPPED, "dns-vm": SKIPPED, "dns-container": SKIPPED,
            "host-from-container": SKIPPED, "share:s": SKIPPED,
        }
        assert doc["bundle"]["path"] == str(bundle) and tarfile.is_tarfile(bundle)
        # The CLI prints the report and exits 1 for a broken hop.
        out = io.StringIO()
        args = build_parser().parse_args(["machine", "diagnose", "--name", "d1"])
        assert args.func(args, out) == 1
        assert "First broken hop: vm. Start it: berth machine start" in out.getvalue()
    finally:
        server.shutdown()
        thread.join(5)
