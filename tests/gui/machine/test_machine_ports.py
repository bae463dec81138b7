"""The Machine page's Ports tab, guest figures and live share states, against a fake berthd."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices
from pytestqt.qtbot import QtBot

from app.pages.machine import MachinePage
from app.pages.machine_guest import GuestFigures, guest_figures
from app.pages.machine_ports import PortRow, parse_ports, state_words
from app.pages.machine_settings import HostLimits, share_state_words

from .conftest import FakeDaemon, spec_doc, status_doc

LIMITS = HostLimits(cpus=4, memory_mib=8192)
WAIT = 5000


def port(host_port: int, state: str = "listening", **extra: Any) -> dict[str, Any]:
    doc = {"container_id": "c" * 64, "container_name": "/web", "protocol": "tcp",
           "guest_port": 80, "host_address": "127.0.0.1", "host_port": host_port,
           "state": state, "connections": 0}
    doc.update(extra)
    return doc


def make_page(qtbot: QtBot, daemon: FakeDaemon) -> MachinePage:
    page = MachinePage(None, client_factory=daemon.client, limits=LIMITS, poll_ms=100)
    qtbot.addWidget(page)
    page.resize(1000, 800)
    page.show()
    qtbot.waitUntil(lambda: page.exists is not None, timeout=WAIT)
    return page


def cells(page: MachinePage, row: int) -> list[str]:
    table = page.ports.table
    return [table.item(row, c).text() for c in range(table.columnCount())]


def test_rows_follow_the_status_live(qtbot: QtBot, fake_daemon: FakeDaemon) -> None:
    fake_daemon.doc = status_doc("running", ports=[])
    page = make_page(qtbot, fake_daemon)
    tab = page.ports
    qtbot.waitUntil(lambda: page.state == "running", timeout=WAIT)
    assert tab.table.rowCount() == 0
    assert "No published ports" in tab.summary.text()
    # A container publishes a port: the next poll shows it, with its plain words.
    fake_daemon.doc = {**fake_daemon.doc, "ports": [port(8080, connections=2)]}
    qtbot.waitUntil(lambda: tab.table.rowCount() == 1, timeout=WAIT)
    assert cells(page, 0) == ["web", "80", "127.0.0.1", "8080", "TCP", "Listening", "2"]
    tab.table.selectRow(0)
    assert tab.open_button.isEnabled()
    # Live: a second port arrives, the selection stays on the first one.
    fake_daemon.doc = {**fake_daemon.doc, "ports": [
        port(8080), port(5353, protocol="udp", connections=None),
        port(5354, protocol="udp", state="udp: not forwarded yet")]}
    qtbot.waitUntil(lambda: tab.table.rowCount() == 3, timeout=WAIT)
    assert tab.selected_row() is not None and tab.selected_row().host_port == 8080
    # A QEMU-forwarded UDP port has no flow count berthd could know: "—", not 0.
    assert cells(page, 0)[4] == "UDP" and cells(page, 0)[5:] == ["Listening", "—"]
    assert cells(page, 1)[5] == "UDP: not forwarded (the VM has no agent)"
    # The VM stops: the rows go with it.
    fake_daemon.doc = status_doc("stopped", ports=[port(8080)])
    page.refresh()
    qtbot.waitUntil(lambda: tab.table.rowCount() == 0, timeout=WAIT)
    assert "while the VM runs" in tab.summary.text()
    assert not tab.open_button.isEnabled()


def test_conflict_rows_say_so_and_cannot_be_opened(qtbot: QtBot, fake_daemon: FakeDaemon,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl",
                        staticmethod(lambda url: opened.append(url.toString()) or True))
    fake_daemon.doc = status_doc("running", ports=[
        port(8080), port(9090, state="conflict: port in use", container_name="/<b>db</b>"),
    ])
    page = make_page(qtbot, fake_daemon)
    tab = page.ports
    qtbot.waitUntil(lambda: tab.table.rowCount() == 2, timeout=WAIT)
    conflict = cells(page, 1)
    assert conflict[0] == "<b>db</b>"  # engine-supplied names are plain cell text
    assert conflict[5].startswith("Conflict: port in use")
    assert "9090" in conflict[5]
    assert "1 not reachable" in tab.summary.text()
    assert tab.open_row(1) is False
    tab.table.selectRow(1)
    assert not tab.open_button.isEnabled()
    # Double-click on the listening row opens localhost in the browser.
    tab.table.cellDoubleClicked.emit(0, 2)
    assert opened == ["http://localhost:8080/"]
    tab.table.selectRow(0)
    tab.open_button.click()
    assert opened == ["http://localhost:8080/"] * 2


def test_lan_opt_in_asks_first_and_saves_through_machine_set(
    qtbot: QtBot, fake_daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_daemon.doc = status_doc("running", ports=[])
    page = make_page(qtbot, fake_daemon)
    tab = page.ports
    qtbot.waitUntil(lambda: page.state == "running", timeout=WAIT)
    assert not tab.lan_box.isChecked() and "127.0.0.1" in tab.lan_note.text()
    answers = [False]
    asked: list[bool] = []

    def confirm() -> bool:
        asked.append(True)
        return answers[0]

    monkeypatch.setattr(tab, "confirm_expose", confirm)
    # Cancelled: nothing is sent and the box stays off.
    tab.lan_box.click()
    assert asked == [True] and not tab.lan_box.isChecked()
    assert "machine.set" not in fake_daemon.methods()
    # Confirmed: saved through machine.set, applies at the next start, Restart offered.
    answers[0] = True
    gate = threading.Event()
    fake_daemon.set_gate = gate
    tab.lan_box.click()
    # While berthd has not answered, status polls do not offer the box again.
    count = fake_daemon.methods().count("machine.list")
    qtbot.waitUntil(lambda: fake_daemon.methods().count("machine.list") > count + 1,
                    timeout=WAIT)
    assert not tab.lan_box.isEnabled()
    gate.set()
    qtbot.waitUntil(lambda: "machine.set" in fake_daemon.methods(), timeout=WAIT)
    params = next(p for m, p in fake_daemon.calls if m == "machine.set")
    assert params == {"name": "default", "expose_ports_on_lan": True}
    qtbot.waitUntil(lambda: tab.lan_box.isChecked() and tab.lan_box.isEnabled(), timeout=WAIT)
    assert "next start" in tab.lan_note.text() and "0.0.0.0" in tab.lan_note.text()
    assert not tab.restart_button.isHidden()
    # The next QEMU run applies it: the note says so no more.
    fake_daemon.doc = {**fake_daemon.doc, "pid": 5151}
    qtbot.waitUntil(lambda: "next start" not in tab.lan_note.text(), timeout=WAIT)
    assert tab.restart_button.isHidden() and "0.0.0.0" in tab.lan_note.text()
    assert fake_daemon.doc is not None and fake_daemon.doc["spec"]["expose_ports_on_lan"]
    # Turning it off needs no warning.
    tab.lan_box.click()
    qtbot.waitUntil(lambda: not tab.lan_box.isChecked() and tab.lan_box.isEnabled(),
                    timeout=WAIT)
    assert len(asked) == 2
    sets = [p for m, p in fake_daemon.calls if m == "machine.set"]
    assert sets[-1]["expose_ports_on_lan"] is False


def test_lan_refusal_is_shown(qtbot: QtBot, fake_daemon: FakeDaemon,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from vm_backend.daemon.client import DaemonError

    fake_daemon.doc = status_doc("stopped")
    fake_daemon.set_error = DaemonError("The machine is locked.", "")
    page = make_page(qtbot, fake_daemon)
    monkeypatch.setattr(page.ports, "confirm_expose", lambda: True)
    page.ports.lan_box.click()
    qtbot.waitUntil(lambda: "not saved" in page.ports.lan_note.text(), timeout=WAIT)
    assert "locked" in page.ports.lan_note.text()
    assert not page.ports.lan_box.isChecked() and page.ports.lan_box.isEnabled()


def test_guest_figures_charted_when_the_agent_reports(qtbot: QtBot,
                                                      fake_daemon: FakeDaemon) -> None:
    gib = 1024 ** 3
    fake_daemon.doc = status_doc("running", agent={
        "connected": True, "memory": {"used_bytes": gib // 2, "total_bytes": 2 * gib},
        "disk": {"used_bytes": 3 * gib, "total_bytes": 31 * gib}, "cpu_percent": 12.5,
    })
    page = make_page(qtbot, fake_daemon)
    guest = page.overview.guest
    qtbot.waitUntil(lambda: len(guest.mem_chart.samples()) >= 2, timeout=WAIT)
    assert guest.mem_chart.latest() == (gib / 2,)
    assert guest.cpu_chart.latest() == (12.5,)
    assert guest.cpu_chart.isVisible() and guest.mem_chart.isVisible()
    assert "3.0 GiB used of 31.0 GiB" in guest.disk.text()
    assert "from the Berth agent" in guest.note.text() and "2.0 GiB" in guest.note.text()


def test_missing_agent_is_said_plainly(qtbot: QtBot, fake_daemon: FakeDaemon) -> None:
    fake_daemon.doc = status_doc("running")  # no "agent" key at all
    page = make_page(qtbot, fake_daemon)
    guest = page.overview.guest
    qtbot.waitUntil(lambda: page.state == "running", timeout=WAIT)
    assert guest.isVisible() and not guest.cpu_chart.isVisible()
    assert "need the Berth agent" in guest.note.text() and "does not send" in guest.note.text()
    fake_daemon.doc = {**fake_daemon.doc, "agent": {"connected": False}}
    qtbot.waitUntil(lambda: "not connected yet" in guest.note.text(), timeout=WAIT)
    assert guest.mem_chart.isHidden() and not guest.cpu_chart.samples()


def test_share_states_from_the_running_vm(qtbot: QtBot, fake_daemon: FakeDaemon,
                                          tmp_path: Any) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    spec = spec_doc(shares=[{"host_path": str(a), "tag": "a", "read_only": True},
                            {"host_path": str(b), "tag": "b", "read_only": False}])
    fake_daemon.doc = status_doc("running", spec=spec, shares=[
        {"tag": "a", "host_path": str(a), "guest_path": str(a), "read_only": True,
         "transport": "9p", "state": "mounted"},
    ])
    page = make_page(qtbot, fake_daemon)
    table = page.settings.shares.table
    qtbot.waitUntil(lambda: table.rowCount() == 2 and table.item(0, 3) is not None
                    and table.item(0, 3).text().startswith("mounted"), timeout=WAIT)
    assert table.item(0, 3).text() == f"mounted at {a} (9p, read-only)"
    assert table.item(1, 3).text() == "not mounted: applies at the next start"
    assert "next start" in page.settings.shares.note.text()
    fake_daemon.doc = {**fake_daemon.doc, "shares": [
        {"tag": "a", "state": "failed", "error": "mount: permission denied"},
    ]}
    qtbot.waitUntil(lambda: table.item(0, 3).text().startswith("error"), timeout=WAIT)
    assert table.item(0, 3).text() == "error: mount: permission denied"
    fake_daemon.doc = status_doc("stopped", spec=spec)
    page.refresh()
    qtbot.waitUntil(lambda: table.item(0, 3).text() == "VM not running", timeout=WAIT)


def test_parsers_are_defensive() -> None:
    assert parse_ports(None) == [] and parse_ports({"ports": "junk"}) == []
    rows = parse_ports({"ports": [{"host_port": "x"}, 3, port(80, host_address="0.0.0.0")]})
    assert [r.host_port for r in rows] == [0, 80]
    assert not rows[0].openable and rows[1].url() == "http://localhost:80/"
    assert PortRow.from_json(port(81, host_address="192.168.1.5")).url() == (
        "http://192.168.1.5:81/"
    )
    assert state_words(PortRow.from_json(port(1, state="error: boom"))) == "Error: boom"
    assert guest_figures({}) is None
    assert guest_figures({"agent": {"connected": False, "cpu_percent": 3}}) is None
    flat = guest_figures({"agent": {"memory_total_bytes": 100, "memory_available_bytes": 30,
                                    "cpu": {"percent": 4}, "disk_used_bytes": True}})
    assert flat is not None and flat.memory_used == 70 and flat.cpu_percent == 4
    assert flat.disk_used is None  # a bool is not a figure
    # berthd's shape (docs/agent.md): the agent snapshot's flat keys, or null.
    snap = guest_figures({"agent": {"connected": True, "memory_total_bytes": 2048,
                                    "memory_used_bytes": 512, "disk_total_bytes": 10,
                                    "disk_used_bytes": 4, "cpu_percent": 7.5, "error": ""}})
    assert snap == GuestFigures(7.5, 512, 2048, 4, 10)
    assert guest_figures({"agent": None}) is None
    assert share_state_words({"state": "mounted"}) == "mounted"
    assert share_state_words({"state": "error: no 9p"}) == "error: no 9p"
    assert QUrl(rows[1].url()).port() == 80


def test_a_start_from_elsewhere_shows_while_the_page_is_open(
    qtbot: QtBot, fake_daemon: FakeDaemon
) -> None:
    fake_daemon.doc = status_doc("stopped")
    page = MachinePage(None, client_factory=fake_daemon.client, limits=LIMITS, poll_ms=100,
                       idle_poll_ms=150)
    qtbot.addWidget(page)
    page.show()
    qtbot.waitUntil(lambda: page.state == "stopped", timeout=WAIT)
    assert page.idle_polling and not page.polling
    # The tray (or berth machine start) starts the VM: the page notices on its own.
    fake_daemon.doc = status_doc("running", ports=[port(8080)])
    qtbot.waitUntil(lambda: page.state == "running", timeout=WAIT)
    assert page.polling and not page.idle_polling
    qtbot.waitUntil(lambda: page.ports.table.rowCount() == 1, timeout=WAIT)
    assert page.console.busy  # the console attaches to the new QEMU run
    page.hide()
    assert not page.polling and not page.idle_polling
    page.shutdown()
