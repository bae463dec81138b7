"""The main window: page registry and placeholders, status bar, and the engine banner,
including against a private dockerd that the test stops and starts again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from PySide6.QtWidgets import QLabel

from app.dialogs.run import RunDialog
from app.pages import registry
from app.pages.placeholder import PLANNED, PlaceholderPage, register_placeholders
from app.window import MainWindow
from tests.gui.conftest import FakeSession, endpoint_for


@pytest.fixture
def window(qtbot: Any, ctx: Any) -> MainWindow:
    win = MainWindow(ctx)
    qtbot.addWidget(win)
    win.show()
    return win


def test_sidebar_has_every_page_and_placeholders_say_what_is_coming(window: MainWindow) -> None:
    keys = window.page_keys()
    assert keys[0] == "containers"
    for key in ("images", "volumes", "networks", "machine", "settings"):
        assert key in keys
        page = window.show_page(key)
        assert window.current_page_key() == key
        if isinstance(page, PlaceholderPage):
            texts = " ".join(label.text() for label in page.findChildren(QLabel))
            assert PLANNED[key][0] in texts
            for item in PLANNED[key][2]:
                assert item in texts
    machine = window.page_widget("machine")
    if isinstance(machine, PlaceholderPage):
        assert any("Boot timeline" in i for i in machine.items)


def test_registering_a_real_page_replaces_the_placeholder_live(
    qtbot: Any, window: MainWindow
) -> None:
    original = registry.page("networks")
    assert original is not None
    built: list[Any] = []

    def factory(ctx: Any) -> QLabel:
        label = QLabel("real networks page")
        built.append(label)
        return label

    window.show_page("networks")
    try:
        registry.register_page("networks", "Networks", factory)
        assert built and window.page_widget("networks") is built[0]  # current: rebuilt now
        # A placeholder registered afterwards must not undo the real page.
        register_placeholders()
        assert window.page_widget("networks") is built[0]
        # A brand-new key gets its own sidebar entry, in order.
        registry.register_page("test-extra", "Extra", lambda ctx: QLabel("extra"), order=75)
        assert "test-extra" in window.page_keys()
        keys = window.page_keys()
        assert keys.index("networks") < keys.index("test-extra") < keys.index("machine")
    finally:
        registry.unregister_page("test-extra")
        registry.unregister_page("networks")
        if original.placeholder:
            register_placeholders()
        else:
            registry.register_page(original.key, original.title, original.factory, original.icon)


def test_status_bar_banner_and_retry_with_a_fake_session(
    qtbot: Any, window: MainWindow, ctx: Any
) -> None:
    session = FakeSession()
    session.connected = False
    ctx.use_session(session)
    session.come_back()
    assert "fake" in window.engine_state.text() and "connected" in window.engine_state.text()
    assert not window.engine_down
    session.go_down("<b>the socket went away</b>")
    assert window.engine_down
    assert window.banner.reason.text().startswith("<b>the socket went away</b>")
    window.banner.retry.click()
    assert session.retries == 1
    session.come_back()
    assert not window.engine_down


def test_notify_and_run_requests_reach_the_window(
    qtbot: Any, window: MainWindow, ctx: Any
) -> None:
    ctx.use_session(FakeSession())
    ctx.notify("Pull finished", "alpine:3")
    assert "Pull finished: alpine:3" in window.statusBar().currentMessage()
    ctx.request_run("berth-test/busybox:latest")
    dialogs = [d for d in window.findChildren(RunDialog) if d.isVisible()]
    assert len(dialogs) == 1
    assert dialogs[0].image.currentText() == "berth-test/busybox:latest"
    dialogs[0].reject()


# ---- a private dockerd -------------------------------------------------------------------------
class PrivateDockerd:
    """A dockerd of our own (never the shared one), which a test may stop and start."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "d.sock"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Own network namespace: a --bridge=none dockerd deletes the host's docker0 at start.
        argv = [
            "unshare", "--net", "--",
            "dockerd", "--host", self.url, "--data-root", str(self.base / "root"),
            "--exec-root", str(self.base / "exec"), "--pidfile", str(self.base / "d.pid"),
            "--bridge=none", "--iptables=false",
        ]
        log = open(self.base / "dockerd.log", "ab")  # noqa: SIM115 - owned by the process
        if shutil.which("setpriv"):
            # The daemon gets SIGTERM when the test process dies, however it dies.
            argv = ["setpriv", "--pdeathsig", "TERM", *argv]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def answers(self) -> bool:
        try:
            client = docker.APIClient(base_url=self.url, timeout=2, version="auto")
            client.ping()
            client.close()
        except Exception:  # noqa: BLE001 - not up yet
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def private_dockerd(tmp_path_factory: pytest.TempPathFactory, qtbot: Any) -> Iterator[Any]:
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip("needs dockerd and root to run a private engine")
    # A short path (unix socket paths are limited to about 100 bytes), fresh per test.
    base = Path(tempfile.mkdtemp(prefix="berth-gui-dd-", dir="/tmp"))
    daemon = PrivateDockerd(base)
    daemon.start()
    try:
        qtbot.waitUntil(daemon.answers, timeout=30_000)
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.engine
def test_banner_appears_when_the_engine_goes_away_and_clears_when_it_returns(
    qtbot: Any, window: MainWindow, ctx: Any, private_dockerd: PrivateDockerd
) -> None:
    ctx.switch_engine(endpoint_for(private_dockerd.url, name="private dockerd"))
    qtbot.waitUntil(lambda: ctx.session is not None and ctx.session.connected, timeout=15_000)
    assert not window.engine_down
    assert "private dockerd" in window.engine_state.text()

    private_dockerd.stop()
    qtbot.waitUntil(lambda: window.engine_down, timeout=15_000)
    assert window.banner.reason.text()
    assert "unreachable" in window.engine_state.text()

    private_dockerd.start()
    qtbot.waitUntil(lambda: not window.engine_down, timeout=30_000)
    assert "connected" in window.engine_state.text()


@pytest.mark.engine
def test_an_engine_down_at_start_is_picked_up_when_it_starts(
    qtbot: Any, window: MainWindow, ctx: Any, private_dockerd: PrivateDockerd
) -> None:
    private_dockerd.stop()
    ctx.switch_engine(endpoint_for(private_dockerd.url, name="late dockerd"))
    qtbot.waitUntil(lambda: window.engine_down, timeout=15_000)
    assert "Cannot connect to late dockerd" in window.banner.title.text()
    private_dockerd.start()
    qtbot.waitUntil(lambda: not window.engine_down, timeout=30_000)
    assert ctx.session is not None


@pytest.mark.engine
def test_screenshot_mode_renders_every_page_and_the_run_dialog(
    qtbot: Any, tmp_path: Path, docker_url: str
) -> None:
    from PySide6.QtGui import QImage

    from app.main import main

    out = tmp_path / "shots"
    assert main(["--screenshot", str(out), "--engine", docker_url]) == 0
    names = {p.name for p in out.glob("*.png")}
    for key in ("containers", "images", "volumes", "networks", "machine", "settings"):
        assert f"{key}.png" in names
    assert "run-dialog.png" in names
    image = QImage(str(out / "containers.png"))
    assert image.width() >= 1000 and image.height() >= 700


def test_importing_main_has_no_side_effects() -> None:
    import sys

    code = (
        "import sys, app.main; "
        "assert 'PySide6.QtWidgets' not in sys.modules, 'Qt imported'; "
        "assert not hasattr(app.main, 'app'), 'an application was created'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
