"""The Machine page driving the real helper VM through a real berthd (slow: ``-m vm``).

One module-scoped machine under a short private ``BERTH_HOME`` (``/tmp/bm-XXXX``; the
docker context goes to a private ``DOCKER_CONFIG`` there): the page creates it from its
first-run panel, boots it and the timeline advances stage by stage to ``socket``; the
console shows the boot and runs a typed command; a shell tab runs a command over SSH;
the page stops the VM. A second machine, booted from a guest image whose kernel is
garbage, shows the failed stage, QEMU's reason and the console tail.

Boots take 1–4 minutes under TCG on a loaded 2-core host, so waits are generous; every
wait is bounded. Teardown stops the VM and ends the berthd this module started (by pid).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from app.context import AppContext
from app.pages.machine import MachinePage
from app.pages.machine_timeline import STAGE_KEYS
from app.tray import BerthTray
from vm_backend.daemon.client import DaemonClient, DaemonError
from vm_backend.machine.paths import MachinePaths
from vm_backend.settings import Settings

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[3]
IMAGE = REPO / "packaging" / "guest" / "out" / "amd64"
BOOT_MS = 9 * 60 * 1000  # TCG at load 20+ on 2 cores; a quiet host boots in well under 1 min
STEP_MS = 120 * 1000
TEST_IMAGE = os.environ.get("BERTH_TEST_IMAGE", "berth-test/busybox:latest")
DOCKER = shutil.which("docker") or "docker"


def _end_pid(pid: int, timeout: float = 15.0) -> None:
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()


def teardown_home(home: Path) -> None:
    """Stop the VM and the berthd serving ``home`` (both found by pid, never by name)."""
    client = DaemonClient(home, autostart=False)
    daemon_pid: int | None = None
    with contextlib.suppress(DaemonError):
        client.call("machine.stop", {"name": "default", "timeout": 20}, timeout=90)
    with contextlib.suppress(DaemonError):
        daemon_pid = int(client.call("ping", timeout=10)["pid"])
    if daemon_pid is not None:
        _end_pid(daemon_pid)
    pid_file = MachinePaths.for_machine("default", home).run_dir / "qemu.pid"
    with contextlib.suppress(OSError, ValueError):
        qemu_pid = int(pid_file.read_text().strip())
        if psutil.Process(qemu_pid).name().startswith("qemu-system"):
            _end_pid(qemu_pid)


@contextlib.contextmanager
def private_home(**env: str) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="bm-", dir="/tmp"))
    patch = pytest.MonkeyPatch()
    patch.setenv("BERTH_HOME", str(home))
    patch.setenv("DOCKER_CONFIG", str(home / "docker"))
    for key, value in env.items():
        patch.setenv(key, value)
    try:
        yield home
    finally:
        teardown_home(home)
        patch.undo()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def vm_home() -> Iterator[Path]:
    if not (IMAGE / "vmlinuz").exists():
        pytest.skip("no guest image; build it: bash packaging/guest/build.sh --arch amd64")
    with private_home() as home:
        yield home


@pytest.fixture
def berth_home(vm_home: Path) -> Path:
    """Every test of this module sees the module's machine (overrides the per-test home)."""
    return vm_home


@pytest.fixture(scope="module")
def page(qapp: QApplication, vm_home: Path) -> Iterator[MachinePage]:
    widget = MachinePage(None)
    widget.resize(1100, 900)
    widget.show()
    yield widget
    widget.shutdown()
    widget.close()
    widget.deleteLater()


def screen_text(pane: Any) -> str:
    pane.terminal.flush()
    return str(pane.terminal.text())


@pytest.mark.timeout(900)
def test_create_and_boot_from_the_page(page: MachinePage, qtbot: QtBot) -> None:
    qtbot.waitUntil(lambda: page.exists is False, timeout=60_000)
    assert page.stack.currentWidget() is page.first_run
    seen: list[tuple[str, str]] = []

    def record(message: Any) -> None:
        stage = message.get("stage") if isinstance(message, dict) else None
        if isinstance(stage, dict):
            seen.append((str(stage.get("stage")), str(stage.get("state"))))

    page.progress.connect(record)
    page.first_run.create_button.click()
    timeline = page.overview.timeline
    qtbot.waitUntil(lambda: page.state == "starting", timeout=STEP_MS)
    # While booting, the summary names the stage in progress.
    qtbot.waitUntil(lambda: timeline.running() is not None or timeline.failed() is not None,
                    timeout=STEP_MS)
    assert timeline.failed() is None
    qtbot.waitUntil(
        lambda: timeline.state_of("socket") == "done" or timeline.failed() is not None,
        timeout=BOOT_MS,
    )
    assert timeline.failed() is None, page.overview.failure.details_text()
    qtbot.waitUntil(lambda: page.state == "running" and not page._busy, timeout=STEP_MS)
    page.progress.disconnect(record)
    # Stage by stage: each stage that ran was reported running before done, in order.
    done = [s for s, st in seen if st == "done"]
    assert done == [s for s in STAGE_KEYS if s in done]
    assert done[-1] == "socket" and "kernel" in done and "engine" in done
    for stage in ("kernel", "engine"):
        assert seen.index((stage, "running")) < seen.index((stage, "done"))
    assert all(timeline.item_texts(s)[2] for s in done)  # every done stage has a duration
    assert timeline.summary.text().startswith("Ready: booted in")
    assert "docker --context berth ps" in page.message.text()
    qtbot.waitUntil(lambda: page.overview.usage.isVisible(), timeout=STEP_MS)
    assert "DOCKER_HOST=unix://" in page.overview.usage.env_line.edit.text()
    status = page.status or {}
    if status.get("slow_mode"):
        assert page.overview.slow_notice.isVisible()
        assert str(status.get("accelerator_reason")) in page.overview.slow_notice.text()


@pytest.mark.timeout(600)
def test_console_shows_the_boot_and_runs_a_typed_command(page: MachinePage,
                                                         qtbot: QtBot) -> None:
    console = page.console
    page.tabs.setCurrentWidget(console)
    qtbot.waitUntil(lambda: console.connected, timeout=STEP_MS)
    # berthd replays the console from boot: the kernel banner is there.
    qtbot.waitUntil(lambda: "Linux version" in screen_text(console), timeout=STEP_MS)
    console.terminal.send_text("\r")
    console.terminal.send_text("uname -a; echo berth-console-$((6*7))\r")
    # The shell's arithmetic proves the command ran (the echoed input says $((6*7))).
    qtbot.waitUntil(lambda: "berth-console-42" in screen_text(console), timeout=STEP_MS)
    assert "GNU/Linux" in screen_text(console) or "Linux" in screen_text(console)


@pytest.mark.timeout(600)
def test_shell_tab_runs_a_command_over_ssh(page: MachinePage, qtbot: QtBot) -> None:
    tab = page.new_shell()
    assert tab is not None
    qtbot.waitUntil(lambda: tab.connected and "Connected" in tab.status.text(),
                    timeout=STEP_MS)
    tab.terminal.send_text("echo berth-shell-ok\r")
    qtbot.waitUntil(
        lambda: any(line.strip() == "berth-shell-ok"
                    for line in screen_text(tab).splitlines()),
        timeout=STEP_MS,
    )
    # A resize reaches the guest's pty.
    tab.resize(700, 420)
    tab.terminal.resize(640, 300)
    qtbot.waitUntil(lambda: tab.terminal.size_in_cells() != (80, 24), timeout=10_000)
    cols, rows = tab.terminal.size_in_cells()
    tab.terminal.send_text("echo size-$(stty size | tr ' ' x)\r")
    qtbot.waitUntil(lambda: f"size-{rows}x{cols}" in screen_text(tab), timeout=STEP_MS)
    # A second shell is its own tab on the same transport.
    second = page.new_shell()
    assert second is not None and len(page.shell_tabs()) == 2
    qtbot.waitUntil(lambda: second.connected, timeout=STEP_MS)


def _docker(host: str, *args: str, stdin: bytes | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([DOCKER, *args], input=stdin, capture_output=True, timeout=timeout,
                          check=False, env={**os.environ, "DOCKER_HOST": host})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(900)
def test_ports_table_shows_a_published_port(page: MachinePage, qtbot: QtBot,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    host = str((page.status or {}).get("docker_host") or "")
    assert host.startswith("unix://")
    saved = subprocess.run([DOCKER, "save", TEST_IMAGE], capture_output=True, check=False)
    if saved.returncode != 0:
        pytest.skip(f"no {TEST_IMAGE} on the host engine to load into the VM")
    loaded = _docker(host, "load", stdin=saved.stdout)
    assert loaded.returncode == 0, loaded.stderr
    tab = page.ports
    page.tabs.setCurrentWidget(tab)
    assert tab.table.rowCount() == 0
    port = _free_port()
    run = _docker(host, "run", "-d", "--label", "berth.test=1", "--name", "berth-page-web",
                  "-p", f"127.0.0.1:{port}:8080", TEST_IMAGE, "httpd", "-f", "-p", "8080")
    assert run.returncode == 0, run.stderr
    # A host port another program holds shows as a conflict, not as a silent gap.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = int(squatter.getsockname()[1])
        busy = _docker(host, "run", "-d", "--label", "berth.test=1", "--name",
                       "berth-page-busy", "-p", f"127.0.0.1:{taken}:8080", TEST_IMAGE,
                       "httpd", "-f", "-p", "8080")
        assert busy.returncode == 0, busy.stderr
        qtbot.waitUntil(lambda: {r.host_port for r in tab.rows} >= {port, taken},
                        timeout=STEP_MS)
        row = next(r for r in tab.rows if r.host_port == port)
        qtbot.waitUntil(lambda: any(r.host_port == port and r.listening for r in tab.rows),
                        timeout=STEP_MS)
        assert (row.container, row.guest_port, row.protocol) == ("berth-page-web", 8080, "tcp")
        conflict = next(r for r in tab.rows if r.host_port == taken)
        assert conflict.state.startswith("conflict")
        index = tab.rows.index(conflict)
        assert tab.table.item(index, 5).text().startswith("Conflict")
        assert tab.open_row(index) is False
    # The listening row answers on this computer and opens in the browser.
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as answer:
            status = answer.status
    except urllib.error.HTTPError as err:  # busybox httpd may have no index: still HTTP
        status = err.code
    assert 200 <= status < 500
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl",
                        staticmethod(lambda url: opened.append(url.toString()) or True))
    index = next(i for i, r in enumerate(tab.rows) if r.host_port == port)
    tab.table.cellDoubleClicked.emit(index, 0)
    assert opened == [f"http://localhost:{port}/"]
    # Removing the container removes its row.
    _docker(host, "rm", "-f", "berth-page-busy")
    qtbot.waitUntil(lambda: all(r.host_port != taken for r in tab.rows), timeout=STEP_MS)
    assert any(r.host_port == port for r in tab.rows)
    page.tabs.setCurrentWidget(page.overview)


@pytest.mark.timeout(300)
def test_resources_are_charted_while_visible(page: MachinePage, qtbot: QtBot) -> None:
    page.tabs.setCurrentWidget(page.overview)
    assert page.polling
    # The chart keeps a fixed ring (full after a slow boot): count from empty.
    page.overview.mem_chart.clear()
    qtbot.waitUntil(lambda: len(page.overview.mem_chart.samples()) >= 2, timeout=60_000)
    rss = page.overview.mem_chart.latest()
    assert rss is not None and rss[0] > 50 * 1024 * 1024
    page.hide()
    assert not page.polling
    page.show()
    assert page.polling


@pytest.mark.timeout(1200)
def test_tray_stops_and_starts_the_vm(page: MachinePage, qtbot: QtBot) -> None:
    tray = BerthTray(AppContext(Settings()))
    qtbot.waitUntil(lambda: tray.vm_state == "running", timeout=STEP_MS)
    assert tray.vm_state_action.text() == "VM: Running"
    assert tray.vm_stop_action.isEnabled() and not tray.vm_start_action.isEnabled()
    tray.vm_stop_action.trigger()
    assert not tray.vm_stop_action.isEnabled()  # no second action while one runs
    qtbot.waitUntil(lambda: tray.vm_state == "stopped" and not tray._vm_busy,
                    timeout=180_000)
    assert tray.vm_start_action.isEnabled() and not tray.vm_stop_action.isEnabled()
    # The page sees it (its next read), and the forwarded ports are gone with the VM.
    page.refresh()
    qtbot.waitUntil(lambda: page.state == "stopped", timeout=STEP_MS)
    assert page.ports.table.rowCount() == 0
    assert "while the VM runs" in page.ports.summary.text()
    tray.vm_start_action.trigger()
    assert tray.vm_state_action.text() == "VM: Starting…"
    assert not tray.vm_start_action.isEnabled()
    qtbot.waitUntil(lambda: tray.vm_state == "running" and not tray._vm_busy,
                    timeout=BOOT_MS)
    assert tray.notifications == []
    page.refresh()
    qtbot.waitUntil(lambda: page.state == "running" and not page._busy, timeout=STEP_MS)
    tray.icon.hide()
    tray.deleteLater()


@pytest.mark.timeout(900)
def test_restart_reconnects_the_console(page: MachinePage, qtbot: QtBot) -> None:
    first_pid = (page.status or {}).get("pid")
    assert first_pid
    qtbot.waitUntil(lambda: page.restart_button.isEnabled(), timeout=STEP_MS)
    page.restart_button.click()
    qtbot.waitUntil(
        lambda: (page.state == "running" and not page._busy
                 and (page.status or {}).get("pid") not in (None, first_pid))
        or page.overview.failure.isVisible(),
        timeout=BOOT_MS,
    )
    assert page.overview.failure.isHidden(), page.overview.failure.details_text()
    console = page.console
    qtbot.waitUntil(lambda: console.connected and console.run_id != first_pid,
                    timeout=STEP_MS)
    qtbot.waitUntil(lambda: "the VM was restarted" in screen_text(console), timeout=STEP_MS)
    text = screen_text(console)
    # The new run's boot was replayed after the marker.
    assert "Linux version" in text[text.rindex("the VM was restarted"):]


@pytest.mark.timeout(300)
def test_stop_from_the_page(page: MachinePage, qtbot: QtBot) -> None:
    qtbot.waitUntil(lambda: page.stop_button.isEnabled(), timeout=STEP_MS)
    page.stop_button.click()
    qtbot.waitUntil(lambda: page.state == "stopped" and not page._busy, timeout=180_000)
    assert "Stopped" in page.message.text()
    qtbot.waitUntil(lambda: not page.console.busy, timeout=STEP_MS)
    assert all(not tab.connected for tab in page.shell_tabs())
    assert not page.polling
    assert page.start_button.isEnabled()


@pytest.mark.timeout(600)
def test_boot_failure_with_a_corrupt_kernel(qapp: QApplication, qtbot: QtBot,
                                            tmp_path: Path) -> None:
    broken = tmp_path / "image"
    shutil.copytree(IMAGE, broken)
    (broken / "vmlinuz").write_bytes(os.urandom(1 << 20))
    with private_home(BERTH_GUEST_IMAGE_DIR=str(broken)):
        widget = MachinePage(None)
        qtbot.addWidget(widget)
        widget.resize(1100, 900)
        widget.show()
        qtbot.waitUntil(lambda: widget.exists is False, timeout=60_000)
        widget.first_run.create_button.click()
        failure = widget.overview.failure
        # QEMU refuses the kernel at once; the qemu stage's own timeout (100 s under TCG)
        # bounds the wait in any case.
        qtbot.waitUntil(lambda: failure.isVisible(), timeout=STEP_MS)
        assert failure.stage_key in ("qemu", "kernel")
        assert widget.overview.timeline.state_of(failure.stage_key) == "failed"
        assert failure.reason.text().startswith("Why: ")
        assert len(failure.reason.text()) > len("Why: ") + 5
        assert failure.hint.text().startswith("What to try: ")
        qtbot.waitUntil(lambda: "reading the console" not in failure.tail.toPlainText(),
                        timeout=30_000)
        if failure.stage_key == "qemu":
            qtbot.waitUntil(lambda: failure.qemu_output.isVisible(), timeout=30_000)
            assert "kernel" in failure.qemu_output.text().lower()
        qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=STEP_MS)
        assert widget.state in ("stopped", "crashed")
        widget.shutdown()


@pytest.mark.timeout(300)
def test_reset_keeping_the_data_disk_with_a_real_berthd(
    qapp: QApplication, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    with private_home() as home:
        DaemonClient().call("machine.init", {"name": "default", "cpus": 1,
                                             "memory_mib": 768, "disk_gib": 6})
        paths = MachinePaths.for_machine("default", home)
        disk_inode = paths.data_disk.stat().st_ino
        (paths.state_dir / "console.log").write_text("old boot\n")
        widget = MachinePage(None)
        qtbot.addWidget(widget)
        widget.show()
        qtbot.waitUntil(lambda: widget.state == "stopped", timeout=60_000)
        monkeypatch.setattr(widget, "ask_reset", lambda: "keep")
        qtbot.waitUntil(lambda: widget.reset_button.isEnabled(), timeout=60_000)
        widget.reset_button.click()
        qtbot.waitUntil(lambda: "Reset done" in widget.message.text()
                        or "failed" in widget.message.text(), timeout=120_000)
        assert "data disk was kept" in widget.message.text()
        assert paths.data_disk.stat().st_ino == disk_inode
        assert not (paths.state_dir / "console.log").exists()
        spec = DaemonClient().call("machine.spec", {"name": "default"})
        assert (spec["cpus"], spec["memory_mib"], spec["disk_gib"]) == (1, 768, 6)
        widget.shutdown()
