"""Engine-layer benchmarks, each against a baseline run side by side.

(a) Listing 500 containers: ``EngineClient.containers()`` (docker-py + conversion to frozen
    models) vs bare ``docker.APIClient().containers(all=True)``, interleaved, N rounds.
    Goal: p50 ratio <= 1.2.
(b) Event latency: from ``start`` returning to the EngineMonitor's listener receiving the
    container as running. Goal: p95 <= 250 ms.

Run: ``python bench/bench_engine.py [--engine private|URL] [--rounds 30]``. The default,
``private``, starts a dockerd of its own (needs root): the shared CI engines are churned and
pruned by other suites, which both disturbs timings and removes the benchmark's containers.
Everything created is labelled ``berth.bench=engine`` and removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import PrivateDockerd
from vm_backend.engine import convert
from vm_backend.engine.client import EngineClient
from vm_backend.engine.models import ContainerState, Event
from vm_backend.engine.monitor import Diff, EngineMonitor
from vm_backend.engine.run import RunRequest

LABEL = ("berth.bench", "engine")
IMAGE = "berth-test/busybox:latest"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def cleanup(api: docker.APIClient) -> None:
    ids = [c["Id"] for c in api.containers(all=True, filters={"label": "=".join(LABEL)})]

    def remove(cid: str) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            api.remove_container(cid, force=True)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(remove, ids))


def create_many(client: EngineClient, n: int) -> list[str]:
    req = RunRequest(image=IMAGE, command=("sleep", "600"), network="none", labels=(LABEL,))
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda _i: client.create(req), range(n)))


def bench_list(client: EngineClient, api: docker.APIClient, rounds: int) -> dict[str, Any]:
    ours: list[float] = []
    bare: list[float] = []
    for i in range(rounds + 2):
        order = (("ours", ours), ("bare", bare)) if i % 2 else (("bare", bare), ("ours", ours))
        for name, sink in order:
            t0 = time.perf_counter_ns()
            rows = client.containers(all=True) if name == "ours" else api.containers(all=True)
            dt = (time.perf_counter_ns() - t0) / 1e6
            if i >= 2:  # two warm-up rounds
                sink.append(dt)
    ours_left = len(api.containers(all=True, filters={"label": "=".join(LABEL)}))
    if ours_left < 500:
        print(f"warning: only {ours_left} benchmark containers left (removed by someone else?)")
    raw = api.containers(all=True)
    t0 = time.perf_counter_ns()
    for _ in range(20):
        [convert.container_from_list(c) for c in raw]
    convert_ms = (time.perf_counter_ns() - t0) / 20 / 1e6
    return {
        "convert_ms": convert_ms,
        "ours_p50": statistics.median(ours), "ours_p99": pct(ours, 99),
        "bare_p50": statistics.median(bare), "bare_p99": pct(bare, 99),
        "ratio_p50": statistics.median(ours) / statistics.median(bare),
        "ratio_p99": pct(ours, 99) / pct(bare, 99), "rows": len(rows),
    }


class Timing:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running_at: dict[str, float] = {}

    def on_connection(self, connected: bool, reason: str) -> None: ...

    def on_event(self, event: Event) -> None: ...

    def on_diff(self, diff: Diff[Any]) -> None:
        now = time.perf_counter()
        with self.lock:
            for c in (*diff.added, *diff.changed):
                if c.state is ContainerState.RUNNING and c.id not in self.running_at:
                    self.running_at[c.id] = now


def bench_events(client: EngineClient, n: int) -> dict[str, Any]:
    ids = create_many(client, n)
    timing = Timing()
    mon = EngineMonitor(client, timing, kinds=("container",))
    mon.start()
    try:
        deadline = time.monotonic() + 10
        while not mon.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # the first full reconcile
        latencies: list[float] = []
        for cid in ids:
            client.start(cid)
            returned = time.perf_counter()
            end = time.monotonic() + 5
            while time.monotonic() < end:
                with timing.lock:
                    seen = timing.running_at.get(cid)
                if seen is not None:
                    break
                time.sleep(0.001)
            else:
                raise RuntimeError(f"the monitor never reported {cid[:12]} running")
            # Negative: the diff arrived before the start call had returned.
            latencies.append(max(0.0, (seen - returned) * 1000))
        return {"p50": statistics.median(latencies), "p95": pct(latencies, 95),
                "max": max(latencies), "n": len(latencies)}
    finally:
        mon.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="private", help="'private' or an engine URL")
    ap.add_argument("--containers", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--starts", type=int, default=100)
    args = ap.parse_args()
    private = PrivateDockerd.launch() if args.engine == "private" else None
    url = private.url if private else args.engine
    try:
        return run(args, url, private is not None)
    finally:
        if private:
            private.cleanup()


def run(args: argparse.Namespace, url: str, private: bool) -> int:
    client = EngineClient(url)
    api = docker.APIClient(base_url=url, version="auto")
    kind = client.kind.value
    version = client.version().get("Version", "?")
    try:
        cleanup(api)
        t0 = time.monotonic()
        create_many(client, args.containers)
        print(f"created {args.containers} containers in {time.monotonic() - t0:.1f} s")
        listing = bench_list(client, api, args.rounds)
        cleanup(api)
        events = bench_events(client, args.starts)
    finally:
        cleanup(api)
        client.close()
        api.close()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip()
    where = "private instance" if private else url
    print(f"\nEngine benchmarks — {kind} {version} ({where}) — {when} — {host}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'measure':<46}{'p50':>10}{'p99/p95':>10}{'goal':>14}")
    print(f"{'list ' + str(listing['rows']) + ' containers, bare docker-py (ms)':<46}"
          f"{listing['bare_p50']:>10.2f}{listing['bare_p99']:>10.2f}{'baseline':>14}")
    print(f"{'list ' + str(listing['rows']) + ' containers, EngineClient (ms)':<46}"
          f"{listing['ours_p50']:>10.2f}{listing['ours_p99']:>10.2f}{'':>14}")
    print(f"{'ratio EngineClient / bare':<46}{listing['ratio_p50']:>10.2f}"
          f"{listing['ratio_p99']:>10.2f}{'<= 1.2':>14}")
    print(f"{'  of which converting to models (ms, mean)':<46}{listing['convert_ms']:>10.2f}")
    print(f"{'start returned -> monitor diff (ms, n=' + str(events['n']) + ')':<46}"
          f"{events['p50']:>10.1f}{events['p95']:>10.1f}{'p95 <= 250':>14}")
    ok = listing["ratio_p50"] <= 1.2 and events["p95"] <= 250
    print("PASS" if ok else "OVER GOAL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
