"""``berth machine diagnose`` against the real guest (docs/diagnose.md).

One VM per module with a 9p and a reverse-SFTP share. The full diagnose runs once, right
after boot: every hop passes (DNS may be a warning when this computer has no upstream DNS,
which the check compares). Then hops are broken one at a time and the hop's own check
must name it, with its fix (the hops before it were proven by the full run; only the
stopped engine runs everything again, to show what depends on it is skipped). The
support bundle must not contain a canary set in a running container's environment.
"""

from __future__ import annotations

import gzip
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm_backend.daemon.diagnose import (
    FAILED,
    OK,
    WARNING,
    Check,
    _Diagnose,
    checks_to_json,
    first_broken,
    run_checks,
    write_bundle,
)

try:
    from test_shares import HOST_IMAGE, LABEL, SharedVM, boot_vm_with_shares, docker
except ImportError:  # imported as part of the tests package
    from tests.vm.test_shares import HOST_IMAGE, LABEL, SharedVM, boot_vm_with_shares, docker

# The first test boots the VM and runs three probe containers: under TCG on a loaded
# 2-core computer that is minutes, beyond the default 300 s per test.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def vm(guest_image: Path) -> Iterator[SharedVM]:
    yield from boot_vm_with_shares(guest_image, {"home": (False, "auto"), "win": (False, "sftp")})


@pytest.fixture(scope="module")
def healthy(vm: SharedVM) -> list[Check]:
    """One full diagnose, right after boot (where the old host-from-container flake was)."""
    return run_checks(vm.service)


def test_healthy_vm_passes_every_hop(vm: SharedVM, healthy: list[Check]) -> None:
    checks = healthy
    doc = checks_to_json(checks)
    print(doc)
    by_name = {c.name: c for c in checks}
    assert list(by_name) == [
        "vm", "ssh", "engine", "port-in-vm", "port-on-host", "dns-vm", "dns-container",
        "host-from-container", "share:home", "share:win",
    ]
    assert first_broken(checks) is None, doc
    for name in ("vm", "ssh", "engine", "port-in-vm", "port-on-host", "host-from-container",
                 "share:home", "share:win"):
        assert by_name[name].status == OK, by_name[name]
    for name in ("dns-vm", "dns-container"):
        assert by_name[name].status in (OK, WARNING), by_name[name]
    # Nothing left behind: no test container, no probe file in the shares.
    left = docker(vm.docker_host, "ps", "-aq", "--filter", "label=berth.diagnose")
    assert left.stdout.strip() == ""
    for d in vm.dirs.values():
        assert not [p for p in d.iterdir() if p.name.startswith(".berth-diagnose")]


def test_bundle_never_contains_a_container_env_value(
    vm: SharedVM, healthy: list[Check], tmp_path: Path
) -> None:
    canary = secrets.token_hex(16)
    name = f"canary-{secrets.token_hex(3)}"
    run = docker(
        vm.docker_host, "run", "-d", "--name", name, "--label", LABEL,
        "-e", f"CANARY={canary}", "-e", f"OTHER_SECRET=x{canary}y",
        HOST_IMAGE, "sh", "-c", "echo starting; sleep 600",
    )
    assert run.returncode == 0, run.stderr
    try:
        # Make the value reach places a bundle reads: a log line in the container and
        # one on the serial console (written from the guest as root).
        docker(vm.docker_host, "exec", name, "sh", "-c", 'echo "value is $CANARY"')
        assert vm.service.ssh is not None
        vm.service.ssh.exec(["sh", "-c", 'printf "%s\\n" "$1" > /dev/console', "sh", canary])
        dest = tmp_path / "bundle.tar.gz"
        result = write_bundle(vm.service, dest, healthy, None)
        assert result["redacted_values"] >= 2
        raw = dest.read_bytes()
        assert canary.encode() not in raw
        assert canary.encode() not in gzip.decompress(raw)
        with tarfile.open(dest) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            names = {m.name.removeprefix("berth-bundle/") for m in members}
            for m in members:
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                assert canary.encode() not in data, m.name
                assert canary[:16].encode() not in data, m.name
        assert {"logs/console.log", "versions.json", "diagnose.json", "machine.json"} <= names
        assert "logs/guest/dockerd.log" in names
    finally:
        docker(vm.docker_host, "rm", "-f", name)


def test_removed_share_folder_is_named_as_the_broken_hop(vm: SharedVM) -> None:
    d = vm.dirs["home"]
    kept = d.with_name("home.kept")
    d.rename(kept)
    try:
        diag = _Diagnose(vm.service, None)
        diag.check_shares(True)
        checks = diag.checks
        broken = first_broken(checks)
        assert broken is not None and broken.name == "share:home", checks_to_json(checks)
        assert "no longer exists" in broken.detail and broken.fix
        assert {c.name: c.status for c in checks}["share:win"] == OK
    finally:
        kept.rename(d)


def test_unforwarded_port_is_named_as_the_broken_hop(vm: SharedVM) -> None:
    svc = vm.service
    ports, svc.ports = svc.ports, None
    assert ports is not None
    ports.stop()
    # The forwarder is stopped: waiting the full 45 s for it would only slow the test.
    d = _Diagnose(vm.service, None, forward_timeout=10)
    try:
        assert d.check_engine(), d.checks
        d.check_ports()
        checks = d.checks
        broken = first_broken(checks)
        assert broken is not None and broken.name == "port-on-host", checks_to_json(checks)
        assert {c.name: c.status for c in checks}["port-in-vm"] == OK
        assert "forwarding" in broken.fix
    finally:
        if d.engine is not None:
            d.engine.close()
        assert svc.ssh is not None
        # Bring forwarding back the way berthd does after a (re)connect.
        svc._open_engine_socket(svc.machine)


def test_stopped_engine_skips_what_depends_on_it(vm: SharedVM) -> None:
    # Last test: the engine socket goes away, the hops after it are skipped, not failed.
    relay, vm.service.relay = vm.service.relay, None
    assert relay is not None
    relay.stop()
    checks = run_checks(vm.service)
    status = {c.name: c.status for c in checks}
    broken = first_broken(checks)
    assert broken is not None and broken.name == "engine", checks_to_json(checks)
    assert status["port-on-host"] == "skipped" and status["host-from-container"] == "skipped"
    assert status["share:home"] == OK and status["dns-vm"] in (OK, WARNING)
    assert FAILED not in {status[n] for n in ("vm", "ssh")}
