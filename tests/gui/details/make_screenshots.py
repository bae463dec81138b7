"""Render each details tab with a real container into docs/screenshots/details-<tab>.png.

Run from the repository root with dockerd up::

    QT_QPA_PLATFORM=offscreen python -m tests.gui.details.make_screenshots

Two labelled containers are created (a web server and a client fetching from it, so the
network chart has traffic) and removed again, also on failure.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import docker.errors
from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication

from app.pages.details import ContainerDetails
from vm_backend.engine.client import EngineClient

IMAGE = "berth-test/busybox:latest"
LABELS = {"berth.test": "details"}
OUT = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
CLIENT_SCRIPT = (
    "i=0; while true; do i=$((i+1)); "
    "echo \"GET http://web/ -> $(wget -q -O - http://web/ | wc -c) bytes (request $i)\"; "
    "[ $((i % 7)) -eq 0 ] && echo \"warning: slow upstream on request $i\" >&2; "
    "dd if=/dev/zero of=/tmp/blob bs=64k count=16 2>/dev/null; sleep 0.5; done"
)


def pause(ms: int) -> None:
    """Run the event loop for ``ms``. (PySide6's QTest.qWait keeps the GIL, which starves
    the reader threads; QEventLoop.exec releases it.)"""
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        pause(50)
    if not condition():
        raise TimeoutError("the tab did not get there in time")


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    client = EngineClient("unix:///var/run/docker.sock")
    api = client.api
    created: list[str] = []
    network = ""
    try:
        try:
            network = api.create_network("berth-details-shots", labels=dict(LABELS))["Id"]
            mode = "berth-details-shots"
        except docker.errors.APIError:
            mode = "none"  # no bridge available: charts without network traffic
        web = api.create_container(
            IMAGE, ["sh", "-c", "mkdir -p /www && seq 1 2000 > /www/index.html && "
                    "httpd -f -p 80 -h /www"],
            labels=dict(LABELS), name="berth-details-web",
            host_config=api.create_host_config(network_mode=mode),
            networking_config=api.create_networking_config(
                {mode: api.create_endpoint_config(aliases=["web"])}
            ) if network else None,
        )["Id"]
        created.append(web)
        api.start(web)
        cid = api.create_container(
            IMAGE, ["sh", "-c", CLIENT_SCRIPT], labels=dict(LABELS), name="shop-frontend",
            host_config=api.create_host_config(
                network_mode=mode, mem_limit="256m", nano_cpus=1_500_000_000, pids_limit=100
            ),
        )["Id"]
        created.append(cid)
        api.start(cid)

        OUT.mkdir(parents=True, exist_ok=True)
        details = ContainerDetails()
        details.resize(1200, 760)
        details.show()
        details.show_container(SimpleNamespace(client=client), cid)

        def shot(name: str) -> None:
            pause(300)
            path = OUT / f"details-{name}.png"
            details.grab().save(str(path))
            print("wrote", path)

        wait(lambda: details.logs.panel.model.line_count() >= 12, 30)
        details.logs.panel.toolbar.timestamps.setChecked(True)
        details.logs.panel.toolbar.highlight_edit.setText("warning")
        shot("logs")

        terminal = details.show_tab("Terminal")
        wait(lambda: terminal.connected)
        pause(300)
        terminal.terminal.send_text("id; uname -sr; ls -l /bin | head -n 8; df -h / | tail -n 1\r")
        wait(lambda: "overlay" in terminal.terminal.text())
        shot("terminal")

        stats = details.show_tab("Stats")
        wait(lambda: stats.sample_count >= 25 and stats.processes.rowCount() > 0, 60)
        shot("stats")

        inspect = details.show_tab("Inspect")
        wait(lambda: bool(inspect.data))
        inspect.search.setText("Memory")
        shot("inspect")

        files = details.show_tab("Files")
        wait(lambda: bool(files.entries))
        files.navigate("/bin")
        wait(lambda: files.path == "/bin" and len(files.entries) > 50)
        files.select_name("busybox")
        shot("files")

        isolation = details.show_tab("Isolation")
        wait(lambda: isolation.report is not None)
        shot("isolation")
        details.close()
        details.deleteLater()
        pause(300)  # let the closed streams' threads finish, the widget go
    finally:
        for ident in created:
            try:
                api.remove_container(ident, force=True)
            except docker.errors.APIError:
                pass
        if network:
            try:
                api.remove_network(network)
            except docker.errors.APIError:
                pass
    app.processEvents()  # the application must outlive every widget above
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
