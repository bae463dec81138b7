"""Render the Machine page booting, ready and failed into docs/screenshots/machine-*.png.

Run from the repository root (the guest image must be built; boots take minutes under
TCG)::

    QT_QPA_PLATFORM=offscreen python -m tests.gui.machine.make_screenshots

Everything is real: a private berthd under ``/tmp/bm-XXXX`` boots the real guest
(``booting`` is taken while a guest stage runs, ``ready`` once the engine socket answers),
then a second machine boots a copy of the image whose kernel is garbage (``failed``).
Both VMs and daemons are stopped again, also on failure.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QApplication

from app.pages.machine import MachinePage
from tests.gui.machine.test_machine_vm import IMAGE, private_home

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


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)
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
        # A few resource samples for the charts.
        wait(app, "chart samples", lambda: len(page.overview.mem_chart.samples()) >= 4, 60)
        grab(app, page, "ready")
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
