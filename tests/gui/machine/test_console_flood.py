"""The console's flood path keeps every line and ends on a painted, up-to-date screen.

The speed is bench/bench_console.py's business; this checks what the flood optimisations
(adaptive parse slices, repaints coalesced mid-flood, short lines painting only their
written cells) must not break: nothing lost or reordered, the final screen painted, the
view still typing to the guest afterwards.
"""

from __future__ import annotations

import threading

from pytestqt.qtbot import QtBot

from app.pages.machine import MachinePage
from app.pages.machine_settings import HostLimits

from .conftest import FakeDaemon, status_doc

LINES = 30_000


def test_a_console_flood_arrives_whole_and_ends_painted(qtbot: QtBot,
                                                        fake_daemon: FakeDaemon) -> None:
    fake_daemon.doc = status_doc("running")
    fake_daemon.console_text = ""
    page = MachinePage(None, client_factory=fake_daemon.client,
                       limits=HostLimits(cpus=4, memory_mib=8192), poll_ms=100)
    qtbot.addWidget(page)
    page.resize(1000, 700)
    page.show()
    page.tabs.setCurrentWidget(page.console)
    console = page.console
    qtbot.waitUntil(lambda: console.connected, timeout=10_000)
    peer = fake_daemon.peer()
    term = console.terminal

    def flood() -> None:
        chunks = []
        for i in range(LINES):
            text = f"line {i:05d}" if i % 7 else f"\x1b[1;33mline {i:05d}\x1b[0m"
            chunks.append(text.encode() + b"\r\n")
            if len(chunks) == 1000:
                peer.sendall(b"".join(chunks))
                chunks.clear()
        peer.sendall(b"".join(chunks) + b"flood-end\r\n")

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    qtbot.waitUntil(
        lambda: not writer.is_alive() and term.pending_bytes == 0
        and "flood-end" in term.text(include_scrollback=False),
        timeout=120_000,
    )
    text = term.text()
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("line ")]
    # The scrollback keeps its last 10,000 lines: they are the flood's last ones, in order.
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == list(range(LINES - len(numbers), LINES))
    assert len(numbers) >= 9_000
    # The last pass repainted: nothing is owed to the screen once the flood is parsed.
    qtbot.waitUntil(lambda: not term._repaint_owed, timeout=5_000)
    # The console still types to the guest.
    term.send_text("echo after-the-flood\r")
    peer.settimeout(10)
    got = b""
    while b"after-the-flood\r" not in got:
        got += peer.recv(4096)
    page.shutdown()
