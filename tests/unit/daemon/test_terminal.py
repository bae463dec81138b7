"""vm_backend.daemon.terminal: the console/ssh terminal bridge, raw mode and resizes.

The bridge runs over real socketpairs, a real paramiko channel and an ``os.pipe`` as stdin.
The Windows console mode is checked against a fake kernel32 (nothing here ran on Windows).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest

from vm_backend.daemon import terminal as term
from vm_backend.daemon.terminal import BridgeEnd, TerminalError, bridge
from vm_backend.machine.keys import generate_keypair

TIMEOUT = 5.0


@dataclass
class Stdin:
    """A fake stdin: an os.pipe whose read end the bridge reads."""

    r: int
    w: int
    closed_w: bool = False

    def read(self, n: int) -> bytes:
        return os.read(self.r, n)

    def send(self, data: bytes) -> None:
        os.write(self.w, data)

    def eof(self) -> None:
        if not self.closed_w:
            os.close(self.w)
            self.closed_w = True


@pytest.fixture
def stdin() -> Iterator[Stdin]:
    r, w = os.pipe()
    s = Stdin(r, w)
    yield s
    s.eof()
    _wait_reader_gone()
    os.close(r)


def _wait_reader_gone() -> None:
    """The bridge's stdin thread ends once stdin is at EOF; wait for it (and fail if not)."""
    deadline = time.monotonic() + TIMEOUT
    while any(t.name == "berth-terminal-stdin" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the stdin reader thread did not end"
        time.sleep(0.01)


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Exceptions that escape any thread (they would be printed in the user's face)."""
    errors: list[BaseException] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        errors.append(args.exc_value or RuntimeError("thread failed"))

    monkeypatch.setattr(threading, "excepthook", hook)
    return errors


def _run_bridge(**kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run bridge() in a thread (the test plays the user and the remote meanwhile)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["end"] = bridge(**kwargs)
        except Exception as exc:  # noqa: BLE001 - any error fails the test in _finish
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def _finish(t: threading.Thread, result: dict[str, Any]) -> BridgeEnd:
    t.join(TIMEOUT)
    assert not t.is_alive(), "bridge() did not return"
    assert "error" not in result, result.get("error")
    end: BridgeEnd = result["end"]
    return end


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(TIMEOUT)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def _wait_for(pred: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ------------------------------------------------------------------------ bridge, sockets


def test_data_flows_both_ways_and_remote_eof_ends(
    stdin: Stdin, thread_errors: list[BaseException]
) -> None:
    ours, peer = socket.socketpair()
    out = io.BytesIO()
    t, result = _run_bridge(remote=ours, read_stdin=stdin.read, stdout=out,
                            detach_key=b"\x1d")
    stdin.send(b"uname -a\r")
    assert _recv_exactly(peer, 9) == b"uname -a\r"
    peer.sendall(b"Linux berth\r\n")
    _wait_for(lambda: out.getvalue() == b"Linux berth\r\n")
    peer.close()
    assert _finish(t, result) is BridgeEnd.REMOTE_EOF
    ours.close()
    # Typing after the remote closed sends nothing and raises nowhere.
    stdin.send(b"late")
    stdin.eof()
    _wait_reader_gone()
    assert thread_errors == []


def test_detach_key_sends_the_bytes_before_it_then_hangs_up(stdin: Stdin) -> None:
    ours, peer = socket.socketpair()
    out = io.BytesIO()
    t, result = _run_bridge(remote=ours, read_stdin=stdin.read, stdout=out,
                            detach_key=b"\x1d")
    stdin.send(b"abc\x1dnot this")
    assert _finish(t, result) is BridgeEnd.DETACHED
    peer.settimeout(TIMEOUT)
    got = b""
    while chunk := peer.recv(100):
        got += chunk
    assert got == b"abc"  # then EOF: the console connection was shut down
    peer.close()


def test_detach_key_is_plain_data_without_detach(stdin: Stdin) -> None:
    ours, peer = socket.socketpair()
    t, result = _run_bridge(remote=ours, read_stdin=stdin.read, stdout=io.BytesIO())
    stdin.send(b"a\x1db")
    assert _recv_exactly(peer, 3) == b"a\x1db"
    peer.close()
    assert _finish(t, result) is BridgeEnd.REMOTE_EOF
    ours.close()


def test_console_stdin_eof_keeps_showing_output(stdin: Stdin) -> None:
    ours, peer = socket.socketpair()
    out = io.BytesIO()
    t, result = _run_bridge(remote=ours, read_stdin=stdin.read, stdout=out)
    stdin.send(b"echo hi\n")
    stdin.eof()
    assert _recv_exactly(peer, 8) == b"echo hi\n"
    _wait_reader_gone()
    # No half-close reached the console, and its output still arrives.
    peer.settimeout(0.2)
    with pytest.raises(TimeoutError):
        peer.recv(10)
    peer.sendall(b"hi\r\n")
    _wait_for(lambda: out.getvalue() == b"hi\r\n")
    assert t.is_alive()
    peer.close()
    assert _finish(t, result) is BridgeEnd.REMOTE_EOF
    ours.close()


def test_ssh_stdin_eof_half_closes_and_output_follows(stdin: Stdin) -> None:
    ours, peer = socket.socketpair()
    out = io.BytesIO()
    t, result = _run_bridge(remote=ours, read_stdin=stdin.read, stdout=out,
                            on_stdin_eof=lambda: ours.shutdown(socket.SHUT_WR))
    stdin.send(b"exit\n")
    stdin.eof()
    peer.settimeout(TIMEOUT)
    got = b""
    while chunk := peer.recv(100):
        got += chunk
    assert got == b"exit\n"  # and then EOF
    peer.sendall(b"logout\r\n")
    peer.close()
    assert _finish(t, result) is BridgeEnd.REMOTE_EOF
    assert out.getvalue() == b"logout\r\n"
    ours.close()


def test_remote_closing_while_typing_raises_nowhere(
    stdin: Stdin, thread_errors: list[BaseException]
) -> None:
    ours, peer = socket.socketpair()
    t, result = _run_bridge(remote=ours, read_stdin=stdin.read, stdout=io.BytesIO(),
                            on_stdin_eof=lambda: ours.shutdown(socket.SHUT_WR))
    peer.close()
    assert _finish(t, result) is BridgeEnd.REMOTE_EOF
    ours.close()  # as the CLI's `with` does, while the reader is still blocked on stdin
    stdin.send(b"x" * 100)
    stdin.eof()
    _wait_reader_gone()
    assert thread_errors == []


def test_detach_key_must_be_one_byte() -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError, match="one byte"):
        bridge(a, lambda n: b"", io.BytesIO(), detach_key=b"\x1d\x1d")


# ------------------------------------------------------------------------ bridge, paramiko


class _ShellServer(paramiko.ServerInterface):
    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_pty_request(self, *args: Any) -> bool:
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return True


@dataclass
class ShellPair:
    client: paramiko.Channel
    server: paramiko.Channel
    transports: list[paramiko.Transport] = field(default_factory=list)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[ShellPair]:
    """A client channel with a shell open on an in-process paramiko server."""
    host = generate_keypair(tmp_path / "host_key", "test")
    a, b = socket.socketpair()
    server_t = paramiko.Transport(b)
    server_t.add_server_key(paramiko.Ed25519Key.from_private_key_file(str(host.private_path)))
    server_t.start_server(event=threading.Event(), server=_ShellServer())  # negotiates later
    client_t = paramiko.Transport(a)
    client_t.start_client(timeout=TIMEOUT)
    client_t.auth_none("berth")
    chan = client_t.open_session(timeout=TIMEOUT)
    chan.get_pty()
    chan.invoke_shell()
    served = server_t.accept(TIMEOUT)
    assert served is not None
    yield ShellPair(chan, served, [client_t, server_t])
    for t in (client_t, server_t):
        t.close()


def _echo_until_eof(chan: paramiko.Channel, exit_status: int) -> threading.Thread:
    def run() -> None:
        while data := chan.recv(1024):
            chan.sendall(b"echo:" + data)
        chan.send_exit_status(exit_status)
        chan.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_paramiko_channel_stdin_eof_and_exit_status(stdin: Stdin, shell: ShellPair) -> None:
    server = _echo_until_eof(shell.server, 3)
    out = io.BytesIO()
    t, result = _run_bridge(remote=shell.client, read_stdin=stdin.read, stdout=out,
                            on_stdin_eof=shell.client.shutdown_write)
    stdin.send(b"hi")
    _wait_for(lambda: out.getvalue() == b"echo:hi")
    stdin.eof()  # -> shutdown_write -> the fake shell exits
    assert _finish(t, result) is BridgeEnd.REMOTE_EOF
    server.join(TIMEOUT)
    assert shell.client.recv_exit_status() == 3


def test_paramiko_channel_detach_wakes_the_blocked_recv(stdin: Stdin, shell: ShellPair) -> None:
    out = io.BytesIO()
    t, result = _run_bridge(remote=shell.client, read_stdin=stdin.read, stdout=out,
                            detach_key=b"\x1d")
    stdin.send(b"ls\x1d")
    assert _finish(t, result) is BridgeEnd.DETACHED
    shell.server.settimeout(TIMEOUT)
    assert shell.server.recv(100) == b"ls"
    assert shell.client.closed


# ------------------------------------------------------------------------ raw mode


@dataclass
class FakeKernel32:
    """GetStdHandle/GetConsoleMode/SetConsoleMode as ctypes calls them (pointer args)."""

    modes: dict[int, int | None]
    refuse: set[int] = field(default_factory=set)
    calls: list[tuple[str, int, int]] = field(default_factory=list)

    def GetStdHandle(self, which: int) -> int:
        return {term.STD_INPUT_HANDLE: 10, term.STD_OUTPUT_HANDLE: 11}[which]

    def GetConsoleMode(self, handle: int, mode: Any) -> int:
        value = self.modes[handle]
        if value is None:
            return 0  # not a console
        mode.contents.value = value
        return 1

    def SetConsoleMode(self, handle: int, mode: int) -> int:
        self.calls.append(("set", handle, mode))
        if handle in self.refuse:
            return 0
        self.modes[handle] = mode
        return 1


# What a cmd.exe console starts with: processed/line/echo input, insert and quick-edit
# modes, extended flags; processed output and wrap at end of line.
WIN_IN_MODE = 0x0001 | 0x0002 | 0x0004 | 0x0020 | 0x0040 | 0x0080
WIN_OUT_MODE = 0x0001 | 0x0002


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")


@pytest.mark.usefixtures("windows")
def test_windows_raw_mode_flags_and_restore() -> None:
    k = FakeKernel32({10: WIN_IN_MODE, 11: WIN_OUT_MODE})
    with term.raw_terminal(k) as interactive:
        assert interactive
        assert k.modes[10] == 0x0020 | 0x0040 | 0x0080 | 0x0200  # no line/echo/processed; VT
        assert k.modes[11] == WIN_OUT_MODE | 0x0004  # VT processing on
    assert k.modes == {10: WIN_IN_MODE, 11: WIN_OUT_MODE}
    assert k.calls[-2:] == [("set", 11, WIN_OUT_MODE), ("set", 10, WIN_IN_MODE)]


@pytest.mark.usefixtures("windows")
def test_windows_restores_modes_when_the_body_raises() -> None:
    k = FakeKernel32({10: WIN_IN_MODE, 11: WIN_OUT_MODE})
    with pytest.raises(KeyboardInterrupt), term.raw_terminal(k):
        raise KeyboardInterrupt
    assert k.modes == {10: WIN_IN_MODE, 11: WIN_OUT_MODE}


@pytest.mark.usefixtures("windows")
def test_windows_not_a_console_is_a_no_op() -> None:
    k = FakeKernel32({10: None, 11: WIN_OUT_MODE})
    with term.raw_terminal(k) as interactive:
        assert not interactive
    assert k.calls == []


@pytest.mark.usefixtures("windows")
def test_windows_redirected_stdout_only_changes_stdin() -> None:
    k = FakeKernel32({10: WIN_IN_MODE, 11: None})
    with term.raw_terminal(k) as interactive:
        assert interactive
    assert [c[1] for c in k.calls] == [10, 10]
    assert k.modes[10] == WIN_IN_MODE


@pytest.mark.usefixtures("windows")
def test_windows_console_without_vt_is_a_clear_error() -> None:
    k = FakeKernel32({10: WIN_IN_MODE, 11: WIN_OUT_MODE}, refuse={11})
    with pytest.raises(TerminalError, match="VT") as info, term.raw_terminal(k):
        pytest.fail("the body must not run")
    assert "Windows 10" in info.value.hint
    assert k.modes[10] == WIN_IN_MODE  # stdin put back


def test_posix_raw_mode_on_a_pty_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    import termios

    master, slave = os.openpty()
    with os.fdopen(slave, "r") as fake_stdin:
        monkeypatch.setattr(sys, "stdin", fake_stdin)
        before = termios.tcgetattr(slave)
        with term.raw_terminal() as interactive:
            assert interactive
            during = termios.tcgetattr(slave)
            assert not during[3] & termios.ICANON and not during[3] & termios.ECHO
        assert termios.tcgetattr(slave) == before
    os.close(master)


def test_posix_pipe_stdin_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    with os.fdopen(r, "r") as fake_stdin:
        monkeypatch.setattr(sys, "stdin", fake_stdin)
        with term.raw_terminal() as interactive:
            assert not interactive
    os.close(w)


@pytest.mark.usefixtures("windows")
def test_windows_stdin_reader_reads_the_raw_stdin_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r, w = os.pipe()
    with os.fdopen(r, "r") as fake_stdin:  # text -> buffered -> raw FileIO, as on Windows
        monkeypatch.setattr(sys, "stdin", fake_stdin)
        read = term.stdin_reader()
        os.write(w, b"\x1b[A")
        assert read(4096) == b"\x1b[A"
        os.close(w)
        assert read(4096) == b""


# ------------------------------------------------------------------------ resizes


def test_resize_polling_reports_changes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(term, "RESIZE_POLL_S", 0.01)
    size = [(80, 24)]
    seen: list[tuple[int, int]] = []
    with term.watch_resize(lambda c, r: seen.append((c, r)), size=lambda: size[0],
                           use_signal=False):
        time.sleep(0.05)
        assert seen == []
        size[0] = (120, 40)
        _wait_for(lambda: seen == [(120, 40)])
        time.sleep(0.05)
    assert seen == [(120, 40)]


def test_resize_on_sigwinch_and_handler_restored() -> None:
    previous = signal.getsignal(signal.SIGWINCH)
    size = [(80, 24)]
    seen: list[tuple[int, int]] = []
    with term.watch_resize(lambda c, r: seen.append((c, r)), size=lambda: size[0]):
        assert signal.getsignal(signal.SIGWINCH) is not previous
        size[0] = (100, 30)
        os.kill(os.getpid(), signal.SIGWINCH)
        _wait_for(lambda: seen == [(100, 30)])
    assert signal.getsignal(signal.SIGWINCH) == previous


def test_resize_error_on_a_closed_channel_ends_quietly(
    thread_errors: list[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(term, "RESIZE_POLL_S", 0.01)
    size = [(80, 24)]
    calls: list[int] = []

    def resize(c: int, r: int) -> None:
        calls.append(c)
        raise OSError("Socket is closed")

    with term.watch_resize(resize, size=lambda: size[0], use_signal=False):
        size[0] = (81, 24)
        _wait_for(lambda: calls == [81])
        size[0] = (82, 24)
        time.sleep(0.05)
    assert calls == [81]
    assert thread_errors == []


# ------------------------------------------------------------------------ the CLI


def test_cli_machine_imports_without_termios(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in ("termios", "tty"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError, as on Windows
    import vm_backend.daemon as package

    for name in ("cli_machine", "terminal"):
        monkeypatch.delitem(sys.modules, f"vm_backend.daemon.{name}", raising=False)
        if hasattr(package, name):  # the re-import rebinds it; put the original back after
            monkeypatch.setattr(package, name, getattr(package, name))
    cli_machine = importlib.import_module("vm_backend.daemon.cli_machine")
    assert cli_machine.DETACH_KEY == b"\x1d"
    with pytest.raises(ImportError):
        import termios  # noqa: F401


class _FakeClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @contextlib.contextmanager
    def console(self, name: str) -> Iterator[socket.socket]:
        try:
            yield self.sock
        finally:
            self.sock.close()


def test_console_command_with_piped_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    from vm_backend.daemon.cli_machine import _console

    r, w = os.pipe()
    os.write(w, b"root\n")
    os.close(w)
    ours, peer = socket.socketpair()
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    text_out = io.StringIO()
    with os.fdopen(r, "r") as fake_stdin:
        monkeypatch.setattr(sys, "stdin", fake_stdin)
        monkeypatch.setattr(sys, "stdout", stdout)

        def guest() -> None:
            assert _recv_exactly(peer, 5) == b"root\n"
            peer.sendall(b"Password: ")
            peer.close()

        g = threading.Thread(target=guest, daemon=True)
        g.start()
        assert _console(_FakeClient(ours), "default", text_out) == 0  # type: ignore[arg-type]
        g.join(TIMEOUT)
        _wait_reader_gone()
    assert stdout.buffer.getvalue() == b"Password: "
    assert text_out.getvalue() == ""  # not interactive: no attach/detach chatter
