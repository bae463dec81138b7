"""Resources given back and changed, with the real guest under berthd (issue 6, "Resources").

Everything goes through the CLI and berthd as a user would: ``berth machine
init/start/stop/set/reclaim/ssh``, and the real docker CLI through ``berth machine env``.

* Memory: a container fills 512 MiB of tmpfs and exits; QEMU's guest-RAM RSS goes up,
  then down again (virtio-balloon free page reporting hands the freed pages back).
* Disk: 200 MiB written and deleted in the guest; ``berth machine reclaim`` (fstrim while
  running) gives most of it back, ``reclaim`` while stopped compacts the qcow2; the data
  is intact after both.
* Resize: ``berth machine set --disk 6`` (from 4) while stopped; after the next start the
  guest's filesystem is 6 GiB and the data is intact; CPUs and memory apply too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.berth_cli import run_berth
from vm_backend.daemon.service import find_guest_image
from vm_backend.errors import BerthError
from vm_backend.machine.disk import allocated_bytes
from vm_backend.machine.hostinfo import Arch


def berth(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return run_berth(home, *args, timeout=timeout)

pytestmark = [pytest.mark.vm, pytest.mark.long]

HOST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
DOCKER = shutil.which("docker") or "docker"
MIB = 1024 * 1024
MEMORY_MIB = 1536
LABEL = "berth-test=resources"




def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stdout}{result.stderr}"
    return result.stdout


def guest(home: Path, *argv: str) -> str:
    return ok(berth(home, "machine", "ssh", "--", *argv))


def guest_ram_rss(pid: int, memory_mib: int) -> int:
    """RSS of the guest's RAM block in QEMU (the one anonymous mapping that large).

    QEMU's total RSS also holds the TCG translation cache, which grows as new guest code
    runs; the guest-RAM mapping alone shows what the guest keeps and gives back.
    """
    best = 0
    size = rss = 0
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as fh:
        for line in fh:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                if size >= memory_mib * 1024:
                    best = max(best, rss)
                size = rss = 0
            elif head == "Size:":
                size = int(line.split()[1])
            elif head == "Rss:":
                rss = int(line.split()[1])
    if size >= memory_mib * 1024:
        best = max(best, rss)
    assert best > 0, "no guest RAM mapping found in QEMU's smaps"
    return best * 1024


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    try:
        find_guest_image(Arch.AMD64)
    except BerthError as err:
        pytest.skip(f"no guest image: {err}")
    home = Path(f"/tmp/brs-{uuid.uuid4().hex[:6]}")  # short: socket paths
    home.mkdir(mode=0o700)
    ok(berth(home, "machine", "init", "--cpus", "1", "--memory", str(MEMORY_MIB),
             "--disk", "4", "--accel", "auto"))
    ok(berth(home, "machine", "start"))
    try:
        yield home
    finally:
        berth(home, "machine", "stop", "--timeout", "20")
        stop_daemon(home)
        shutil.rmtree(home, ignore_errors=True)


def stop_daemon(home: Path) -> None:
    """End the berthd this module started for ``home`` (by pid, matched on its argv)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "vm_backend.daemon.server" in cmdline and str(home) in cmdline:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
                proc.wait(10)


def status(home: Path) -> dict[str, object]:
    doc = json.loads(ok(berth(home, "machine", "status", "--json")))
    assert isinstance(doc, dict)
    return doc


def docker_host(home: Path) -> str:
    return ok(berth(home, "machine", "env")).strip().split("=", 1)[1]


def data_disk(home: Path) -> Path:
    return home / "machines" / "default" / "data.qcow2"


@pytest.mark.timeout(1800)
def test_memory_is_given_back_after_a_container_exits(vm: Path) -> None:
    # The guest kernel has the balloon driver bound to QEMU's device.
    assert "virtio_balloon" in guest(vm, "ls", "/sys/bus/virtio/drivers")
    bound = guest(vm, "ls", "/sys/bus/virtio/drivers/virtio_balloon")
    assert "virtio" in bound, bound
    host = docker_host(vm)
    env = {**os.environ, "DOCKER_HOST": host}
    saved = subprocess.run([DOCKER, "save", HOST_IMAGE], capture_output=True, check=True)
    subprocess.run([DOCKER, "load"], input=saved.stdout, env=env, capture_output=True,
                   timeout=600, check=True)
    pid = status(vm)["pid"]
    assert isinstance(pid, int)
    time.sleep(5)
    before = guest_ram_rss(pid, MEMORY_MIB)

    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], guest_ram_rss(pid, MEMORY_MIB))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # 512 MiB in a tmpfs, held for a few seconds, freed when the container exits.
        run = subprocess.run(
            [DOCKER, "run", "--rm", "--label", LABEL, "--tmpfs", "/fill:size=600m",
             HOST_IMAGE, "sh", "-c", "dd if=/dev/zero of=/fill/x bs=1M count=512 && sleep 6"],
            env=env, capture_output=True, text=True, timeout=600, check=False,
        )
    finally:
        done.set()
        sampler.join()
    assert run.returncode == 0, run.stderr
    grown = peak[0] - before
    assert grown >= 400 * MIB, f"the container's 512 MiB never showed in QEMU: +{grown // MIB}"

    deadline = time.monotonic() + 120
    after = guest_ram_rss(pid, MEMORY_MIB)
    while after - before > grown // 2 and time.monotonic() < deadline:
        time.sleep(1)
        after = guest_ram_rss(pid, MEMORY_MIB)
    print(f"\nguest RAM RSS: idle {before // MIB} MiB, peak {peak[0] // MIB} MiB, "
          f"after {after // MIB} MiB")
    assert after - before <= grown // 2, (
        f"QEMU kept the container's memory: idle {before // MIB} MiB, "
        f"peak {peak[0] // MIB} MiB, after 120 s {after // MIB} MiB"
    )


@pytest.mark.timeout(1800)
def test_reclaim_trims_when_running_and_compacts_when_stopped(vm: Path) -> None:
    disk = data_disk(vm)
    guest(vm, "dd", "if=/dev/urandom", "of=/var/lib/docker/keep.bin", "bs=1M", "count=8",
          "conv=fsync", "status=none")
    keep_sum = guest(vm, "sha256sum", "/var/lib/docker/keep.bin").split()[0]
    guest(vm, "dd", "if=/dev/urandom", "of=/var/lib/docker/junk.bin", "bs=1M", "count=200",
          "conv=fsync", "status=none")
    with_junk = allocated_bytes(disk)
    guest(vm, "rm", "/var/lib/docker/junk.bin")

    out = ok(berth(vm, "machine", "reclaim"))
    assert "trimmed in the VM" in out, out
    trimmed = allocated_bytes(disk)
    print(f"\nallocated: with 200 MiB junk {with_junk // MIB} MiB, "
          f"after trim {trimmed // MIB} MiB")
    assert with_junk - trimmed >= 150 * MIB, out

    refused = berth(vm, "machine", "reclaim", "--compact")
    assert refused.returncode != 0
    assert "only be compacted while the machine is stopped" in refused.stderr + refused.stdout

    ok(berth(vm, "machine", "stop", "--timeout", "60"))
    out = ok(berth(vm, "machine", "reclaim"))
    assert "compacted" in out, out
    compacted = allocated_bytes(disk)
    print(f"allocated after compaction: {compacted // MIB} MiB ({out.strip()})")
    assert compacted <= trimmed
    assert stat_mode(disk) == 0o600
    ok(berth(vm, "machine", "start"))
    assert guest(vm, "sha256sum", "/var/lib/docker/keep.bin").split()[0] == keep_sum


@pytest.mark.timeout(1800)
def test_resources_change_at_next_start_and_disk_grows_in_place(vm: Path) -> None:
    guest(vm, "dd", "if=/dev/urandom", "of=/var/lib/docker/grow.bin", "bs=1M", "count=4",
          "conv=fsync", "status=none")
    grow_sum = guest(vm, "sha256sum", "/var/lib/docker/grow.bin").split()[0]
    size_before = int(guest(vm, "df", "-B1", "--output=size", "/mnt/data").split()[-1])
    assert size_before < 4.5 * 1024 * MIB

    refused = berth(vm, "machine", "set", "--disk", "6")
    assert refused.returncode != 0, "the disk must not grow under a running VM"
    ok(berth(vm, "machine", "stop", "--timeout", "60"))
    ok(berth(vm, "machine", "set", "--disk", "6", "--cpus", "2", "--memory", "1280"))
    ok(berth(vm, "machine", "start"))

    size_after = int(guest(vm, "df", "-B1", "--output=size", "/mnt/data").split()[-1])
    print(f"\ndata filesystem: {size_before / 2**30:.2f} GiB -> {size_after / 2**30:.2f} GiB")
    assert size_after > 5.5 * 1024 * MIB
    assert guest(vm, "nproc").strip() == "2"
    mem_kib = int(guest(vm, "grep", "MemTotal", "/proc/meminfo").split()[1])
    assert 1100 * 1024 < mem_kib <= 1280 * 1024
    assert guest(vm, "sha256sum", "/var/lib/docker/grow.bin").split()[0] == grow_sum


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
