"""The Machine page against a fake berthd: first run, state, timeline, failure, actions."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from app.pages.machine import MachinePage, default_spec, failed_stage_from, format_uptime
from app.pages.machine_settings import HostLimits
from app.pages.machine_timeline import StageRow, format_duration
from vm_backend.daemon.client import DaemonError

from .conftest import FakeDaemon, booting_records, stage_doc, status_doc

LIMITS = HostLimits(cpus=4, memory_mib=8192)
WAIT = 5000


def make_page(qtbot: QtBot, daemon: FakeDaemon, show: bool = True) -> MachinePage:
    page = MachinePage(None, client_factory=daemon.client, limits=LIMITS, poll_ms=100)
    qtbot.addWidget(page)
    page.resize(1000, 800)
    if show:
        page.show()
    qtbot.waitUntil(lambda: page.exists is not None, timeout=WAIT)
    return page


def test_first_run_offers_creation_with_what_it_uses(qtbot: QtBot,
                                                     fake_daemon: FakeDaemon) -> None:
    fake_daemon.doc = None
    page = make_page(qtbot, fake_daemon)
    assert page.stack.currentWidget() is page.first_run
    plan = page.first_run.plan.text()
    assert "32 GiB" in plan and "2048 MiB" in plan and "2 CPUs" in plan
    assert "machines/default" in plan
    assert not page.start_button.isVisible()

    fake_daemon.boot = booting_records(10)
    qtbot.mouseClick(page.first_run.create_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.state == "running" and not page._busy, timeout=WAIT)
    methods = fake_daemon.methods()
    assert methods.index("machine.init") < methods.index("machine.start")
    init = next(p for m, p in fake_daemon.calls if m == "machine.init")
    assert init["disk_gib"] == 32 and init["cpus"] == 2 and init["memory_mib"] == 2048
    assert page.stack.currentWidget() is page.tabs
    assert all(page.overview.timeline.state_of(s) == "done"
               for s in ("qemu", "engine", "socket"))
    assert "docker --context berth ps" in page.message.text()
    qtbot.waitUntil(lambda: page.overview.usage.isVisible(), timeout=WAIT)
    assert page.overview.usage.env_line.edit.text() == (
        "export DOCKER_HOST=unix:///tmp/bm-x/run/docker.sock"
    )


def test_running_state_renders_and_polls_only_while_visible(qtbot: QtBot,
                                                            fake_daemon: FakeDaemon) -> None:
    fake_daemon.doc = status_doc("running")
    page = make_page(qtbot, fake_daemon)
    ov = page.overview
    qtbot.waitUntil(lambda: page.state == "running", timeout=WAIT)
    assert page.state_label.text() == "Running"
    assert ov.values["accelerator"].text() == "TCG"
    assert ov.slow_notice.isVisible()
    assert "/dev/kvm is missing" in ov.slow_notice.text()
    assert ov.values["cpus"].text() == "2"
    assert ov.values["memory"].text() == "2048 MiB"
    assert ov.values["disk"].text() == "32 GiB"
    assert ov.values["uptime"].text() == "1 min 15 s"
    assert page.polling
    qtbot.waitUntil(lambda: len(ov.cpu_chart.samples()) >= 2, timeout=WAIT)
    assert ov.cpu_chart.latest() == (37.5,)
    assert ov.mem_chart.latest() == (512 * 1024 * 1024,)
    assert page.stop_button.isEnabled() and page.pause_button.text() == "Pause"
    assert not page.start_button.isEnabled()

    page.hide()
    assert not page.polling
    count = fake_daemon.methods().count("machine.list")
    qtbot.wait(400)
    assert fake_daemon.methods().count("machine.list") == count

    # Stopped: one refresh on show, then no polling.
    fake_daemon.doc = status_doc("stopped")
    page.show()
    qtbot.waitUntil(lambda: page.state == "stopped", timeout=WAIT)
    assert not page.polling
    assert not ov.slow_notice.isVisible()
    assert page.start_button.isEnabled() and not page.stop_button.isEnabled()


def test_timeline_advances_live_while_booting(qtbot: QtBot, fake_daemon: FakeDaemon) -> None:
    page = make_page(qtbot, fake_daemon)
    gate = threading.Event()
    fake_daemon.boot_gate = gate
    fake_daemon.boot = booting_records(3)
    page.start_vm()
    timeline = page.overview.timeline
    qtbot.waitUntil(lambda: timeline.state_of("network") == "running", timeout=WAIT)
    assert [timeline.state_of(s) for s in ("qemu", "kernel", "init")] == ["done"] * 3
    assert timeline.state_of("sshd") == "pending"
    assert timeline.summary.text().startswith("Booting: stage 4 of 10, Network")
    assert timeline.item_texts("kernel")[2] == "3.5 s"
    assert page.stop_button.isEnabled()  # Stop cancels a boot
    assert not page.start_button.isEnabled()
    gate.set()
    qtbot.waitUntil(lambda: page.state == "running" and not page._busy, timeout=WAIT)


def test_failed_boot_shows_stage_reason_hint_and_console_tail(
    qtbot: QtBot, fake_daemon: FakeDaemon
) -> None:
    page = make_page(qtbot, fake_daemon)
    t0 = time.time() - 300
    fake_daemon.boot = [
        {"stage": stage_doc("qemu", "done", t0, t0 + 0.4)},
        {"stage": stage_doc("kernel", "failed", t0 + 0.4, t0 + 200.4,
                            "did not report within 200 s")},
    ]
    fake_daemon.boot_error = DaemonError(
        "The VM did not finish booting: stage 'kernel' did not report within 200 s.",
        "The guest kernel did not start: reinstall the guest image, or try the TCG "
        "accelerator in the machine settings.",
    )
    fake_daemon.console_text = "".join(f"console line {i}\n" for i in range(50)) + "<b>x</b>\n"
    page.start_vm()
    failure = page.overview.failure
    qtbot.waitUntil(lambda: failure.isVisible(), timeout=WAIT)
    assert "Linux kernel" in failure.title.text()
    assert failure.reason.text() == "Why: did not report within 200 s"
    assert "reinstall the guest image" in failure.hint.text()
    qtbot.waitUntil(lambda: "console line 49" in failure.tail.toPlainText(), timeout=WAIT)
    tail = failure.tail.toPlainText().splitlines()
    assert len(tail) == 30 and tail[-1] == "<b>x</b>"
    logs = next(p for m, p in fake_daemon.calls if m == "machine.logs")
    assert logs["which"] == "console" and logs["lines"] == 30
    assert page.overview.timeline.state_of("kernel") == "failed"
    assert page.overview.timeline.summary.text() == "Boot failed at “Linux kernel”."
    qtbot.waitUntil(lambda: page.start_button.isEnabled(), timeout=WAIT)
    for label in (failure.title, failure.reason, failure.hint):
        assert label.textFormat() == Qt.TextFormat.PlainText
    assert "Why:" in failure.details_text()


def test_launch_error_without_stage_progress_names_qemu(qtbot: QtBot,
                                                        fake_daemon: FakeDaemon) -> None:
    page = make_page(qtbot, fake_daemon)
    fake_daemon.boot_error = DaemonError("QEMU exited at start (code 1).", "See qemu.log.")
    fake_daemon.qemu_text = "qemu: linux kernel too old to load a ram disk\n"
    page.start_vm()
    failure = page.overview.failure
    qtbot.waitUntil(lambda: failure.isVisible(), timeout=WAIT)
    assert failure.stage_key == "qemu"
    assert "QEMU exited at start" in failure.reason.text()
    assert failure.hint.text() == "What to try: See qemu.log."
    qtbot.waitUntil(lambda: failure.qemu_output.isVisible(), timeout=WAIT)
    assert failure.qemu_output.text() == (
        "QEMU said: qemu: linux kernel too old to load a ram disk"
    )


def test_guest_text_is_plain(qtbot: QtBot, fake_daemon: FakeDaemon) -> None:
    fake_daemon.doc = status_doc("running", detail="<img src=x> <b>bold</b>")
    page = make_page(qtbot, fake_daemon)
    qtbot.waitUntil(lambda: page.state == "running", timeout=WAIT)
    label = page.overview.values["state"]
    assert label.textFormat() == Qt.TextFormat.PlainText
    assert "<img src=x> <b>bold</b>" in label.text()


def test_pause_resume_stop(qtbot: QtBot, fake_daemon: FakeDaemon) -> None:
    fake_daemon.doc = status_doc("running")
    page = make_page(qtbot, fake_daemon)
    qtbot.waitUntil(lambda: page.pause_button.isEnabled(), timeout=WAIT)
    qtbot.mouseClick(page.pause_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.state == "paused" and page.pause_button.isEnabled(),
                    timeout=WAIT)
    assert page.pause_button.text() == "Resume"
    qtbot.mouseClick(page.pause_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.state == "running" and page.stop_button.isEnabled(),
                    timeout=WAIT)
    qtbot.mouseClick(page.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.state == "stopped" and not page._busy, timeout=WAIT)
    stop = next(p for m, p in fake_daemon.calls if m == "machine.stop")
    assert stop["timeout"] == 30
    assert not page.polling


def test_delete_asks_first(qtbot: QtBot, fake_daemon: FakeDaemon,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    page = make_page(qtbot, fake_daemon)
    monkeypatch.setattr(page, "confirm_delete", lambda: False)
    page.delete_vm()
    qtbot.wait(100)
    assert "machine.rm" not in fake_daemon.methods()
    monkeypatch.setattr(page, "confirm_delete", lambda: True)
    page.delete_vm()
    qtbot.waitUntil(lambda: page.stack.currentWidget() is page.first_run, timeout=WAIT)
    assert "machine.rm" in fake_daemon.methods()


def test_reset_cancel_does_nothing(qtbot: QtBot, fake_daemon: FakeDaemon,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    page = make_page(qtbot, fake_daemon)
    monkeypatch.setattr(page, "ask_reset", lambda: "")
    calls = len(fake_daemon.calls)
    page.reset_vm()
    qtbot.wait(100)
    assert all(m == "machine.list" for m, _ in fake_daemon.calls[calls:])


def test_reset_drop_data_recreates_with_same_spec(qtbot: QtBot, fake_daemon: FakeDaemon,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake_daemon.doc = status_doc("stopped", spec={**status_doc()["spec"], "cpus": 3})
    page = make_page(qtbot, fake_daemon)
    monkeypatch.setattr(page, "ask_reset", lambda: "drop")
    page.reset_vm()
    qtbot.waitUntil(lambda: "Reset done" in page.message.text(), timeout=WAIT)
    methods = [m for m in fake_daemon.methods() if m != "machine.list"]
    assert methods == ["machine.spec", "machine.rm", "machine.init"]
    init = next(p for m, p in fake_daemon.calls if m == "machine.init")
    assert init["cpus"] == 3 and "version" not in init


def test_console_shows_replay_and_sends_typing(qtbot: QtBot, fake_daemon: FakeDaemon) -> None:
    fake_daemon.doc = status_doc("running")
    page = make_page(qtbot, fake_daemon)
    console = page.console
    qtbot.waitUntil(lambda: console.connected and "Serial console" in console.status.text(),
                    timeout=WAIT)

    def screen() -> str:
        console.terminal.flush()
        return console.terminal.text()

    qtbot.waitUntil(lambda: "berth login: root" in screen(), timeout=WAIT)
    peer = fake_daemon.peer()
    peer.sendall(b"live output line\r\n")
    qtbot.waitUntil(lambda: "live output line" in screen(), timeout=WAIT)
    console.terminal.send_text("uname -a\r")
    peer.settimeout(5)
    got = b""
    while b"\r" not in got:
        got += peer.recv(100)
    assert got == b"uname -a\r"

    # A new QEMU run (a restart) reconnects with a marker line.
    fake_daemon.doc = status_doc("running", pid=5151)
    page.refresh()
    qtbot.waitUntil(lambda: len(fake_daemon.console_peers) == 2 and console.connected,
                    timeout=WAIT)
    qtbot.waitUntil(lambda: "the VM was restarted" in screen(), timeout=WAIT)
    # Stopped: the console hangs up.
    fake_daemon.doc = status_doc("stopped")
    page.refresh()
    qtbot.waitUntil(lambda: not console.busy, timeout=WAIT)
    assert "not running" in console.status.text()


def test_settings_save_says_next_start_and_offers_restart(
    qtbot: QtBot, fake_daemon: FakeDaemon
) -> None:
    fake_daemon.doc = status_doc("running")
    page = make_page(qtbot, fake_daemon)
    panel = page.settings
    qtbot.waitUntil(lambda: panel.spec.get("cpus") == 2, timeout=WAIT)
    assert "4 CPUs, 8192 MiB" in panel.limits_label.text()
    assert not panel.save_button.isEnabled()
    panel.cpus.setValue(3)
    panel.memory.setValue(4096)
    assert panel.save_button.isEnabled()
    qtbot.mouseClick(panel.save_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.restart_button.isHidden(), timeout=WAIT)
    assert "next start" in panel.message.text()
    setp = next(p for m, p in fake_daemon.calls if m == "machine.set")
    assert setp == {"name": "default", "cpus": 3, "memory_mib": 4096}
    qtbot.mouseClick(panel.restart_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: fake_daemon.methods().count("machine.start") == 1, timeout=WAIT)
    assert fake_daemon.methods().index("machine.stop") < fake_daemon.methods().index(
        "machine.start")
    qtbot.waitUntil(lambda: page.state == "running" and not page._busy, timeout=WAIT)
    # The new run has the new settings: the "next start" note gives way by itself.
    qtbot.waitUntil(lambda: "in effect" in panel.message.text(), timeout=WAIT)
    assert panel.restart_button.isHidden()
    assert "next start" not in panel.message.text()


def test_settings_refusal_is_shown(qtbot: QtBot, fake_daemon: FakeDaemon) -> None:
    page = make_page(qtbot, fake_daemon)
    panel = page.settings
    qtbot.waitUntil(lambda: bool(panel.spec), timeout=WAIT)
    fake_daemon.set_error = DaemonError("qemu-img failed.", "Check the disk.")
    panel.disk.setValue(40)
    qtbot.mouseClick(panel.save_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Not saved" in panel.message.text(), timeout=WAIT)
    assert "qemu-img failed" in panel.message.text()
    assert panel.save_button.isEnabled()
    # Status reads (every 100 ms here) keep the answer on screen.
    count = fake_daemon.methods().count("machine.list")
    page.refresh()
    qtbot.waitUntil(lambda: fake_daemon.methods().count("machine.list") > count, timeout=WAIT)
    qtbot.wait(50)
    assert "Not saved" in panel.message.text()


def test_shares_add_remove_saved_with_machine_set(qtbot: QtBot, fake_daemon: FakeDaemon,
                                                  tmp_path: Any) -> None:
    page = make_page(qtbot, fake_daemon)
    panel = page.settings
    qtbot.waitUntil(lambda: bool(panel.spec), timeout=WAIT)
    folder = tmp_path / "my project"
    folder.mkdir()
    row = panel.shares.add_share(str(folder), read_only=True)
    assert row.tag == "my-project"
    assert panel.shares.table.item(0, 2).text() == "yes"
    qtbot.mouseClick(panel.save_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "applies at the next start" in panel.message.text()
                    or "apply at the next start" in panel.message.text(), timeout=WAIT)
    setp = next(p for m, p in fake_daemon.calls if m == "machine.set")
    assert setp["shares"] == [{"host_path": str(folder), "tag": "my-project",
                               "read_only": True, "transport": "auto"}]
    qtbot.waitUntil(lambda: bool(panel.spec.get("shares")), timeout=WAIT)
    assert panel.shares.table.rowCount() == 1
    panel.shares.table.selectRow(0)
    panel.shares.remove_selected()
    assert panel.shares.table.rowCount() == 0
    assert panel.changes() == {"shares": []}


def test_helpers() -> None:
    assert format_uptime(None) == "—"
    assert format_uptime(5) == "5 s"
    assert format_uptime(3725) == "1 h 02 min"
    assert format_duration(3.25) == "3.2 s" or format_duration(3.25) == "3.3 s"
    assert format_duration(130) == "2 min 10 s"
    assert failed_stage_from("stage 'engine' did not report", "qemu") == "engine"
    assert failed_stage_from("stage 'bogus' x", "kernel") == "kernel"
    assert StageRow("init", "running", started_at=100.0).duration(now=103.0) == 3.0
    small = default_spec("default", HostLimits(cpus=1, memory_mib=1024))
    assert small["cpus"] == 1 and small["memory_mib"] == 512


def test_stop_during_boot_cancels_without_a_failure_panel(qtbot: QtBot,
                                                         fake_daemon: FakeDaemon) -> None:
    page = make_page(qtbot, fake_daemon)
    gate = threading.Event()
    fake_daemon.boot_gate = gate
    fake_daemon.boot = booting_records(2)
    fake_daemon.boot_error = DaemonError(
        "The VM did not finish booting: stage 'init' was cancelled.", "")
    page.start_vm()
    qtbot.waitUntil(lambda: page.overview.timeline.state_of("init") == "running", timeout=WAIT)
    qtbot.waitUntil(lambda: page.stop_button.isEnabled(), timeout=WAIT)
    page.stop_vm()
    qtbot.waitUntil(lambda: "machine.stop" in fake_daemon.methods(), timeout=WAIT)
    gate.set()
    qtbot.waitUntil(lambda: page.message.text() == "Boot cancelled." or (
        not page._busy and not page._booting), timeout=WAIT)
    qtbot.waitUntil(lambda: not page._busy and not page._booting, timeout=WAIT)
    assert page.overview.failure.isHidden()
    assert page.start_button.isEnabled()


def test_viewing_the_page_never_starts_berthd(qtbot: QtBot, berth_home: Any) -> None:
    """With the real client and no berthd: the files say what exists; no daemon spawns."""
    from app.pages.machine import default_client

    page = MachinePage(None, client_factory=default_client, limits=LIMITS)
    qtbot.addWidget(page)
    page.show()
    qtbot.waitUntil(lambda: page.exists is False, timeout=WAIT)
    assert page.stack.currentWidget() is page.first_run
    assert not (berth_home / "daemon" / "berthd.log").exists()

    from vm_backend.machine.paths import MachinePaths
    from vm_backend.machine.spec import MachineSpec, save_spec

    paths = MachinePaths.for_machine("default", berth_home)
    paths.state_dir.mkdir(parents=True)
    save_spec(MachineSpec(cpus=1, memory_mib=1024, disk_gib=8), paths.spec_file)
    page.refresh()
    qtbot.waitUntil(lambda: page.state == "stopped", timeout=WAIT)
    assert page.overview.values["memory"].text() == "1024 MiB"
    assert "berthd is not running" in page.overview.values["state"].text()
    assert page.start_button.isEnabled()
    assert not (berth_home / "daemon" / "berthd.log").exists()
