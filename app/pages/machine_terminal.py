"""The helper VM's serial console and SSH shells, each in a TerminalWidget.

Both are byte streams behind blocking calls (a unix socket to berthd, a paramiko
channel); each open stream gets a :class:`~app.widgets.terminal_pump.StreamPump` (the
container Terminal tab's pump too): a reader and a writer thread, batched output,
back-pressure, keystrokes in order, never the GUI thread.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QToolButton, QVBoxLayout, QWidget

from app.pages.details._base import plain_label
from app.widgets.terminal import TerminalWidget
from app.widgets.terminal_pump import Stream, StreamPump


class ConsoleClient(Protocol):
    """What the console needs from a berthd client (``DaemonClient`` fits)."""

    def console(
        self, name: str = "default", replay: bool = True
    ) -> AbstractContextManager[socket.socket]: ...


class ConsoleStream:
    """berthd's raw console connection; the serial line has no window size."""

    def __init__(self, client: ConsoleClient, name: str, replay: bool = True) -> None:
        self._stack = contextlib.ExitStack()
        self._sock = self._stack.enter_context(client.console(name, replay=replay))

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def send_all(self, data: bytes) -> None:
        self._sock.sendall(data)

    def resize(self, cols: int, rows: int) -> None:
        """A serial console has no window size to tell."""

    def close(self) -> None:
        # shutdown() wakes a reader blocked in recv(); close() alone may not.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._stack.close()


class ChannelLike(Protocol):
    def recv(self, nbytes: int) -> bytes: ...

    def sendall(self, s: bytes) -> None: ...

    def resize_pty(self, width: int = ..., height: int = ...) -> None: ...

    def close(self) -> None: ...


class ShellStream:
    """An SSH login shell on a pseudo-terminal (a paramiko channel)."""

    def __init__(self, channel: ChannelLike) -> None:
        self._chan = channel

    def recv(self, size: int) -> bytes:
        return self._chan.recv(size)

    def send_all(self, data: bytes) -> None:
        self._chan.sendall(data)

    def resize(self, cols: int, rows: int) -> None:
        self._chan.resize_pty(width=cols, height=rows)

    def close(self) -> None:
        self._chan.close()


class TerminalPane(QWidget):
    """A TerminalWidget with a status line, wired to at most one :class:`StreamPump`."""

    #: The stream ended by itself (not by :meth:`disconnect_stream`); the reason or "".
    ended = Signal(str)
    #: The stream is open.
    opened = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.pump: StreamPump | None = None
        self.status = plain_label("", self)
        self.status.setWordWrap(True)
        self.terminal = TerminalWidget(self)
        self.bar = QHBoxLayout()
        self.bar.setContentsMargins(4, 4, 4, 0)
        self.bar.addWidget(self.status, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.bar)
        layout.addWidget(self.terminal, 1)
        self.terminal.input_bytes.connect(self._input)
        self.terminal.resized.connect(self._resized)

    @property
    def connected(self) -> bool:
        return self.pump is not None and not self.pump.closed

    @property
    def busy(self) -> bool:
        """Connecting or connected."""
        return self.pump is not None

    def open_stream(self, opener: Callable[[], Stream], name: str) -> None:
        """Start a new stream (an open one is closed first)."""
        self.disconnect_stream()
        terminal = self.terminal
        holder: dict[str, StreamPump] = {}
        pump = StreamPump(
            opener,
            terminal.feed,
            lambda reason: self._ended(holder["pump"], reason),
            owner=self,
            on_open=lambda: self._opened(holder["pump"]),
            backlog=lambda: terminal.pending_bytes,
            name=name,
        )
        holder["pump"] = pump
        self.pump = pump
        pump.start()

    def disconnect_stream(self) -> None:
        pump, self.pump = self.pump, None
        if pump is not None:
            pump.close()

    def _opened(self, pump: StreamPump) -> None:
        if pump is not self.pump:
            return
        cols, rows = self.terminal.size_in_cells()
        pump.resize(cols, rows)
        self.opened.emit()

    def _ended(self, pump: StreamPump, reason: str) -> None:
        if pump is not self.pump:
            return
        self.pump = None
        self.ended.emit(reason)

    def _input(self, data: bytes) -> None:
        if self.pump is not None:
            self.pump.write(data)

    def _resized(self, cols: int, rows: int) -> None:
        if self.pump is not None:
            self.pump.resize(cols, rows)


class ConsoleTab(TerminalPane):
    """The VM's serial console, live; berthd replays it from boot on connect.

    The page decides when to connect (the VM has a console from QEMU's launch to its
    exit) via :meth:`attach` and :meth:`detach`; a new QEMU (a restart) gets a fresh
    connection, because berthd's console belongs to one QEMU run.
    """

    def __init__(
        self, client_factory: Callable[[], Any], name: str, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._client_factory = client_factory
        self._name = name
        self.run_id: object = None  # which QEMU run the open connection belongs to
        self.reconnect_button = QToolButton(self)
        self.reconnect_button.setText(self.tr("Reconnect"))
        self.reconnect_button.setToolTip(self.tr("Connect to the serial console again"))
        self.reconnect_button.clicked.connect(lambda: self.attach(self.run_id, force=True))
        self.bar.addWidget(self.reconnect_button)
        self.status.setText(self.tr("The console appears here while the VM runs."))
        self.ended.connect(self._stream_ended)
        self.opened.connect(self._stream_opened)

    def attach(self, run_id: object, *, force: bool = False) -> None:
        """Connect for QEMU run ``run_id`` unless already connected (or connecting) to it."""
        if self.busy and run_id == self.run_id and not force:
            return
        if self.run_id is not None and run_id != self.run_id:
            self.terminal.feed(b"\r\n\x1b[2m--- the VM was restarted ---\x1b[0m\r\n")
        self.run_id = run_id
        self.status.setText(self.tr("Connecting to the serial console…"))
        factory, name = self._client_factory, self._name
        self.open_stream(lambda: ConsoleStream(factory(), name), "berth-console")

    def detach(self, reason: str = "") -> None:
        if self.busy:
            self.disconnect_stream()
            self.status.setText(reason or self.tr("Disconnected: the VM is not running."))

    def _stream_opened(self) -> None:
        self.status.setText(
            self.tr("Serial console (root shell; press Enter for a prompt). "
                    "What you type goes to the VM.")
        )

    def _stream_ended(self, reason: str) -> None:
        self.status.setText(
            self.tr("Console disconnected: {0}").format(reason)
            if reason
            else self.tr("Console disconnected.")
        )


class ShellTab(TerminalPane):
    """A login shell in the VM over the pinned SSH transport."""

    def __init__(
        self,
        channel_opener: Callable[[int, int], ChannelLike],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._channel_opener = channel_opener
        self.reconnect_button = QToolButton(self)
        self.reconnect_button.setText(self.tr("Reconnect"))
        self.reconnect_button.clicked.connect(self.connect_shell)
        self.bar.addWidget(self.reconnect_button)
        self.ended.connect(self._stream_ended)
        self.opened.connect(self._stream_opened)

    def connect_shell(self) -> None:
        cols, rows = self.terminal.size_in_cells()
        opener = self._channel_opener
        self.status.setText(self.tr("Connecting over SSH…"))
        self.reconnect_button.setEnabled(False)
        self.open_stream(lambda: ShellStream(opener(cols, rows)), "berth-shell")

    def _stream_opened(self) -> None:
        self.status.setText(self.tr("Connected: root shell in the VM over SSH."))
        self.reconnect_button.setEnabled(True)
        self.terminal.setFocus()

    def _stream_ended(self, reason: str) -> None:
        self.reconnect_button.setEnabled(True)
        text = self.tr("Shell closed: {0}").format(reason) if reason else self.tr("Shell closed.")
        self.status.setText(text)
        self.terminal.feed(b"\r\n[" + text.encode("utf-8", "replace") + b"]\r\n")

