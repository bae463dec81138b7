"""The helper VM: boot to engine-ready, QEMU RSS at idle, and memory given back.

Boots the real guest image through ``MachineService`` (QEMU, the boot timeline, SSH, the
engine socket relay and ``/_ping`` through it, exactly as berthd does), in a private
``BERTH_HOME`` under /tmp, and measures per round:

* **boot**: QEMU start → the host socket answers ``/_ping`` (the ``socket`` stage), with
  the duration of every stage of the timeline;
* **idle RSS**: QEMU's RSS 10 s after the boot, split into the guest's RAM block and the
  rest (under TCG mostly the translation cache, up to ``tb-size``);
* **memory given back** (``--memory-test``): a container fills 512 MiB of tmpfs and
  exits; guest-RAM RSS before, at the peak, and 10 s / 30 s after the exit (virtio-balloon
  free page reporting).

Variants run side by side, rounds alternating, so load from other processes hits them
alike: ``--image DIR`` (repeat it to compare guest images) and ``--tb-size MiB`` (repeat
to compare TCG translation-cache sizes; 0 = QEMU's own default of 1 GiB; without it, the
command line as Berth builds it). Each variant × round is one
fresh boot; the data disk is created once per variant and reused (like a user's VM).

``python bench/bench_vm.py --image packaging/guest/out/amd64 --rounds 3 --memory-test``
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vm_backend.daemon.service import MachineService
from vm_backend.machine.hostinfo import detect_host
from vm_backend.machine.image import GuestImage
from vm_backend.machine.process import QemuProcess
from vm_backend.machine.spec import MachineSpec

MIB = 1024 * 1024
HOST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
DOCKER = shutil.which("docker") or "docker"


@dataclass
class Variant:
    label: str
    image: Path
    tb_size: int | None
    home: Path
    boots: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    rss_total: list[int] = field(default_factory=list)
    rss_guest: list[int] = field(default_factory=list)
    mem_rounds: list[tuple[int, int, int, int]] = field(default_factory=list)


def qemu_rss(pid: int, memory_mib: int) -> tuple[int, int]:
    """(total RSS, RSS of the guest RAM block) of QEMU, in bytes, from smaps."""
    total = guest = 0
    size = rss = 0

    def close_mapping() -> None:
        nonlocal guest
        if size >= memory_mib * 1024:
            guest = max(guest, rss)

    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as fh:
        for line in fh:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                close_mapping()
                size = rss = 0
            elif head == "Size:":
                size = int(line.split()[1])
            elif head == "Rss:":
                rss = int(line.split()[1])
                total += rss
    close_mapping()
    return total * 1024, guest * 1024


def launcher_with_tb_size(tb_size: int | None):  # type: ignore[no-untyped-def]
    def launch(argv: list[str], log: Path) -> QemuProcess:
        i = argv.index("-accel")
        if tb_size is not None and argv[i + 1].startswith("tcg"):
            accel = [p for p in argv[i + 1].split(",") if not p.startswith("tb-size=")]
            if tb_size:
                accel.append(f"tb-size={tb_size}")
            argv = [*argv[: i + 1], ",".join(accel), *argv[i + 2 :]]
        return QemuProcess.launch(argv, log)

    return launch


def make_service(v: Variant, cpus: int, memory_mib: int) -> MachineService:
    svc = MachineService("bench", home=v.home, image=GuestImage.from_dir(v.image),
                         manage_context=False)
    svc.machine._launcher = launcher_with_tb_size(v.tb_size)  # bench-only argv variant
    if not svc.machine.exists:
        svc.create(MachineSpec(name="bench", cpus=cpus, memory_mib=memory_mib, disk_gib=8))
    return svc


def memory_round(svc: MachineService, pid: int, memory_mib: int) -> tuple[int, int, int, int]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{svc.engine_socket}"}
    have = subprocess.run([DOCKER, "image", "inspect", HOST_IMAGE], env=env,
                          capture_output=True, check=False)
    if have.returncode != 0:
        saved = subprocess.run([DOCKER, "save", HOST_IMAGE], capture_output=True, check=True)
        subprocess.run([DOCKER, "load"], input=saved.stdout, env=env, capture_output=True,
                       check=True, timeout=600)
    time.sleep(5)
    before = qemu_rss(pid, memory_mib)[1]
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], qemu_rss(pid, memory_mib)[1])
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        subprocess.run(
            [DOCKER, "run", "--rm", "--label", "berth-bench=vm", "--tmpfs", "/fill:size=600m",
             HOST_IMAGE, "sh", "-c", "dd if=/dev/zero of=/fill/x bs=1M count=512 && sleep 6"],
            env=env, capture_output=True, check=True, timeout=600,
        )
    finally:
        done.set()
        t.join()
    exited = time.monotonic()
    time.sleep(max(0.0, exited + 10 - time.monotonic()))
    after10 = qemu_rss(pid, memory_mib)[1]
    time.sleep(max(0.0, exited + 30 - time.monotonic()))
    after30 = qemu_rss(pid, memory_mib)[1]
    return before, peak[0], after10, after30


def one_round(v: Variant, cpus: int, memory_mib: int, memory_test: bool) -> None:
    svc = make_service(v, cpus, memory_mib)
    try:
        started = time.monotonic()
        status = svc.start()
        v.boots.append(time.monotonic() - started)
        assert status.timeline is not None and status.pid is not None
        for rec in status.timeline.stages:
            if rec.duration is not None:
                v.stages.setdefault(rec.stage.value, []).append(rec.duration)
        time.sleep(10)
        total, guest = qemu_rss(status.pid, memory_mib)
        v.rss_total.append(total)
        v.rss_guest.append(guest)
        print(f"  {v.label}: boot {v.boots[-1]:.1f} s, idle RSS {total // MIB} MiB "
              f"(guest RAM {guest // MIB}, other {(total - guest) // MIB})", flush=True)
        if memory_test:
            m = memory_round(svc, status.pid, memory_mib)
            v.mem_rounds.append(m)
            print(f"    guest RAM RSS: before {m[0] // MIB}, peak {m[1] // MIB}, "
                  f"+10 s {m[2] // MIB}, +30 s {m[3] // MIB} MiB", flush=True)
    finally:
        svc.stop(timeout=60)
        svc.close()


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def report(variants: list[Variant], args: argparse.Namespace) -> None:
    host = detect_host()
    print(f"\n## bench_vm {datetime.datetime.now():%Y-%m-%d %H:%M} — {platform.node()}, "
          f"{host.cpus} cores, load {os.getloadavg()[0]:.1f}, {args.cpus} vCPU, "
          f"{args.memory} MiB, {args.rounds} rounds (medians; min–max)\n")
    names = list(dict.fromkeys(s for v in variants for s in v.stages))
    print("| variant | boot → socket s | " + " | ".join(names) + " | idle RSS MiB (guest RAM) |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for v in variants:
        rng = f"{min(v.boots):.1f}–{max(v.boots):.1f}" if v.boots else "-"
        rss = (f"{statistics.median(v.rss_total) / MIB:.0f} "
               f"({statistics.median(v.rss_guest) / MIB:.0f})") if v.rss_total else "-"
        cells = " | ".join(med(v.stages.get(n, [])) for n in names)
        print(f"| {v.label} | {med(v.boots)} ({rng}) | {cells} | {rss} |")
    if any(v.mem_rounds for v in variants):
        print("\n| variant | guest RAM RSS before | peak (512 MiB tmpfs) | +10 s | +30 s |")
        print("|---|---|---|---|---|")
        for v in variants:
            for m in v.mem_rounds:
                print(f"| {v.label} | {m[0] // MIB} | {m[1] // MIB} | {m[2] // MIB} | "
                      f"{m[3] // MIB} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", action="append", type=Path,
                    help="guest image folder (repeat to compare); default: the build output")
    ap.add_argument("--tb-size", action="append", type=int,
                    help="TCG translation cache MiB (repeat to compare; 0 = QEMU's default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--memory", type=int, default=2048, help="guest MiB")
    ap.add_argument("--memory-test", action="store_true", help="512 MiB container round")
    args = ap.parse_args()
    images = args.image or [Path(__file__).resolve().parents[1] / "packaging/guest/out/amd64"]
    tb_sizes: list[int | None] = list(args.tb_size or [None])
    base = Path(tempfile.mkdtemp(prefix="bvm-", dir="/tmp"))
    base.chmod(0o700)
    variants = []
    for n, (image, tb) in enumerate(itertools.product(images, tb_sizes)):
        label = image.name if len(images) == 1 else str(image)
        if len(tb_sizes) > 1:
            label += f" tb-size={'as built' if tb is None else tb or 'QEMU default'}"
        variants.append(Variant(label, image, tb, base / f"v{n}"))
    try:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            for v in variants:
                one_round(v, args.cpus, args.memory, args.memory_test)
    finally:
        report(variants, args)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
