"""The Terminal tab: an interactive shell in the container through an exec TTY.

The exec is created on the Op pool (exec create/start are blocking HTTP calls); the open
session is then driven by the shared terminal pump (:mod:`app.widgets.terminal_pump`,
also the Machine page's console and shells): a reader thread with batched output and
back-pressure, a writer thread keeping keystrokes and resizes in order. At the end of the
stream the pump asks the engine for the exit code, still off the GUI thread.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLineEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import Op, user_message
from app.pages.details._base import DetailsTab, plain_label
from app.widgets.terminal import TerminalWidget
from app.widgets.terminal_pump import StreamPump
from vm_backend.engine.streams import ExecSession

SHELLS: tuple[str, ...] = ("/bin/sh", "/bin/bash", "/bin/ash")
CUSTOM = "Custom…"


class _ExecStream:
    """An ExecSession as a pump's :class:`~app.widgets.terminal_pump.Stream`."""

    def __init__(self, session: ExecSession) -> None:
        self.session = session

    def recv(self, size: int) -> bytes:
        return self.session.read(size)

    def send_all(self, data: bytes) -> None:
        self.session.write(data)

    def resize(self, cols: int, rows: int) -> None:
        self.session.resize(cols, rows)

    def close(self) -> None:
        self.session.close()


class ExecPump(StreamPump):
    """The shared terminal pump on one open ExecSession; at its end, the exit code."""

    def __init__(
        self,
        session: ExecSession,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int | None], None],
        backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self.session = session
        self._code: int | None = None
        super().__init__(
            lambda: _ExecStream(session),
            on_output,
            lambda _reason: on_exit(self._code),
            backlog=backlog,
            name="berth-exec",
        )

    def close(self) -> None:
        super().close()
        self.session.close()  # also when the reader has not opened it yet

    def at_eof(self) -> None:
        # The engine marks the exec ended a moment after the stream closes.
        for _attempt in range(20):
            try:
                code = self.session.exit_code()
            except Exception:  # noqa: BLE001 - an engine gone away has no exit code
                return
            if code is not None:
                self._code = code
                return
            if self._stopped.wait(0.1):
                return


class TerminalTab(DetailsTab):
    """A shell in the container: choose shell and user, connect, type."""

    title = "Terminal"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._pump: ExecPump | None = None
        self._connecting = False
        self._auto_connected = False

        self.shell = QComboBox(self)
        self.shell.addItems([*SHELLS, self.tr(CUSTOM)])
        self.shell.setToolTip(self.tr("The program to run with a terminal"))
        self.custom = QLineEdit(self)
        self.custom.setPlaceholderText(self.tr("command and arguments, e.g. /usr/bin/python3 -q"))
        self.custom.setVisible(False)
        self.user = QLineEdit(self)
        self.user.setPlaceholderText(self.tr("default user"))
        self.user.setToolTip(self.tr("User name or uid[:gid] to run as (empty: the image's user)"))
        self.user.setMaximumWidth(160)
        self.connect_button = QToolButton(self)
        self.connect_button.setText(self.tr("Connect"))
        self.disconnect_button = QToolButton(self)
        self.disconnect_button.setText(self.tr("Disconnect"))
        self.disconnect_button.setEnabled(False)
        self.status = plain_label("", self)

        bar = QHBoxLayout()
        bar.setContentsMargins(4, 4, 4, 0)
        bar.addWidget(plain_label(self.tr("Shell:"), self))
        bar.addWidget(self.shell)
        bar.addWidget(self.custom, 1)
        bar.addWidget(plain_label(self.tr("User:"), self))
        bar.addWidget(self.user)
        bar.addWidget(self.connect_button)
        bar.addWidget(self.disconnect_button)
        bar.addWidget(self.status, 1)

        self.terminal = TerminalWidget(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.terminal, 1)

        self.shell.currentIndexChanged.connect(self._shell_changed)
        self.connect_button.clicked.connect(self.connect_shell)
        self.disconnect_button.clicked.connect(self.disconnect_shell)
        self.custom.returnPressed.connect(self.connect_shell)
        self.terminal.input_bytes.connect(self._input)
        self.terminal.resized.connect(self._resized)

    # ---- lifecycle -------------------------------------------------------------------
    def reset(self) -> None:
        self.terminal.clear()
        self.status.setText("")
        self._auto_connected = False

    def activate(self) -> None:
        # Open a shell the first time the tab is shown; later the user decides.
        if not self._auto_connected and self.client is not None and self.container_id:
            self._auto_connected = True
            self.connect_shell()
        self.terminal.setFocus()

    def stop(self) -> None:
        if self._pump is not None:
            self._pump.close()
            self._pump = None
            self.status.setText(self.tr("Disconnected"))
        self._connecting = False
        self._update_buttons()

    def release(self) -> None:
        if self._pump is not None:
            self._pump.close()

    @property
    def connected(self) -> bool:
        return self._pump is not None

    @property
    def pump(self) -> ExecPump | None:
        """The live exec session's pump, if connected."""
        return self._pump

    def argv(self) -> list[str]:
        """The command the shell chooser asks for (raises ValueError on bad quoting)."""
        if self.shell.currentIndex() < len(SHELLS):
            return [self.shell.currentText()]
        return shlex.split(self.custom.text())

    def connect_shell(self) -> None:
        """Start a new exec session (a running one is closed first)."""
        if self.client is None or not self.container_id or self._connecting:
            return
        try:
            argv = self.argv()
        except ValueError as err:
            self.status.setText(self.tr("Cannot parse the command: {0}").format(err))
            return
        if not argv:
            self.status.setText(self.tr("Type the command to run."))
            return
        self.stop()
        self._connecting = True
        self._update_buttons()
        self.status.setText(self.tr("Connecting…"))
        cols, rows = self.terminal.size_in_cells()
        generation = self.generation
        client = self.client
        Op(
            client.exec_tty, self.container_id, argv, user=self.user.text().strip(),
            cols=cols, rows=rows,
        ).success(lambda session: self._connected(generation, session, argv)).failure(
            lambda err: self._connect_failed(generation, err)
        ).run(self)

    def disconnect_shell(self) -> None:
        self.stop()

    # ---- internals -------------------------------------------------------------------
    def _connected(self, generation: int, session: ExecSession, argv: list[str]) -> None:
        if not self.current(generation) or not self._connecting:
            # The container changed or the user hung up while we connected.
            session.close()
            return
        self._connecting = False
        terminal = self.terminal
        pump = ExecPump(
            session,
            terminal.feed,
            lambda code: self._exited(pump, code),
            backlog=lambda: terminal.pending_bytes,
        )
        self._pump = pump
        pump.start()
        # The view may have changed size while the exec was being created.
        cols, rows = self.terminal.size_in_cells()
        pump.resize(cols, rows)
        self.status.setText(self.tr("Connected: {0}").format(shlex.join(argv)))
        self._update_buttons()
        self.terminal.setFocus()

    def _connect_failed(self, generation: int, err: BaseException) -> None:
        if not self.current(generation):
            return
        self._connecting = False
        self.status.setText(user_message(err))
        self._update_buttons()

    def _exited(self, pump: ExecPump, code: int | None) -> None:
        if pump is not self._pump:
            return
        self._pump = None
        text = (
            self.tr("[process exited with code {0}]").format(code)
            if code is not None
            else self.tr("[process exited]")
        )
        self.terminal.feed(f"\r\n{text}\r\n".encode())
        self.status.setText(text)
        self.connect_button.setText(self.tr("Reconnect"))
        self._update_buttons()

    def _input(self, data: bytes) -> None:
        if self._pump is not None:
            self._pump.write(data)

    def _resized(self, cols: int, rows: int) -> None:
        if self._pump is not None:
            self._pump.resize(cols, rows)

    def _shell_changed(self, index: int) -> None:
        custom = index >= len(SHELLS)
        self.custom.setVisible(custom)
        if custom:
            self.custom.setFocus()

    def _update_buttons(self) -> None:
        busy = self._pump is not None or self._connecting
        self.disconnect_button.setEnabled(busy)
        self.connect_button.setEnabled(not self._connecting and self.client is not None)
        if self._pump is not None:
            self.connect_button.setText(self.tr("Reconnect"))
        elif not busy and self.connect_button.text() != self.tr("Reconnect"):
            self.connect_button.setText(self.tr("Connect"))
