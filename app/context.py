"""What every page shares: settings, the known engines and the active engine session.

Pages receive one :class:`AppContext`. They read ``ctx.session`` (it may be ``None`` while
no engine is chosen or reachable) and listen to ``session_changed`` to follow a switch of
engine. Nothing here blocks the GUI thread: building a session contacts the engine (the
docker client asks for the API version), so that happens on a worker thread.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QCoreApplication, QObject, QTimer, Signal

from app.bridge import Op, user_message
from app.session import EngineSession
from vm_backend.engine.discovery import choose, discover, normalise_url, probe
from vm_backend.engine.models import Endpoint, EndpointSource
from vm_backend.settings import Settings

log = logging.getLogger(__name__)

RETRY_MS = 2000  # how often an engine that could not be reached at all is tried again


def _build_session(endpoint: Endpoint) -> EngineSession:
    """Create a session off the GUI thread, then hand it to the GUI thread.

    ``EngineSession.__init__`` creates a docker client with ``version="auto"``, which is a
    blocking round trip to the engine (and raises when it is down). The QObject is created
    here with this worker as its thread and then pushed to the GUI thread, so its batching
    timer lives where its signals are consumed.
    """
    session = EngineSession(endpoint)
    app = QCoreApplication.instance()
    if app is not None:
        session.moveToThread(app.thread())
    return session


class AppContext(QObject):
    """Shared state of the window; lives on the GUI thread."""

    session_changed = Signal(object)  # EngineSession | None
    endpoints_changed = Signal(list)  # list[Endpoint]
    # Why there is no session: the endpoint (or None) and the reason, for the banner.
    session_failed = Signal(object, str)
    notified = Signal(str, str)  # title, text
    page_requested = Signal(str)  # sidebar key
    run_requested = Signal(str)  # image to prefill the Run dialog with ("" for none)

    def __init__(self, settings: Settings | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings if settings is not None else Settings.load()
        self.endpoints: list[Endpoint] = []
        self.session: EngineSession | None = None
        self.endpoint: Endpoint | None = None  # the one chosen, even while unreachable
        self.discovering = False
        self.failure = ""
        self._generation = 0  # drops late results of an older switch
        self._retry_timer = QTimer(self)
        self._retry_timer.setSingleShot(True)
        self._retry_timer.setInterval(RETRY_MS)
        self._retry_timer.timeout.connect(self._retry_build)

    # ---- engines ------------------------------------------------------------------------
    def discover(self) -> None:
        """Probe the known endpoints in the background, then use the preferred one."""
        self.discovering = True
        extra = list(self.settings.extra_endpoints)
        Op(discover, extra).success(self._discovered).failure(self._discovery_failed).run(self)

    def _discovered(self, endpoints: list[Endpoint]) -> None:
        self.discovering = False
        self.endpoints = endpoints
        self.endpoints_changed.emit(endpoints)
        if self.session is not None:
            return
        chosen = choose(endpoints, self.settings.default_engine)
        if chosen is None:
            self.failure = _no_engine_reason(endpoints)
            self.session_failed.emit(None, self.failure)
            return
        self.switch_engine(chosen)

    def _discovery_failed(self, err: BaseException) -> None:
        self.discovering = False
        self.failure = f"Looking for engines failed: {user_message(err)}"
        self.session_failed.emit(None, self.failure)

    def use_url(self, url: str) -> None:
        """Use the engine at ``url`` only (``berth --engine URL``), probed in the background."""
        url = normalise_url(url)
        self.discovering = True

        def probed(endpoint: Endpoint) -> None:
            self.discovering = False
            self.endpoints = [endpoint]
            self.endpoints_changed.emit(self.endpoints)
            self.switch_engine(endpoint)

        Op(probe, url, url, EndpointSource.MANUAL).success(probed).failure(
            self._discovery_failed
        ).run(self)

    def switch_engine(self, endpoint: Endpoint) -> None:
        """Make ``endpoint`` the active engine (the old session is stopped off-thread)."""
        self._generation += 1
        self._retry_timer.stop()
        self._drop_session()
        self.endpoint = endpoint
        self.failure = ""
        self.session_changed.emit(None)
        self._build(endpoint, self._generation)

    def _build(self, endpoint: Endpoint, generation: int) -> None:
        def built(session: EngineSession) -> None:
            if generation != self._generation:
                Op(session.stop).finally_(session.deleteLater).run()
                return
            session.setParent(self)
            self.session = session
            self.failure = ""
            session.start()
            self.session_changed.emit(session)

        def failed(err: BaseException) -> None:
            if generation != self._generation:
                return
            reason = user_message(err)
            if reason != self.failure:
                self.failure = reason
                self.session_failed.emit(endpoint, reason)
            # Keep trying quietly, so the window recovers by itself when the engine starts.
            self._retry_timer.start()

        Op(_build_session, endpoint).success(built).failure(failed).run(self)

    def _retry_build(self) -> None:
        if self.session is None and self.endpoint is not None:
            self._build(self.endpoint, self._generation)

    def use_session(self, session: EngineSession) -> None:
        """Adopt an already built session (tests and embedders; it is started here)."""
        self._generation += 1
        self._retry_timer.stop()
        self._drop_session()
        self.endpoint = session.endpoint
        self.failure = ""
        self.session = session
        session.start()
        self.session_changed.emit(session)

    def retry(self) -> None:
        """The user pressed Retry: reconnect the session, or build it again now."""
        if self.session is not None:
            self.session.retry()
        elif self.endpoint is not None:
            self._retry_timer.stop()
            self._build(self.endpoint, self._generation)
        else:
            self.discover()

    def _drop_session(self) -> None:
        old, self.session = self.session, None
        if old is None:
            return
        # Joining the monitor's threads can take up to a second: never on the GUI thread.
        Op(old.stop).finally_(old.deleteLater).run()

    def shutdown(self) -> None:
        """Stop the session (at exit); waits briefly, as the window is already gone."""
        self._generation += 1
        self._retry_timer.stop()
        old, self.session = self.session, None
        if old is not None:
            old.stop()

    # ---- messages -----------------------------------------------------------------------
    def notify(self, title: str, text: str) -> None:
        """Tell the user something happened (status bar and, if present, the tray)."""
        log.info("%s: %s", title, text)
        self.notified.emit(title, text)

    def show_page(self, key: str) -> None:
        self.page_requested.emit(key)

    def request_run(self, image: str = "") -> None:
        """Open the Run dialog, prefilled with ``image`` (the Images page uses this)."""
        self.run_requested.emit(image)


def _no_engine_reason(endpoints: list[Endpoint]) -> str:
    if not endpoints:
        return "No container engine was found."
    lines = ["No container engine answers:"]
    for ep in endpoints:
        hint = f" {ep.hint}" if ep.hint else ""
        lines.append(f"{ep.name} ({ep.url}): {ep.reason or ep.status.value}.{hint}")
    return "\n".join(lines)
