"""The Berth window's entry point: ``main(argv)`` (the ``berth`` CLI calls it).

``berth`` opens the window; engines are discovered in the background, so the window
appears at once. ``berth --screenshot DIR`` renders every sidebar page and the Run dialog
offscreen to PNG files once data has loaded, then exits. Importing this module has no side
effects.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

SCREENSHOT_TIMEOUT_MS = 15_000
SCREENSHOT_SIZE = (1200, 760)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="berth", description="The Berth window.")
    parser.add_argument(
        "--screenshot", metavar="DIR", help="render each page to DIR/<page>.png and exit"
    )
    parser.add_argument(
        "--engine", metavar="URL", help="use this engine (e.g. unix:///run/podman/podman.sock)"
    )
    return parser.parse_known_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Open the Berth window (or render screenshots); returns the exit status."""
    args, qt_args = _parse(sys.argv[1:] if argv is None else argv)
    if args.screenshot:
        # Screenshots must work on a headless machine.
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PySide6.QtWidgets import QApplication

    from app.context import AppContext
    from app.theme import apply_theme
    from app.window import MainWindow
    from vm_backend.settings import Settings

    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(["berth", *qt_args])
    app.setApplicationName("Berth")
    app.setOrganizationName("Berth")
    app.setApplicationDisplayName("Berth")
    # Matches packaging/linux/io.github.berth.Berth.desktop (the Wayland app id; its icon).
    app.setDesktopFileName("io.github.berth.Berth")
    settings = Settings.load()
    apply_theme(app, settings.theme)

    ctx = AppContext(settings)
    # Ask for the engine first: the probe's round trips run on a worker while the window
    # is built (results arrive through the event loop, so never before the window exists).
    if args.engine:
        ctx.use_url(args.engine)
    else:
        ctx.discover()
    window = MainWindow(ctx)

    if args.screenshot:
        return _screenshots(app, window, ctx, Path(args.screenshot))
    from app.icons import app_icon
    from app.tray import attach_tray

    app.setWindowIcon(app_icon())

    def quit_berth() -> None:
        window.quitting = True
        window.close()
        app.quit()

    window.tray = attach_tray(ctx, window, quit_berth)
    if window.tray is not None:
        app.setQuitOnLastWindowClosed(False)
    window.show()
    status = app.exec()
    ctx.shutdown()
    return int(status)


def _screenshots(app: object, window: object, ctx: object, out: Path) -> int:
    """Wait for data (first diff, or a failure, or the timeout), then grab each page."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QWidget

    from app.context import AppContext
    from app.dialogs.run import RunDialog
    from app.pages import registry
    from app.window import MainWindow
    from vm_backend.engine.monitor import Diff

    assert isinstance(window, MainWindow) and isinstance(ctx, AppContext)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"berth: cannot write screenshots to {out}: {err}", file=sys.stderr)
        return 1
    window.resize(*SCREENSHOT_SIZE)
    window.show()

    loop = QEventLoop()
    timeout = QTimer()
    timeout.setSingleShot(True)
    timeout.timeout.connect(loop.quit)

    def on_diffs(diffs: list[Diff[object]]) -> None:
        if any(d.kind == "container" for d in diffs):
            loop.quit()

    def on_session(session: object) -> None:
        if session is not None:
            session.diffs.connect(on_diffs)  # type: ignore[attr-defined]

    ctx.session_changed.connect(on_session)
    ctx.session_failed.connect(lambda *_: loop.quit())
    if ctx.session is not None:
        on_session(ctx.session)
    timeout.start(SCREENSHOT_TIMEOUT_MS)
    loop.exec()

    def settle(ms: int) -> None:
        # Let queued results and stats arrive and the page paint, without blocking I/O.
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def save(widget: QWidget, name: str) -> None:
        path = out / name
        if not widget.grab().save(str(path)):
            print(f"berth: could not save {path}", file=sys.stderr)
        else:
            print(path)

    registry.load_page_modules()  # every page, not only those loaded so far
    first = window.current_page_key()
    for key in window.page_keys():
        page = window.show_page(key)
        settle(600)
        ready = getattr(page, "screenshot_ready", None)
        if callable(ready):
            # Live figures (the Containers page's stats) take a few seconds to arrive.
            deadline = time.monotonic() + 10
            while not ready() and time.monotonic() < deadline:
                settle(250)
        select_first = getattr(page, "select_first_row", None)
        if callable(select_first):
            select_first()  # so the details area shows something real
            settle(200)
        save(window, f"{key}.png")
    window.show_page(first)
    if ctx.session is not None:
        dialog = RunDialog(ctx, image=_first_image(ctx), parent=window)
        dialog.name.setText("web")
        dialog.command.setText("httpd -f -p 80")
        dialog.ports.add_row("8080:80")
        dialog.env.add_row("MODE=demo")
        dialog.show_command.setChecked(True)
        dialog.show()
        settle(400)
        save(dialog, "run-dialog.png")
        dialog.close()
    ctx.shutdown()
    return 0


def _first_image(ctx: object) -> str:
    from app.context import AppContext

    assert isinstance(ctx, AppContext)
    if ctx.session is None:
        return ""
    tags = sorted(t for img in ctx.session.snapshot("image") for t in img.tags if "<none>" not in t)
    return tags[0] if tags else ""


def run(argv: Sequence[str] | None = None, exit: Callable[[int], object] = sys.exit) -> None:
    """Console-script style wrapper: exits with ``main``'s status."""
    exit(main(argv))


if __name__ == "__main__":
    run()
