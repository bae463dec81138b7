"""The Berth window under load: GUI-thread stalls, cold start, idle memory and CPU.

Three measurements against the real dockerd, each printed next to a baseline measured in
the same run, as a ratio:

(a) stall   A heartbeat QTimer (every 10 ms) records how late it fires while 500
            containers (``sleep 3600``, ``network_mode=none``) are started and then
            stopped in bulk by 16 threads of another process, with the Containers page
            visible.
            Baseline: the same heartbeat with the same window idle. Goal: p99 <= 50 ms.
(b) cold    Wall time from process start to a painted container list of 100 containers
            (window created, first container diff applied, one paint), in a fresh
            subprocess. Baseline: a bare QApplication + empty QMainWindow painted once.
            Goal: <= 1.5 s.
(c) idle    RSS of the window showing 50 running containers (live stats on), and its CPU
            over 60 s. Baseline: a bare QApplication + empty QMainWindow. Goals: <= 200 MB,
            <= 1 % of one core.
(d) logflood The same heartbeat while one container logs ~50,000 lines/s (busybox
            ``yes | head``, paced by /proc/uptime) and its details Logs tab follows it.
            Printed: the rate the container really logged (counted from the engine's log
            afterwards over the same window), the rate that reached the tab, and how far
            the view lagged behind the engine's timestamps at the end. Baseline: the same
            heartbeat with the window idle just before (the flood container not selected).
            Goal: p99 <= 100 ms.

Every container it creates carries the label ``berth.bench=1`` and is removed by that
label at the end, also on failure (and leftovers of an earlier run are removed first).

Usage: ``python bench/bench_gui.py [--engine unix:///var/run/docker.sock] [--idle 60]
[--only stall|cold|idle|logflood] [--profile OUT.prof]``. ``--profile`` runs cProfile on the
GUI thread during the loaded phase of (a) or (d) (``python -m pstats OUT.prof``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import docker
import psutil

BENCH_LABEL = "berth.bench"
OWNER = str(os.getpid())  # the label's value: the run that owns the container
IMAGE = "berth-test/busybox:latest"
DEFAULT_ENGINE = "unix:///var/run/docker.sock"
WORKERS = 16
# --desktop-sessions: the window, the bare heartbeat and the churn each run in a session of
# their own (set in main).
OWN_SESSIONS = False


# ---- containers (plain docker-py: the bench's own tooling, not the code under test) -----------
def _api(url: str) -> docker.APIClient:
    return docker.APIClient(base_url=url, version="auto", timeout=120, max_pool_size=WORKERS)


def _parallel(fn: Callable[[str], Any], items: Iterable[str]) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(fn, items))


def create_containers(url: str, n: int, start: bool = False) -> list[str]:
    api = _api(url)
    host_config = api.create_host_config(network_mode="none")

    def one(i: str) -> str:
        c = api.create_container(
            IMAGE, command=["sleep", "3600"], labels={BENCH_LABEL: OWNER},
            host_config=host_config, name=f"berth-bench-{i}",
        )
        if start:
            api.start(c["Id"])
        return str(c["Id"])

    with ThreadPoolExecutor(WORKERS) as pool:
        ids = list(pool.map(one, (f"{os.getpid()}-{i}" for i in range(n))))
    api.close()
    return ids


def remove_bench_containers(url: str) -> int:
    """Remove this run's containers and those of runs that no longer exist.

    Containers of another bench run still going (its process alive) are left alone, so
    two runs on one engine do not pull each other's containers away.
    """
    api = _api(url)
    ids = [
        c["Id"]
        for c in api.containers(all=True, filters={"label": BENCH_LABEL})
        if _orphaned((c.get("Labels") or {}).get(BENCH_LABEL, ""))
    ]

    def rm(cid: str) -> None:
        try:
            api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:
            if err.status_code != 409:  # 409: a removal is already in progress
                raise

    _parallel(rm, ids)
    api.close()
    return len(ids)


def _orphaned(owner: str) -> bool:
    if owner == OWNER or not owner.isdigit():
        return True
    try:
        cmdline = psutil.Process(int(owner)).cmdline()
    except psutil.Error:
        return True
    return not any(arg.endswith("bench_gui.py") for arg in cmdline)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# ---- the window, in this process ----------------------------------------------------------------
def _window(url: str) -> tuple[Any, Any, Any]:
    from PySide6.QtWidgets import QApplication

    from app.context import AppContext
    from app.theme import apply_theme
    from app.window import MainWindow
    from vm_backend.settings import Settings

    app = QApplication.instance() or QApplication(["berth-bench"])
    apply_theme(app, "light")  # type: ignore[arg-type]
    ctx = AppContext(Settings())
    ctx.use_url(url)  # what `berth --engine URL` does: probe and connect in the background
    window = MainWindow(ctx)
    window.resize(1200, 760)
    window.show()
    return app, ctx, window


_interrupted = threading.Event()


def _on_signal(signum: int, _frame: object) -> None:
    # Inside Qt's event loop a KeyboardInterrupt would be swallowed by the slot that
    # happens to run; flag it instead, leave the loop, and raise from plain Python so
    # the cleanup in main() runs.
    _interrupted.set()


def _run_until(pred: Callable[[], bool], timeout: float) -> bool:
    """Run the Qt event loop until ``pred()`` holds (checked every 50 ms) or the timeout."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    deadline = time.monotonic() + timeout
    ok = [pred()]

    def tick() -> None:
        if pred():
            ok[0] = True
            loop.quit()
        elif time.monotonic() > deadline or _interrupted.is_set():
            loop.quit()

    timer = QTimer()
    timer.setInterval(50)
    timer.timeout.connect(tick)
    if not ok[0]:
        timer.start()
        loop.exec()
        timer.stop()
    if _interrupted.is_set():
        raise KeyboardInterrupt
    return ok[0]


def _wait(seconds: float) -> None:
    """Run the Qt event loop for ``seconds`` without waking it (no poll timer).

    The idle measurements use this: ``_run_until``'s 50 ms poll alone costs a bare Qt
    window 0.3 % of a core (more under load), which is a third of the 1 % goal.
    """
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()
    if _interrupted.is_set():
        raise KeyboardInterrupt


def _schedstat() -> tuple[int, int]:
    """(ns on a CPU, ns runnable and waiting for a CPU) of the calling thread."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            fields = f.read().split()
        return int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return 0, 0


class Heartbeat:
    """A 10 ms timer on the GUI thread that records how late each tick arrives."""

    def __init__(self, interval_ms: int = 10) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.interval = interval_ms / 1000
        self.late_ms: list[float] = []
        self.at: list[float] = []  # time.monotonic() of each tick (shared across processes)
        # Per tick, from the kernel's schedstat of the GUI thread since the last tick:
        # nanoseconds on a CPU and nanoseconds runnable but waiting for one. The rest of
        # a late tick's wait, beyond the interval, the thread slept: on the GIL, mostly.
        self.sched: list[tuple[int, int]] = []
        self._last = 0.0
        self._last_sched = (0, 0)
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def start(self) -> None:
        self.late_ms.clear()
        self.at.clear()
        self.sched.clear()
        self._last_sched = _schedstat()
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> list[float]:
        self.timer.stop()
        return list(self.late_ms)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.late_ms.append(max(0.0, (now - self._last - self.interval) * 1000))
        self.at.append(time.monotonic())
        sched = _schedstat()
        self.sched.append((sched[0] - self._last_sched[0], sched[1] - self._last_sched[1]))
        self._last_sched = sched
        self._last = now

    def late_breakdown(self, threshold: float) -> dict[str, float]:
        """For the ticks late by ``threshold`` ms or more, where the wait went (means, ms)."""
        rows = [(ms, cpu / 1e6, runq / 1e6)
                for ms, (cpu, runq) in zip(self.late_ms, self.sched, strict=True)
                if ms >= threshold]
        if not rows:
            return {"ticks": 0}
        n = len(rows)
        late = sum(r[0] for r in rows) / n
        cpu = sum(r[1] for r in rows) / n
        runq = sum(r[2] for r in rows) / n
        span = late + self.interval * 1000
        return {"ticks": n, "late_ms": late, "on_cpu_ms": cpu, "runqueue_ms": runq,
                "asleep_ms": max(0.0, span - cpu - runq)}


class _Profile:
    """cProfile of the GUI thread (the one running the event loop) while enabled."""

    def __init__(self, out: Path | None) -> None:
        import cProfile

        self.out = out
        self.prof = cProfile.Profile() if out is not None else None

    def __enter__(self) -> _Profile:
        if self.prof is not None:
            self.prof.enable()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.prof is not None and self.out is not None:
            self.prof.disable()
            self.prof.dump_stats(str(self.out))


class _SlotTrace:
    """What the GUI thread ran from the event loop, with wall times (``--slots FILE``).

    ``sys.setprofile`` on the GUI thread only: every Python call Qt makes from the event
    loop (a slot, a timer, a model's ``data()``, a paint) is timed; calls less than 0.5 ms
    apart are merged into one burst, and bursts over 2 ms are kept with the functions that
    took the time. Costly (a Python callback per call): a diagnostic, not a figure.
    """

    LOOP_FRAMES = ("_run_until", "_wait")

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.bursts: list[tuple[float, float, dict[str, float]]] = []
        self._starts: dict[int, float] = {}
        self._names: dict[Any, str] = {}
        self._burst: tuple[float, float, dict[str, float]] | None = None

    def _profile(self, frame: Any, event: str, _arg: object) -> None:
        if event == "call":
            back = frame.f_back
            if back is None or back.f_code.co_name in self.LOOP_FRAMES:
                self._starts[id(frame)] = time.monotonic()
        elif event == "return":
            t0 = self._starts.pop(id(frame), None)
            if t0 is None:
                return
            t1 = time.monotonic()
            code = frame.f_code
            name = self._names.get(code)
            if name is None:
                name = f"{code.co_qualname} ({os.path.basename(code.co_filename)}:"
                name += f"{code.co_firstlineno})"
                self._names[code] = name
            burst = self._burst
            if burst is not None and t0 - burst[1] < 0.0005:
                burst[2][name] = burst[2].get(name, 0.0) + (t1 - t0)
                self._burst = (burst[0], t1, burst[2])
            else:
                self._close()
                self._burst = (t0, t1, {name: t1 - t0})

    def _close(self) -> None:
        if self._burst is not None and self._burst[1] - self._burst[0] > 0.002:
            self.bursts.append(self._burst)
        self._burst = None

    def __enter__(self) -> _SlotTrace:
        if self.out is not None:
            sys.setprofile(self._profile)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.out is not None:
            sys.setprofile(None)
            self._close()

    def report(self, hb: Heartbeat, bare: list[tuple[float, float]], threshold: float) -> None:
        """Write the bursts, and say what ran while each tick over ``threshold`` was late."""
        if self.out is None:
            return
        late = [(at, ms) for at, ms in zip(hb.at, hb.late_ms, strict=True) if ms >= threshold]
        blamed: dict[str, float] = {}
        covered = 0
        bare_late = 0
        for at, ms in late:
            start = at - ms / 1000 - hb.interval
            python = 0.0
            for b0, b1, names in self.bursts:
                if b1 > start and b0 < at:
                    python += min(b1, at) - max(b0, start)
                    for name, sec in names.items():
                        blamed[name] = blamed.get(name, 0.0) + sec
            if python >= 0.5 * (at - start):
                covered += 1
            if any(start <= t <= at and m >= threshold / 2 for t, m in bare):
                bare_late += 1
        top = sorted(blamed.items(), key=lambda kv: -kv[1])[:25]
        self.out.write_text(json.dumps({
            "threshold_ms": threshold,
            "late_ticks": len(late),
            "late_with_python_half": covered,
            "late_with_bare_late_too": bare_late,
            "blamed_s": top,
            "bursts": [(b0, b1 - b0, sorted(n.items(), key=lambda kv: -kv[1])[:5])
                       for b0, b1, n in self.bursts],
        }, indent=1))
        print(f"slot trace: {len(late)} ticks late >= {threshold:.0f} ms; in {covered} the GUI "
              f"thread ran Python for at least half the wait; in {bare_late} the bare "
              f"heartbeat process was late >= {threshold / 2:.0f} ms at the same time")
        for name, sec in top[:12]:
            print(f"  {sec * 1000:8.1f} ms  {name}")


class _BareHeartbeat:
    """The same heartbeat in a bare Qt process of its own, running side by side.

    What it sees late is the machine (dockerd and the churn eating the two cores, other
    processes), not the window: the baseline that says how much of the window's p99 is ours.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", "heartbeat"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=OWN_SESSIONS,
        )
        assert self.proc.stdout is not None
        self.sched: list[tuple[int, int]] = []
        self.proc.stdout.readline()  # "ready"

    def stop(self) -> list[tuple[float, float]]:
        """(time.monotonic() of the tick, lateness in ms) for every tick it saw."""
        out, _err = self.proc.communicate(timeout=60)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            return []
        data = json.loads(lines[-1])
        self.sched = [tuple(x) for x in data.get("sched", [])]
        return list(zip(data["at"], data["late_ms"], strict=True))


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name (readers summed)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])  # time on a CPU, nanoseconds
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        name = names.get(int(tid), "other")
        if name.startswith("berth-stats-") and name != "berth-stats-control":
            name = "berth-stats readers"
        elif name.startswith("berth-op"):
            name = "berth-op pool"
        out[name] = out.get(name, 0.0) + ns / 1e9
    return out


def _between(samples: list[tuple[float, float]], t0: float, t1: float) -> list[float]:
    return [ms for at, ms in samples if t0 <= at <= t1]


def bench_stall(
    url: str, n: int, profile: Path | None = None, slots: Path | None = None
) -> dict[str, Any]:
    _app, ctx, window = _window(url)
    page = window.show_page("containers")
    _run_until(lambda: ctx.session is not None and ctx.session.connected, 20)
    ids = create_containers(url, n)
    model = page.model
    _run_until(lambda: all(model.row_of(i) >= 0 for i in ids), 60)

    bare = _BareHeartbeat()
    hb = Heartbeat()
    hb.start()
    idle0 = time.monotonic()
    _wait(3)
    idle1 = time.monotonic()
    baseline = hb.stop()

    def states(want: str) -> bool:
        # Straight from the model's Python side: the check runs on the GUI thread every
        # 50 ms, and 500 Qt data() round trips would add the bench's own stalls.
        return all(
            (c := model.container(i)) is not None and c.state.value == want for i in ids
        )

    # The churn runs in another process, as it would in real life (compose, a script, the
    # CLI): 16 docker-py threads in this process would compete with the GUI thread for the
    # GIL and measure themselves (see docs/benchmarks-gui.md).
    phase: dict[str, float] = {}
    churn = subprocess.Popen(
        [sys.executable, __file__, "--child", "churn", url, *ids],
        stdout=subprocess.PIPE, text=True, start_new_session=OWN_SESSIONS,
    )
    groups = _autogroups({"window": os.getpid(), "bare heartbeat": bare.proc.pid,
                          "churn": churn.pid})

    def read_phases() -> None:
        assert churn.stdout is not None
        for line in churn.stdout:
            if line.startswith("{"):
                phase.update(json.loads(line))

    reader = threading.Thread(target=read_phases, daemon=True)
    reader.start()

    hb.start()
    t0 = time.perf_counter()
    churn0 = time.monotonic()
    cpu0 = _thread_cpu()
    trace = _SlotTrace(slots)
    with _Profile(profile), trace:
        def failed() -> bool:
            return churn.poll() not in (None, 0)

        all_running = _run_until(
            lambda: failed() or ("started" in phase and states("running")), 900
        )
        phase["model_running"] = time.perf_counter() - t0
        all_exited = _run_until(lambda: failed() or ("stopped" in phase and states("exited")), 900)
        phase["model_exited"] = time.perf_counter() - t0
    churn1 = time.monotonic()
    cpu1 = _thread_cpu()
    threads_cpu = {
        name: round((sec - cpu0.get(name, 0.0)) / (churn1 - churn0) * 100, 2)
        for name, sec in sorted(cpu1.items(), key=lambda kv: -(kv[1] - cpu0.get(kv[0], 0.0)))
    }
    loaded = hb.stop()
    bare_ticks = bare.stop()
    bare_idle = _between(bare_ticks, idle0, idle1)
    bare_loaded = _between(bare_ticks, churn0, churn1)
    trace.report(hb, bare_ticks, max(20.0, percentile(loaded, 99) / 2))
    tail = percentile(loaded, 99)
    window_tail = hb.late_breakdown(tail)
    bare_hb = Heartbeat()
    bare_hb.late_ms = [ms for _at, ms in bare_ticks]
    bare_hb.sched = list(bare.sched) if len(bare.sched) == len(bare_ticks) else [(0, 0)] * len(
        bare_ticks)
    bare_tail = bare_hb.late_breakdown(tail)
    if churn.wait(60) != 0:
        raise RuntimeError(f"the churn process failed ({churn.returncode})")
    reader.join(5)
    ctx.shutdown()
    window.close()
    return {
        "containers": n,
        "baseline_p50_ms": percentile(baseline, 50),
        "baseline_p99_ms": percentile(baseline, 99),
        "baseline_max_ms": max(baseline) if baseline else 0.0,
        "model_caught_up": all_running and all_exited,
        "p50_ms": percentile(loaded, 50),
        "p99_ms": percentile(loaded, 99),
        "max_ms": max(loaded) if loaded else 0.0,
        "ticks": len(loaded),
        "bare_idle_p99_ms": percentile(bare_idle, 99),
        "bare_p50_ms": percentile(bare_loaded, 50),
        "bare_p99_ms": percentile(bare_loaded, 99),
        "bare_max_ms": max(bare_loaded) if bare_loaded else 0.0,
        "bare_ticks": len(bare_loaded),
        "threads_cpu_percent": threads_cpu,
        "tail_breakdown": window_tail,
        "bare_tail_breakdown": bare_tail,
        "engine_start_s": phase.get("started", 0.0),
        "engine_stop_s": phase.get("stopped", 0.0),
        "model_all_running_s": phase["model_running"],
        "model_all_exited_s": phase["model_exited"],
        "autogroups": groups,
    }


def _autogroups(pids: dict[str, int]) -> dict[str, str]:
    """The scheduler autogroup of each process (and of the engine's), as /proc shows it.

    With ``kernel.sched_autogroup_enabled`` (Debian's default, and a desktop's), the CPU is
    shared fairly between sessions first, then between the threads inside each one.
    """
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("dockerd", "containerd") and proc.info["name"] not in pids:
            pids[str(proc.info["name"])] = proc.pid
    out: dict[str, str] = {}
    for name, pid in pids.items():
        try:
            out[name] = Path(f"/proc/{pid}/autogroup").read_text().split()[0]
        except (OSError, IndexError):
            out[name] = "?"
    return out


# Busybox sh: write R lines/s in chunks of at most C, paced by /proc/uptime (centiseconds),
# so the rate holds whatever each chunk costs to write.
FLOOD_SCRIPT = """
read u _ </proc/uptime; start=${u%.*}${u#*.}; n=0
while :; do
  read u _ </proc/uptime; now=${u%.*}${u#*.}
  k=$(( (now - start) * R / 100 - n ))
  if [ $k -gt 0 ]; then
    [ $k -gt $C ] && k=$C
    yes "$L" | head -n $k; n=$((n + k))
  else
    sleep 0.02
  fi
done
"""
FLOOD_LINE = "berth log flood: GET /api/items?page=42 200 1532 bytes in 3.2 ms (worker 7)"


def _engine_time(ts: str | None) -> float:
    """Epoch seconds of an engine RFC 3339 timestamp (nanoseconds cut to microseconds)."""
    from datetime import datetime

    if not ts:
        return 0.0
    head, _, frac = ts.rstrip("Z").partition(".")
    micros = (frac + "000000")[:6]
    return datetime.fromisoformat(f"{head}.{micros}+00:00").timestamp()


def bench_logflood(
    url: str, rate: int, seconds: float, profile: Path | None = None
) -> dict[str, Any]:
    """Heartbeat lateness while the details Logs tab follows a container logging ``rate``/s."""
    from app.pages.details.panel import ContainerDetailsPanel

    _app, ctx, window = _window(url)
    page = window.show_page("containers")
    _run_until(lambda: ctx.session is not None and ctx.session.connected, 20)
    # The details panel module is loaded just after the window is up.
    _run_until(lambda: isinstance(page.details, ContainerDetailsPanel), 20)
    chunk = max(1, rate // 10)
    api = _api(url)
    c = api.create_container(
        IMAGE, command=["sh", "-c", FLOOD_SCRIPT], labels={BENCH_LABEL: OWNER},
        environment={"L": FLOOD_LINE, "R": str(rate), "C": str(chunk)},
        name=f"berth-bench-flood-{os.getpid()}",
        host_config=api.create_host_config(network_mode="none"),
    )
    cid = str(c["Id"])
    api.start(cid)
    _run_until(lambda: page.model.row_of(cid) >= 0, 30)

    hb = Heartbeat()
    hb.start()
    _run_until(lambda: False, 5)
    baseline = hb.stop()

    assert page.select_container(cid), "the flood container is not in the table"
    panel = page.details
    assert isinstance(panel, ContainerDetailsPanel)
    logs = panel.details.logs
    model = logs.panel.model

    def received() -> int:
        return model.line_count() + model.dropped

    # Wait for the stream to be followed, then let the tail load and the rate settle.
    _run_until(lambda: logs.running and received() > chunk, 30)
    _run_until(lambda: False, 2)

    hb.start()
    n0, t0, wall0 = received(), time.perf_counter(), time.time()
    with _Profile(profile):
        _run_until(lambda: False, seconds)
    n1, t1, wall1 = received(), time.perf_counter(), time.time()
    loaded = hb.stop()
    last = model.line_at(model.rowCount() - 1) if model.rowCount() else None
    lag = time.time() - _engine_time(last.ts if last else None) if last else float("nan")
    follow = logs.panel.view.follows()
    ctx.shutdown()
    window.close()
    # What the container really logged over the same wall-clock window, from the engine.
    logged = api.logs(cid, stdout=True, stderr=True, since=wall0, until=wall1).count(b"\n")
    api.close()
    return {
        "target_rate": rate,
        "engine_rate": logged / (wall1 - wall0),
        "delivered_rate": (n1 - n0) / (t1 - t0),
        "lines": n1 - n0,
        "seconds": t1 - t0,
        "lag_s": lag,
        "followed": follow,
        "dropped": model.dropped,
        "baseline_p50_ms": percentile(baseline, 50),
        "baseline_p99_ms": percentile(baseline, 99),
        "baseline_max_ms": max(baseline) if baseline else 0.0,
        "p50_ms": percentile(loaded, 50),
        "p99_ms": percentile(loaded, 99),
        "max_ms": max(loaded) if loaded else 0.0,
        "ticks": len(loaded),
    }


# ---- subprocess children ------------------------------------------------------------------
def _since_process_start() -> float:
    return time.time() - psutil.Process().create_time()


def child_cold(url: str, expect: int) -> None:
    """Cold start to a painted list of ``expect`` containers; prints seconds since exec."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    _app, ctx, window = _window(url)
    page = window.show_page("containers")
    # Stop the moment the rows are in (not at the next poll), then paint for real.
    loop = QEventLoop()

    def check(*_args: object) -> None:
        if page.model.rowCount() >= expect:
            loop.quit()

    page.model.rowsInserted.connect(check)
    page.model.modelReset.connect(check)
    QTimer.singleShot(30_000, loop.quit)
    if page.model.rowCount() < expect:
        loop.exec()
    window.repaint()
    QApplication.processEvents()
    page.table.viewport().grab()  # a real paint of the list
    elapsed = _since_process_start()
    print(json.dumps({"cold_s": elapsed, "rows": page.model.rowCount()}))
    ctx.shutdown()


def child_churn(url: str, ids: list[str]) -> None:
    """Start then stop (``-t 0``) ``ids`` from 16 threads; prints each phase's seconds."""
    api = _api(url)
    t = time.perf_counter()
    _parallel(api.start, ids)
    print(json.dumps({"started": time.perf_counter() - t}), flush=True)
    t = time.perf_counter()
    _parallel(lambda i: api.stop(i, timeout=0), ids)
    print(json.dumps({"stopped": time.perf_counter() - t}), flush=True)
    api.close()


def child_heartbeat() -> None:
    """A bare Qt window with the heartbeat, until stdin closes; prints every tick."""
    from PySide6.QtCore import QEventLoop, QSocketNotifier
    from PySide6.QtWidgets import QApplication, QMainWindow

    app = QApplication(["heartbeat"])
    w = QMainWindow()
    w.resize(400, 300)
    w.show()
    hb = Heartbeat()
    loop = QEventLoop()
    notifier = QSocketNotifier(sys.stdin.fileno(), QSocketNotifier.Type.Read)
    notifier.activated.connect(lambda *_a: loop.quit())  # only EOF comes
    hb.start()
    print("ready", flush=True)
    loop.exec()
    hb.stop()
    print(json.dumps({"at": hb.at, "late_ms": hb.late_ms, "sched": hb.sched}))
    del app


def child_cold_baseline() -> None:
    from PySide6.QtWidgets import QApplication, QMainWindow

    app = QApplication(["baseline"])
    w = QMainWindow()
    w.resize(1200, 760)
    w.show()
    w.repaint()
    app.processEvents()
    w.grab()
    print(json.dumps({"cold_s": _since_process_start()}))


def child_idle(url: str, expect: int, seconds: float) -> None:
    _app, ctx, window = _window(url)
    page = window.show_page("containers")
    _run_until(lambda: page.model.rowCount() >= expect, 30)
    _wait(5)  # settle: stats streams open, first samples in
    proc = psutil.Process()
    rss = proc.memory_info().rss
    before = proc.cpu_times()
    t = time.monotonic()
    _wait(seconds)
    after = proc.cpu_times()
    wall = time.monotonic() - t
    cpu = (after.user - before.user + after.system - before.system) / wall * 100
    streams = len(page.pool.active) if page.pool else 0
    print(json.dumps({"rss_mb": rss / 2**20, "cpu_percent": cpu, "streams": streams,
                      "rss_end_mb": proc.memory_info().rss / 2**20}))
    ctx.shutdown()


def child_idle_baseline(seconds: float) -> None:
    from PySide6.QtWidgets import QApplication, QMainWindow

    app = QApplication(["baseline"])
    w = QMainWindow()
    w.resize(1200, 760)
    w.show()
    _wait(1)
    proc = psutil.Process()
    rss = proc.memory_info().rss
    before = proc.cpu_times()
    t = time.monotonic()
    _wait(seconds)
    after = proc.cpu_times()
    cpu = (after.user - before.user + after.system - before.system) / (time.monotonic() - t) * 100
    print(json.dumps({"rss_mb": rss / 2**20, "cpu_percent": cpu}))
    del app


def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"child {args} failed ({out.returncode}): {out.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default=DEFAULT_ENGINE)
    parser.add_argument("--stall-n", type=int, default=500)
    parser.add_argument("--cold-n", type=int, default=100)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--idle-n", type=int, default=50)
    parser.add_argument("--idle", type=float, default=60.0, help="idle CPU window, seconds")
    parser.add_argument("--flood-rate", type=int, default=50_000, help="log lines per second")
    parser.add_argument("--flood-seconds", type=float, default=20.0)
    parser.add_argument("--only", choices=("stall", "cold", "idle", "logflood"))
    parser.add_argument("--profile", type=Path, help="cProfile the GUI thread under load")
    parser.add_argument("--switch-interval", type=float, metavar="MS",
                        help="the window process's GIL switch interval (Python's default: 5 ms)")
    parser.add_argument("--slots", type=Path,
                        help="trace the GUI thread's slots during (a) and blame the late ticks")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--desktop-sessions", action="store_true",
                        help="run the window, the bare heartbeat and the churn each in a "
                             "session of its own, as on a desktop (see docs/benchmarks-gui.md)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.desktop_sessions and not args.child:
        if os.getsid(0) != os.getpid():
            # A session of our own, as an app started from the desktop has (setsid forks
            # first when we lead a process group, and -w hands back the exit status).
            os.execvp("setsid", ["setsid", "-w", sys.executable, *sys.argv])
        global OWN_SESSIONS
        OWN_SESSIONS = True

    if args.profile and args.slots:
        parser.error("--profile and --slots both hook the GUI thread's profiler: pick one")
    if args.child:
        kind, *rest = args.child
        if kind == "cold":
            child_cold(rest[0], int(rest[1]))
        elif kind == "churn":
            child_churn(rest[0], rest[1:])
        elif kind == "heartbeat":
            child_heartbeat()
        elif kind == "cold-baseline":
            child_cold_baseline()
        elif kind == "idle":
            child_idle(rest[0], int(rest[1]), float(rest[2]))
        elif kind == "idle-baseline":
            child_idle_baseline(float(rest[0]))
        return 0

    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval / 1000)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    os.environ.setdefault("BERTH_HOME", str(Path("/tmp") / f"berth-bench-home-{os.getpid()}"))
    url = args.engine
    results: dict[str, Any] = {}
    left = remove_bench_containers(url)
    if left:
        print(f"removed {left} containers left by an earlier run")
    try:
        if args.only in (None, "stall"):
            results["stall"] = bench_stall(url, args.stall_n, args.profile, args.slots)
            remove_bench_containers(url)
            s = results["stall"]
            print(
                f"(a) GUI stall, {s['containers']} containers start+stop: "
                f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms "
                f"(idle baseline p50 {s['baseline_p50_ms']:.1f} / p99 {s['baseline_p99_ms']:.1f}"
                f" / max {s['baseline_max_ms']:.1f} ms; p99 ratio "
                f"{s['p99_ms'] / max(s['baseline_p99_ms'], 0.1):.1f}x); a bare Qt heartbeat "
                f"process side by side: p50 {s['bare_p50_ms']:.1f} / p99 {s['bare_p99_ms']:.1f}"
                f" / max {s['bare_max_ms']:.1f} ms (idle p99 {s['bare_idle_p99_ms']:.1f} ms); "
                f"model all running after {s['model_all_running_s']:.1f} s "
                f"(engine {s['engine_start_s']:.1f} s), all exited after "
                f"{s['model_all_exited_s']:.1f} s"
                + ("" if s["model_caught_up"] else " (TIMED OUT waiting for the model)")
            )
            print("    scheduler autogroups: " + ", ".join(
                f"{name} {group}" for name, group in s["autogroups"].items()))
            print("    CPU of the window's threads during the churn (% of a core): " + ", ".join(
                f"{name} {pct:.1f}" for name, pct in s["threads_cpu_percent"].items() if pct >= 0.05
            ))
            for who, b in (("window", s["tail_breakdown"]), ("bare", s["bare_tail_breakdown"])):
                if b.get("ticks"):
                    print(
                        f"    {who}: {b['ticks']} ticks late >= {s['p99_ms']:.1f} ms, on average "
                        f"{b['late_ms']:.1f} ms late: the GUI thread was on a CPU "
                        f"{b['on_cpu_ms']:.1f} ms, runnable waiting for a CPU "
                        f"{b['runqueue_ms']:.1f} ms, asleep {b['asleep_ms']:.1f} ms (of which "
                        f"10 ms the interval; the rest: waiting on the GIL or a lock)"
                    )
        if args.only in (None, "cold"):
            create_containers(url, args.cold_n)
            runs: list[float] = []
            base: list[float] = []
            for _ in range(args.cold_runs):  # interleaved, so both see the same load
                runs.append(_child("cold", url, str(args.cold_n))["cold_s"])
                base.append(_child("cold-baseline")["cold_s"])
            results["cold"] = {
                "containers": args.cold_n,
                "median_s": statistics.median(runs),
                "runs_s": runs,
                "baseline_runs_s": base,
                "baseline_median_s": statistics.median(base),
            }
            remove_bench_containers(url)
            c = results["cold"]
            print(
                f"(b) cold start to a painted list of {c['containers']}: median "
                f"{c['median_s']:.2f} s over {len(runs)} runs (bare Qt window "
                f"{c['baseline_median_s']:.2f} s; ratio "
                f"{c['median_s'] / c['baseline_median_s']:.1f}x)"
            )
        if args.only in (None, "idle"):
            create_containers(url, args.idle_n, start=True)
            idle = _child("idle", url, str(args.idle_n), str(args.idle))
            bare = _child("idle-baseline", str(args.idle))
            results["idle"] = {**idle, "containers": args.idle_n, "seconds": args.idle,
                               "baseline_rss_mb": bare["rss_mb"],
                               "baseline_cpu_percent": bare["cpu_percent"]}
            i = results["idle"]
            print(
                f"(c) idle with {i['containers']} running containers ({i['streams']} stats "
                f"streams): RSS {i['rss_mb']:.0f} MB (bare Qt window {i['baseline_rss_mb']:.0f}"
                f" MB; ratio {i['rss_mb'] / i['baseline_rss_mb']:.1f}x), CPU "
                f"{i['cpu_percent']:.2f} % of a core over {i['seconds']:.0f} s (bare "
                f"{i['baseline_cpu_percent']:.2f} %)"
            )
        if args.only in (None, "logflood"):
            results["logflood"] = f = bench_logflood(
                url, args.flood_rate, args.flood_seconds, args.profile
            )
            remove_bench_containers(url)
            print(
                f"(d) GUI stall, Logs tab following one container logging "
                f"{f['engine_rate']:,.0f} lines/s (engine's count; target {f['target_rate']:,})"
                f", {f['delivered_rate']:,.0f} lines/s reached the tab ("
                f"{f['lines']:,} lines in {f['seconds']:.1f} s, view {f['lag_s']:.2f} s behind "
                f"the engine at the end, following: {f['followed']}): p50 {f['p50_ms']:.1f} ms,"
                f" p99 {f['p99_ms']:.1f} ms, max {f['max_ms']:.1f} ms (idle baseline p50 "
                f"{f['baseline_p50_ms']:.1f} / p99 {f['baseline_p99_ms']:.1f} / max "
                f"{f['baseline_max_ms']:.1f} ms; p99 ratio "
                f"{f['p99_ms'] / max(f['baseline_p99_ms'], 0.1):.1f}x)"
            )
    finally:
        removed = remove_bench_containers(url)
        print(f"cleanup: removed {removed} bench containers")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
