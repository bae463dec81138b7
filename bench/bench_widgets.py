"""Benchmark the log view and the terminal widget, each against a baseline.

    python bench/bench_widgets.py [--lines 1000000] [--mb 8]

Log view: a shown, following LogPanel (capacity 100k) takes ``--lines`` lines
in 1000-line batches; each batch is timed from append to a finished repaint
(p50/p99/max), with RSS after the ring filled and at the end. Baseline: the
same LogModel shown in a QListView with uniform item sizes (the first design),
timed on 120 batches only since it is two orders of magnitude slower.

Terminal: ``--mb`` MB of coloured line output fed in 4 KB pieces to a shown
80x24 TerminalWidget; reported are throughput, the longest parse pass and the
longest gap of a 5 ms heartbeat timer (the worst GUI stall a user would feel).

CPU time of the GUI thread (``time.thread_time``) is reported next to wall
time: on a shared machine the wall clock mostly measures the other processes,
and the ratios against the baselines are computed from CPU time.
Baseline: stock ``pyte.HistoryScreen`` + ``ByteStream`` on the same bytes,
without any GUI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import pyte
from PySide6.QtCore import QElapsedTimer, QTimer
from PySide6.QtWidgets import QApplication, QListView

from app.widgets.logview import LogLine, LogModel, LogPanel
from app.widgets.terminal import TerminalWidget

BATCH = 1000


def _batch(n: int) -> list[LogLine]:
    return [
        LogLine(
            "2026-11-28T20:00:00.000000000Z",
            "stderr" if i % 10 == 0 else "stdout",
            f"{n * BATCH + i} GET /api/items?id={i} 200 {i * 7} bytes",
        )
        for i in range(BATCH)
    ]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def bench_logview(app: QApplication, lines: int) -> dict[str, float]:
    panel = LogPanel()
    panel.resize(1000, 600)
    panel.show()
    app.processEvents()
    process = psutil.Process()
    rss_start = process.memory_info().rss
    rss_full = rss_start
    times: list[float] = []
    cpu: list[float] = []
    batches = lines // BATCH
    for n in range(batches):
        data = _batch(n)
        started, cpu_started = time.perf_counter(), time.thread_time()
        panel.append_lines(data)
        panel.view.viewport().repaint()
        app.processEvents()
        times.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - cpu_started)
        if (n + 1) * BATCH == panel.model.capacity:
            rss_full = process.memory_info().rss
    rss_end = process.memory_info().rss
    panel.close()
    return {
        "batches": batches,
        "p50_ms": statistics.median(times) * 1e3,
        "p99_ms": _pct(times, 0.99) * 1e3,
        "max_ms": max(times) * 1e3,
        "cpu_p50_ms": statistics.median(cpu) * 1e3,
        "cpu_p99_ms": _pct(cpu, 0.99) * 1e3,
        "rss_fill_mb": (rss_full - rss_start) / 1e6,
        "rss_after_full_mb": (rss_end - rss_full) / 1e6,
        "dropped": panel.model.dropped,
    }


def bench_logview_baseline(app: QApplication, batches: int = 120) -> dict[str, float]:
    model = LogModel()
    view = QListView()
    view.setUniformItemSizes(True)
    view.setModel(model)
    view.resize(1000, 600)
    view.show()
    app.processEvents()
    times: list[float] = []
    cpu: list[float] = []
    for n in range(batches):
        data = _batch(n)
        started, cpu_started = time.perf_counter(), time.thread_time()
        model.append_lines(data)
        view.scrollToBottom()
        view.viewport().repaint()
        app.processEvents()
        times.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - cpu_started)
    view.close()
    # The last 20 batches: the ring is full, the steady state.
    return {
        "batches": batches,
        "p50_ms": statistics.median(times[-20:]) * 1e3,
        "cpu_p50_ms": statistics.median(cpu[-20:]) * 1e3,
    }


def _payload(megabytes: float) -> bytes:
    block = b"".join(
        b"\x1b[3%dmline %06d\x1b[0m some output text, to fill the row a bit: %d\r\n"
        % (i % 8, i, i * 7)
        for i in range(1000)
    )
    return block * max(1, int(megabytes * 1024 * 1024 // len(block)))


def bench_terminal(app: QApplication, megabytes: float) -> dict[str, float]:
    payload = _payload(megabytes)
    term = TerminalWidget(scrollback=10_000)
    term.resize(int(term._cell_w * 80) + 20, int(term._cell_h * 24) + 1)
    term.show()
    app.processEvents()
    gaps: list[float] = []
    clock = QElapsedTimer()

    def beat() -> None:
        gaps.append(clock.nsecsElapsed() / 1e9)
        clock.restart()

    heartbeat = QTimer()
    heartbeat.setInterval(5)
    heartbeat.timeout.connect(beat)
    started, cpu_started = time.perf_counter(), time.thread_time()
    for offset in range(0, len(payload), 4096):
        term.feed(payload[offset : offset + 4096])
    feed_s = time.perf_counter() - started
    clock.start()
    heartbeat.start()
    while term.pending_bytes:
        app.processEvents()
    heartbeat.stop()
    elapsed = time.perf_counter() - started
    cpu_s = time.thread_time() - cpu_started
    term.close()
    return {
        "mb": len(payload) / 1e6,
        "mb_per_s": len(payload) / elapsed / 1e6,
        "cpu_mb_per_s": len(payload) / cpu_s / 1e6,
        "feed_calls_s": feed_s,
        "max_parse_ms": term.max_parse_seconds * 1e3,
        "max_parse_cpu_ms": term.max_parse_cpu_seconds * 1e3,
        "max_stall_ms": max(gaps) * 1e3,
        "p99_stall_ms": _pct(gaps, 0.99) * 1e3,
    }


def bench_pyte_baseline(megabytes: float) -> dict[str, float]:
    payload = _payload(megabytes)
    screen = pyte.HistoryScreen(80, 24, history=10_000)
    stream = pyte.ByteStream(screen)
    started, cpu_started = time.perf_counter(), time.thread_time()
    for offset in range(0, len(payload), 4096):
        stream.feed(payload[offset : offset + 4096])
    return {
        "mb_per_s": len(payload) / (time.perf_counter() - started) / 1e6,
        "cpu_mb_per_s": len(payload) / (time.thread_time() - cpu_started) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--mb", type=float, default=8.0)
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.1f} on {os.cpu_count()} CPUs")
    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)

    log = bench_logview(app, args.lines)
    base = bench_logview_baseline(app)
    print(f"log view: {log['batches']:.0f} batches of {BATCH} lines into a 100k ring")
    print(
        f"  per batch  p50 {log['p50_ms']:.2f} ms  p99 {log['p99_ms']:.2f} ms"
        f"  max {log['max_ms']:.2f} ms   (dropped {log['dropped']:,.0f})"
    )
    print(f"  CPU time   p50 {log['cpu_p50_ms']:.2f} ms  p99 {log['cpu_p99_ms']:.2f} ms")
    print(
        f"  RSS        +{log['rss_fill_mb']:.1f} MB filling the ring,"
        f" +{log['rss_after_full_mb']:.1f} MB for the rest"
    )
    print(
        f"  baseline QListView over the same model: p50 {base['p50_ms']:.1f} ms wall,"
        f" {base['cpu_p50_ms']:.1f} ms CPU per batch -> painted view is"
        f" {base['cpu_p50_ms'] / log['cpu_p50_ms']:.0f}x cheaper in CPU time"
    )

    term = bench_terminal(app, args.mb)
    stock = bench_pyte_baseline(args.mb)
    print(f"terminal: {term['mb']:.1f} MB of coloured lines in 4 KB feeds, 80x24")
    print(
        f"  throughput per CPU second {term['cpu_mb_per_s']:.2f} MB/s (widget, parse + paint)"
        f"  vs stock pyte.HistoryScreen {stock['cpu_mb_per_s']:.2f} MB/s (no GUI)"
        f" -> {term['cpu_mb_per_s'] / stock['cpu_mb_per_s']:.1f}x"
    )
    print(
        f"  wall-clock throughput {term['mb_per_s']:.2f} MB/s"
        f" (stock pyte {stock['mb_per_s']:.2f} MB/s)"
    )
    print(
        f"  GUI stall  max {term['max_stall_ms']:.1f} ms  p99 {term['p99_stall_ms']:.1f} ms"
        f"  (longest parse pass {term['max_parse_ms']:.1f} ms wall,"
        f" {term['max_parse_cpu_ms']:.1f} ms CPU;"
        f" {len(range(0, int(term['mb'] * 1e6), 4096))} feed() calls took"
        f" {term['feed_calls_s'] * 1e3:.0f} ms)"
    )


if __name__ == "__main__":
    main()
