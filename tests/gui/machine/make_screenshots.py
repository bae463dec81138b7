"""Render the Machine page booting, ready and failed into docs/screenshots/machine-*.png.

Run from the repository root (the guest image must be built; boots take minutes under
TCG)::

    QT_QPA_PLATFORM=offscreen python -m tests.gui.machine.make_screenshots

Everything is real: a private berthd under ``/tmp/bm-XXXX`` boots the real guest
(``booting`` is taken while a guest stage runs; ``ready`` and ``ports`` once the engine
socket answers and a container in the VM publishes a port: the host's busybox test image
is loaded into the VM's engine and runs ``httpd`` with ``-p 127.0.0.1:PORT:8080``), then a
second machine boots a copy of the image whose kernel is garbage (``failed``). Each shot
is taken in the light theme and again in the dark one (``dark-machine-*.png``). Both VMs
and daemons are stopped again, also on failure.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QApplication

from app.pages.machine import MachinePage
from app.theme import apply_theme
from tests.gui.machine.test_machine_vm import (
    DOCKER,
    IMAGE,
    TEST_IMAGE,
    _docker,
    _free_port,
    private_home,
)

OUT = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
BOOT_S = 600.0


def wait(app: QApplication, what: str, cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)  # a script, not a test: a plain event pump is enough here


def grab(app: QApplication, page: MachinePage, name: str) -> None:
    for _ in range(20):  # let layouts and the terminal settle
        app.processEvents()
        time.sleep(0.02)
    path = OUT / f"machine-{name}.png"
    page.grab().save(str(path))
    print(f"wrote {path}")
    apply_theme(app, "dark")
    for _ in range(10):
        app.processEvents()
        time.sleep(0.02)
    dark = OUT / f"dark-machine-{name}.png"
    page.grab().save(str(dark))
    print(f"wrote {dark}")
    apply_theme(app, "light")
    app.processEvents()


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)
    apply_theme(app, "light")
    OUT.mkdir(parents=True, exist_ok=True)
    with private_home():
        page = MachinePage(None)
        page.resize(1180, 900)
        page.show()
        wait(app, "first answer", lambda: page.exists is not None, 60)
        page.create_vm()
        timeline = page.overview.timeline
        # Mid-boot: a few stages done, the engine starting.
        wait(app, "a guest stage", lambda: (timeline.state_of("sshd") == "done"
             and timeline.running() is not None) or timeline.failed() is not None, BOOT_S)
        grab(app, page, "booting")
        wait(app, "ready", lambda: (page.state == "running" and not page._busy
             and timeline.state_of("socket") == "done") or timeline.failed() is not None,
             BOOT_S)
        # A container publishing a port, for the Ports tab.
        host = str((page.status or {}).get("docker_host") or "")
        saved = subprocess.run([DOCKER, "save", TEST_IMAGE], capture_output=True, check=True)
        loaded = _docker(host, "load", stdin=saved.stdout)
        assert loaded.returncode == 0, loaded.stderr
        port = _free_port()
        run = _docker(host, "run", "-d", "--label", "berth.test=1", "--name", "web",
                      "-p", f"127.0.0.1:{port}:8080", TEST_IMAGE, "httpd", "-f", "-p", "8080")
        assert run.returncode == 0, run.stderr
        wait(app, "the port row", lambda: any(r.host_port == port and r.listening
                                             for r in page.ports.rows), 120)
        # A few resource samples for the charts.
        wait(app, "chart samples", lambda: len(page.overview.mem_chart.samples()) >= 4, 60)
        grab(app, page, "ready")
        page.tabs.setCurrentWidget(page.ports)
        page.ports.table.selectRow(0)
        grab(app, page, "ports")
        page.tabs.setCurrentWidget(page.overview)
        page.shutdown()
        page.close()
    with tempfile.TemporaryDirectory(prefix="bm-img-") as tmp:
        broken = Path(tmp) / "image"
        shutil.copytree(IMAGE, broken)
        (broken / "vmlinuz").write_bytes(os.urandom(1 << 20))
        with private_home(BERTH_GUEST_IMAGE_DIR=str(broken)):
            page = MachinePage(None)
            page.resize(1180, 900)
            page.show()
            wait(app, "first answer", lambda: page.exists is not None, 60)
            page.create_vm()
            failure = page.overview.failure
            wait(app, "the failure", failure.isVisible, BOOT_S)
            wait(app, "the console tail",
                 lambda: "reading the console" not in failure.tail.toPlainText()
                 and (failure.stage_key != "qemu" or failure.qemu_output.isVisible()), 60)
            grab(app, page, "failed")
            page.shutdown()
            page.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
