"""The Machine page's console under a flood: GUI-thread stalls while the guest prints fast.

A heartbeat QTimer (every 10 ms, as in bench_gui.py) records how late it fires on the GUI
thread while the page's console (``ConsoleTab``: ``ConsoleStream`` → the shared
``StreamPump`` → ``TerminalWidget``, visible) receives a fast guest stream, next to an
idle baseline with the same page shown, measured in the same run. Goal: p99 ≤ 100 ms.

Modes:

``replay`` (default)
    A fake console source in this process: berthd's console protocol is a raw socket
    once connected, so the page's console client is handed one end of a socket pair
    and a thread writes ``--lines`` lines into the other at full speed (blocking writes:
    the pump's back-pressure paces it). Two streams: ``yes`` (``y\\r\\n`` lines, what
    ``yes | head`` prints on the serial console) and ``boot`` (80-column kernel-log-like
    lines with a colour escape every 10th line, 37× the bytes).
``real``
    The real helper VM of ``BERTH_HOME`` (it must run; start it with
    ``berth machine start``): the page attaches to berthd's console and types
    ``yes | head -n LINES; echo …done`` into the guest's console shell; the flood ends
    when the marker arrives. Under TCG the guest's UART is the bottleneck, so this
    measures a slower, longer flood.

Usage: ``python bench/bench_console.py [--mode replay|real|both] [--lines 200000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from bench.bench_gui import Heartbeat, _run_until, percentile

GOAL_P99_MS = 100.0
IDLE_S = 5.0
MARKER = "berth-flood-done"


class GcPauses:
    """The cyclic GC's pauses on the GUI thread while active (a flood allocates a lot)."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._t0 = 0.0

    def _cb(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._t0) * 1000)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._cb)


def _stats(late: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(late, 50),
        "p99_ms": percentile(late, 99),
        "max_ms": max(late) if late else 0.0,
        "ticks": float(len(late)),
    }


class FloodConsole:
    """A berthd stand-in for ``machine.status``/``machine.console``: one socket pair per
    connection, the far end written by a thread at full speed."""

    def __init__(self, payload: Callable[[], Iterator[bytes]]) -> None:
        self.payload = payload
        self.sent = 0
        self.done = threading.Event()
        self.peers: list[socket.socket] = []

    def client(self, autostart: bool = True) -> FloodConsole:
        return self

    def call(self, method: str, params: dict[str, Any] | None = None, **_kw: Any) -> Any:
        if method == "machine.list":
            return [{"name": "default", "state": "running", "pid": 1, "spec": None,
                     "timeline": [], "resources": {}, "ports": []}]
        raise RuntimeError(f"not in the bench: {method}")

    @contextlib.contextmanager
    def console(self, name: str = "default", replay: bool = True) -> Iterator[socket.socket]:
        ours, theirs = socket.socketpair()
        self.peers.append(ours)
        try:
            yield theirs
        finally:
            theirs.close()

    def flood(self) -> threading.Thread:
        peer = self.peers[-1]

        def run() -> None:
            try:
                for chunk in self.payload():
                    peer.sendall(chunk)
                    self.sent += len(chunk)
                peer.sendall(f"\r\n{MARKER}\r\n".encode())
            finally:
                self.done.set()

        thread = threading.Thread(target=run, name="bench-flood", daemon=True)
        thread.start()
        return thread


def yes_lines(n: int) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        block = b"y\r\n" * 4096
        full, rest = divmod(n, 4096)
        for _ in range(full):
            yield block
        yield b"y\r\n" * rest

    return gen


def boot_lines(n: int) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        batch: list[bytes] = []
        for i in range(n):
            text = f"[{i / 1000:12.6f}] virtio_blk virtio1: [vda] 67108864 512-byte logical blocks"
            if i % 10 == 0:
                text = f"\x1b[1;32m{text}\x1b[0m"
            batch.append(text[:90].encode() + b"\r\n")
            if len(batch) == 2048:
                yield b"".join(batch)
                batch.clear()
        yield b"".join(batch)

    return gen


def _page(factory: Callable[..., Any]) -> Any:
    from app.pages.machine import MachinePage
    from app.pages.machine_settings import HostLimits

    page = MachinePage(None, client_factory=factory, limits=HostLimits(2, 4096))
    page.resize(1100, 800)
    page.show()
    page.tabs.setCurrentWidget(page.console)
    return page


def _marker_seen(page: Any) -> bool:
    term = page.console.terminal
    if term.pending_bytes:
        return False
    return MARKER in term.text(include_scrollback=False)


def bench_replay(kind: str, lines: int) -> dict[str, Any]:
    payload = yes_lines(lines) if kind == "yes" else boot_lines(lines)
    source = FloodConsole(payload)
    page = _page(source.client)
    assert _run_until(lambda: page.console.connected, 30), "the console did not connect"
    _run_until(lambda: False, 1)
    hb = Heartbeat()
    hb.start()
    _run_until(lambda: False, IDLE_S)
    idle = hb.stop()
    term = page.console.terminal
    term.max_parse_seconds = term.max_parse_cpu_seconds = 0.0
    hb.start()
    t0, cpu0 = time.perf_counter(), time.process_time()
    with GcPauses() as gcp:
        source.flood()
        finished = _run_until(lambda: source.done.is_set() and _marker_seen(page), 600)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    loaded = hb.stop()
    result = {
        "mode": f"replay-{kind}", "lines": lines, "bytes": source.sent, "finished": finished,
        "seconds": seconds, "mb_per_s": source.sent / seconds / 1e6, "cpu_s": cpu,
        "longest_parse_ms": term.max_parse_seconds * 1000,
        "longest_parse_cpu_ms": term.max_parse_cpu_seconds * 1000,
        "gc_max_ms": max(gcp.pauses_ms, default=0.0),
        "idle": _stats(idle), "flood": _stats(loaded),
    }
    page.shutdown()
    page.close()
    page.deleteLater()
    return result


def bench_real(lines: int, timeout: float) -> dict[str, Any]:
    from vm_backend.daemon.client import DaemonClient

    def factory(autostart: bool = True) -> Any:
        return DaemonClient(autostart=False)

    status = factory().call("machine.status", {"name": "default"})
    if status.get("state") != "running":
        raise SystemExit("the helper VM is not running (berth machine start)")
    page = _page(factory)
    console = page.console
    assert _run_until(lambda: console.connected, 60), "the console did not connect"
    _run_until(lambda: False, 3)  # the replayed boot log lands first
    hb = Heartbeat()
    hb.start()
    _run_until(lambda: False, IDLE_S)
    idle = hb.stop()
    console.terminal.max_parse_seconds = console.terminal.max_parse_cpu_seconds = 0.0
    # The marker is computed by the shell, so the echoed command line does not match it.
    console.terminal.send_text("\r")
    hb.start()
    t0, cpu0 = time.perf_counter(), time.process_time()
    with GcPauses() as gcp:
        # A fresh number each run: berthd replays earlier runs' output on connect.
        nonce = random.randrange(10**6, 10**7)
        console.terminal.send_text(f"yes | head -n {lines}; echo berth-flood-$(({nonce}+1))\r")
        want = f"berth-flood-{nonce + 1}"
        finished = _run_until(
            lambda: not console.terminal.pending_bytes
            and want in console.terminal.text(include_scrollback=False), timeout
        )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    loaded = hb.stop()
    result = {
        "mode": "real", "lines": lines, "bytes": lines * 3, "finished": finished,
        "seconds": seconds, "mb_per_s": lines * 3 / seconds / 1e6, "cpu_s": cpu,
        "longest_parse_ms": console.terminal.max_parse_seconds * 1000,
        "longest_parse_cpu_ms": console.terminal.max_parse_cpu_seconds * 1000,
        "gc_max_ms": max(gcp.pauses_ms, default=0.0),
        "idle": _stats(idle), "flood": _stats(loaded),
    }
    page.shutdown()
    page.close()
    return result


def report(r: dict[str, Any]) -> str:
    idle, flood = r["idle"], r["flood"]
    ok = "met" if flood["p99_ms"] <= GOAL_P99_MS and r["finished"] else "NOT met"
    return (
        f"{r['mode']}: {r['lines']} lines, {r['bytes'] / 1e6:.1f} MB in {r['seconds']:.1f} s "
        f"({r['mb_per_s']:.2f} MB/s){'' if r['finished'] else ' (DID NOT FINISH)'}; "
        f"heartbeat lateness p50/p99/max {flood['p50_ms']:.1f}/{flood['p99_ms']:.1f}/"
        f"{flood['max_ms']:.1f} ms vs idle {idle['p50_ms']:.1f}/{idle['p99_ms']:.1f}/"
        f"{idle['max_ms']:.1f} ms (p99 ratio {flood['p99_ms'] / max(idle['p99_ms'], 0.1):.1f}×); "
        f"longest parse pass {r['longest_parse_ms']:.0f} ms wall, "
        f"{r['longest_parse_cpu_ms']:.0f} ms CPU; longest GC pause {r['gc_max_ms']:.0f} ms; "
        f"process CPU {r['cpu_s']:.1f} s; goal p99 ≤ {GOAL_P99_MS:.0f} ms: {ok}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", choices=("replay", "real", "both"), default="replay")
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--real-timeout", type=float, default=1800.0)
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication

    from app.theme import apply_theme

    app = QApplication.instance() or QApplication(["berth-bench-console"])
    apply_theme(app, "light")  # type: ignore[arg-type]
    results: list[dict[str, Any]] = []
    if args.mode in ("replay", "both"):
        for kind in ("yes", "boot"):
            results.append(bench_replay(kind, args.lines))
            print(report(results[-1]), flush=True)
    if args.mode in ("real", "both"):
        results.append(bench_real(args.lines, args.real_timeout))
        print(report(results[-1]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
