"""vm_backend.winpipe against an in-memory fake of the Windows pipe calls (see
tests/unit/winpipe_fake.py). Nothing here has run on Windows; it checks our logic and
the exact flags we pass."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from tests.unit.winpipe_fake import FakeApi
from vm_backend import winpipe as wp

NAME = "\\\\.\\pipe\\berth-test-docker"


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def _accept_in_thread(listener: wp.PipeListener, timeout: float | None = 5.0) -> list[object]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(listener.accept(timeout))
        except (OSError, wp.PipeError) as exc:  # handed to the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    out.append(t)
    return out


def _pair(api: FakeApi) -> tuple[wp.PipeListener, wp.PipeStream, wp.PipeStream]:
    listener = wp.PipeListener(NAME, api=api)
    client = wp.connect_pipe(NAME, 5, api=api)
    server = listener.accept(5)
    return listener, server, client


# ---------------------------------------------------------------- security descriptor



def _recv_in_thread(stream: Any) -> tuple[threading.Thread, list[bytes]]:
    """A thread blocked in ``stream.recv(100)`` (given 50 ms to get there), and what it got."""
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(stream.recv(100)))
    thread.start()
    time.sleep(0.05)
    return thread, got

def test_owner_only_sddl_names_only_the_user() -> None:
    sid = "S-1-5-21-1004336348-1177238915-682003330-1001"
    assert wp.owner_only_sddl(sid) == f"O:{sid}D:P(A;;GA;;;{sid})"


@pytest.mark.parametrize("bad", ["", "WD", "S-1-5-21-1)(A;;GA;;;WD", "S-1", "s-1-5-18"])
def test_owner_only_sddl_refuses_what_is_not_a_sid(bad: str) -> None:
    with pytest.raises(wp.PipeError, match="security identifier"):
        wp.owner_only_sddl(bad)


def test_pipe_url_is_dockers_npipe_form() -> None:
    assert wp.pipe_url(NAME) == "npipe:////./pipe/berth-test-docker"


def test_default_api_is_refused_off_windows() -> None:
    with pytest.raises(wp.PipeError, match="only on Windows"):
        wp.default_api()


# ---------------------------------------------------------------- listener flags


def test_listener_creates_owner_only_local_message_pipes(api: FakeApi) -> None:
    listener, server, client = _pair(api)
    creates = [c for c in api.calls if c[0] == "create_named_pipe"]
    assert len(creates) == 2  # the first, and the spare made before handing one out
    first, spare = creates
    assert first == (
        "create_named_pipe", NAME,
        wp.PIPE_ACCESS_DUPLEX | wp.FILE_FLAG_OVERLAPPED | wp.FILE_FLAG_FIRST_PIPE_INSTANCE,
        wp.PIPE_TYPE_MESSAGE | wp.PIPE_READMODE_BYTE | wp.PIPE_WAIT
        | wp.PIPE_REJECT_REMOTE_CLIENTS,
        255, 65536, 65536, 0, api.attrs[0].pointer,
    )
    assert first[2] == 0x40080003 and first[3] == 0x0000000C
    assert spare[2] == wp.PIPE_ACCESS_DUPLEX | wp.FILE_FLAG_OVERLAPPED  # not "first"
    assert spare[3] == first[3] and spare[8] == api.attrs[0].pointer
    (open_call,) = [c for c in api.calls if c[0] == "create_file"]
    assert open_call == (
        "create_file", NAME, 0xC0000000,
        wp.FILE_FLAG_OVERLAPPED | wp.SECURITY_SQOS_PRESENT | wp.SECURITY_IDENTIFICATION,
    )
    listener.close()
    assert api.attrs[0].freed
    server.close()
    client.close()
    assert api.open_handles() == set()


def test_a_name_taken_by_another_program_is_refused(api: FakeApi) -> None:
    api.squat(NAME)
    with pytest.raises(wp.PipeError, match="exists already") as info:
        wp.PipeListener(NAME, api=api)
    assert "Quit the program" in info.value.hint
    assert api.attrs[0].freed


# ---------------------------------------------------------------- data, half-close, EOF


def test_bytes_flow_both_ways_and_long_messages_are_split(api: FakeApi) -> None:
    listener, server, client = _pair(api)
    client.sendall(b"GET /_ping HTTP/1.1\r\n\r\n")
    assert server.recv(65536) == b"GET /_ping HTTP/1.1\r\n\r\n"
    server.sendall(b"x" * 10)
    assert client.recv(4) == b"xxxx"
    assert client.recv(100) == b"xxxxxx"
    client.sendall(bytearray(b"ab"))
    client.sendall(memoryview(b"cd"))
    assert server.recv(10) == b"ab" and server.recv(10) == b"cd"
    listener.close()


def test_half_close_is_a_zero_length_message_and_the_other_way_stays_open(
    api: FakeApi,
) -> None:
    listener, server, client = _pair(api)
    client.sendall(b"stdin")
    client.shutdown(socket.SHUT_WR)
    assert ("write_file", client.handle, b"") in api.calls
    assert server.recv(100) == b"stdin"
    assert server.recv(100) == b""  # the zero-length message
    assert server.recv(100) == b""  # and it stays at EOF
    server.sendall(b"stdout")  # the answer still reaches the half-closed client
    assert client.recv(100) == b"stdout"
    server.shutdown(socket.SHUT_WR)
    assert client.recv(100) == b""
    client.shutdown(socket.SHUT_WR)  # a second half-close sends nothing more
    assert [c for c in api.calls if c == ("write_file", client.handle, b"")] == [
        ("write_file", client.handle, b"")
    ]
    with pytest.raises(BrokenPipeError):
        client.sendall(b"late")
    client.sendall(b"")  # nothing to write is not a half-close
    listener.close()


def test_a_peer_that_goes_away_is_eof_then_a_broken_pipe(api: FakeApi) -> None:
    listener, server, client = _pair(api)
    client.sendall(b"last")
    client.close()
    assert server.recv(100) == b"last"
    assert server.recv(100) == b""  # ERROR_BROKEN_PIPE
    with pytest.raises(OSError) as info:
        server.sendall(b"anyone?")
    assert wp.winerror(info.value) == wp.ERROR_NO_DATA
    server.close()
    listener.close()
    assert api.open_handles() == set()


def test_a_blocked_read_ends_when_the_peer_closes(api: FakeApi) -> None:
    listener, server, client = _pair(api)
    t, got = _recv_in_thread(server)
    client.close()
    t.join(5)
    assert got == [b""]
    listener.close()


def test_reads_and_writes_run_at_once_on_two_threads(api: FakeApi) -> None:
    listener, server, client = _pair(api)
    reader, got = _recv_in_thread(server)
    assert reader.is_alive()  # blocked in an overlapped read ...
    for i in range(20):  # ... while the same handle writes
        server.sendall(b"%d," % i)
    received = b"".join(client.recv(100) for _ in range(20))
    assert received == b"".join(b"%d," % i for i in range(20))
    client.sendall(b"done")
    reader.join(5)
    assert got == [b"done"]
    listener.close()


def test_close_from_another_thread_wakes_recv_and_closes_the_handle_once(
    api: FakeApi,
) -> None:
    listener, server, _client = _pair(api)
    t, got = _recv_in_thread(server)
    server.close()
    t.join(5)
    assert got == [b""]
    assert api.closed_handles.count(server.handle) == 1
    assert server.recv(10) == b""
    with pytest.raises(OSError):
        server.sendall(b"x")
    listener.close()


def test_shutdown_rdwr_wakes_a_blocked_recv(api: FakeApi) -> None:
    listener, server, client = _pair(api)
    t, got = _recv_in_thread(server)
    server.shutdown(socket.SHUT_RDWR)
    t.join(5)
    assert got == [b""]
    assert not [c for c in api.calls if c[0] == "write_file"]  # nothing written
    with pytest.raises(BrokenPipeError):
        server.sendall(b"x")
    server.close()
    assert client.recv(100) == b""  # the peer sees the end when the handle closes
    listener.close()


def test_shutdown_rdwr_wakes_a_blocked_write_without_blocking_itself(api: FakeApi) -> None:
    listener, server, _client = _pair(api)
    api.block_writes = True  # the client reads nothing; the pipe is full
    errors: list[BaseException] = []

    def write() -> None:
        try:
            server.sendall(b"x" * 100)
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=write)
    t.start()
    time.sleep(0.05)
    assert t.is_alive()
    started = time.monotonic()
    server.shutdown(socket.SHUT_RDWR)
    assert time.monotonic() - started < 1
    t.join(5)
    assert len(errors) == 1 and isinstance(errors[0], BrokenPipeError)
    server.close()
    listener.close()


def test_recv_timeout_cancels_and_loses_nothing(api: FakeApi) -> None:
    listener, server, client = _pair(api)
    server.settimeout(0.05)
    with pytest.raises(TimeoutError):
        server.recv(100)
    assert ("cancel", "read") in api.calls
    client.sendall(b"later")
    assert server.recv(100) == b"later"
    listener.close()


def test_a_nonblocking_send_is_refused_so_the_relay_buffers(api: FakeApi) -> None:
    listener, server, client = _pair(api)
    with pytest.raises(BlockingIOError):
        server.send(b"x", 0x40)
    assert server.send(b"xy") == 2
    assert client.recv(10) == b"xy"
    assert server.family not in (socket.AF_INET, socket.AF_INET6)
    listener.close()


# ---------------------------------------------------------------- accept and connect


def test_close_wakes_a_blocked_accept(api: FakeApi) -> None:
    listener = wp.PipeListener(NAME, api=api)
    out = _accept_in_thread(listener, None)
    time.sleep(0.05)
    listener.close()
    thread = out[0]
    assert isinstance(thread, threading.Thread)
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(out[1], wp.ListenerClosed)
    assert ("cancel", "connect") in api.calls
    assert api.open_handles() == set()
    with pytest.raises(wp.ListenerClosed):
        listener.accept(1)


def test_accept_times_out_and_keeps_the_instance(api: FakeApi) -> None:
    listener = wp.PipeListener(NAME, api=api)
    with pytest.raises(TimeoutError):
        listener.accept(0.05)
    client = wp.connect_pipe(NAME, 5, api=api)
    server = listener.accept(5)
    assert len([c for c in api.calls if c[0] == "create_named_pipe"]) == 2
    client.sendall(b"hi")
    assert server.recv(10) == b"hi"
    listener.close()


@pytest.mark.parametrize("raw", [False, True])
def test_a_client_that_came_before_accept_is_served(api: FakeApi, raw: bool) -> None:
    api.raw_pipe_connected = raw  # ERROR_PIPE_CONNECTED raised, or signalled as _winapi does
    listener = wp.PipeListener(NAME, api=api)
    client = wp.connect_pipe(NAME, 5, api=api)
    server = listener.accept(1)
    server.sendall(b"ok")
    assert client.recv(10) == b"ok"
    listener.close()


def test_a_client_that_left_before_accept_is_dropped(api: FakeApi) -> None:
    listener = wp.PipeListener(NAME, api=api)
    first = listener._spare
    wp.connect_pipe(NAME, 5, api=api).close()
    with pytest.raises(TimeoutError):
        listener.accept(0.05)  # ERROR_NO_DATA: that instance closed, a new one waits
    assert first in api.closed_handles
    client = wp.connect_pipe(NAME, 5, api=api)
    server = listener.accept(5)
    client.sendall(b"second")
    assert server.recv(10) == b"second"
    listener.close()


def test_connect_waits_while_every_instance_is_busy(api: FakeApi) -> None:
    listener = wp.PipeListener(NAME, api=api)
    first = wp.connect_pipe(NAME, 5, api=api)  # takes the only instance
    out = _accept_in_thread_later(listener, 0.2)
    second = wp.connect_pipe(NAME, 5, api=api)  # ERROR_PIPE_BUSY, WaitNamedPipe, again
    waits = [c for c in api.calls if c[0] == "wait_named_pipe"]
    assert waits and waits[0][1] == NAME and 0 < waits[0][2] <= 5000
    out[0].join(5)
    server = listener.accept(5)
    second.sendall(b"2")
    assert server.recv(10) == b"2"
    first.close()
    listener.close()


def _accept_in_thread_later(listener: wp.PipeListener, delay: float) -> list[threading.Thread]:
    def run() -> None:
        time.sleep(delay)
        listener.accept(5)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return [t]


def test_connect_gives_up_when_busy_past_the_timeout(api: FakeApi) -> None:
    listener = wp.PipeListener(NAME, api=api)
    first = wp.connect_pipe(NAME, 5, api=api)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="busy"):
        wp.connect_pipe(NAME, 0.2, api=api)
    assert time.monotonic() - started < 2
    first.close()
    listener.close()


def test_connect_to_a_missing_pipe_fails_at_once(api: FakeApi) -> None:
    with pytest.raises(OSError) as info:
        wp.connect_pipe(NAME, 5, api=api)
    assert wp.winerror(info.value) == wp.ERROR_FILE_NOT_FOUND


def test_many_clients_in_turn_leave_no_handle_open(api: FakeApi) -> None:
    listener = wp.PipeListener(NAME, api=api)
    for i in range(5):
        client = wp.connect_pipe(NAME, 5, api=api)
        server = listener.accept(5)
        client.sendall(b"%d" % i)
        assert server.recv(10) == b"%d" % i
        client.shutdown(socket.SHUT_WR)
        assert server.recv(10) == b""
        server.close()
        client.close()
    listener.close()
    assert api.open_handles() == set()


def test_wait_peer_gone_is_the_pipes_pollhup(api: FakeApi) -> None:
    listener, server, client = _pair(api)
    client.shutdown(socket.SHUT_WR)
    assert server.recv(10) == b""  # the half-close
    assert server.wait_peer_gone(0.05) is False  # still there (may be reading)
    server.sendall(b"still read")
    assert client.recv(100) == b"still read"
    threading.Timer(0.05, client.close).start()
    assert server.wait_peer_gone(5) is True  # broken pipe: it hung up
    listener.close()


def test_wait_peer_gone_ends_when_we_shut_down(api: FakeApi) -> None:
    listener, server, _client = _pair(api)
    threading.Timer(0.05, server.shutdown, args=(socket.SHUT_RDWR,)).start()
    started = time.monotonic()
    assert server.wait_peer_gone(5) is True
    assert time.monotonic() - started < 2
    listener.close()


def test_a_cancel_that_raises_is_harmless(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.winpipe_fake import FakeOv, win_error

    real_cancel = FakeOv.cancel

    def cancel_then_raise(self: FakeOv) -> None:
        real_cancel(self)
        raise win_error(6)  # ERROR_INVALID_HANDLE: the owner closed it meanwhile

    monkeypatch.setattr(FakeOv, "cancel", cancel_then_raise)
    listener, server, _client = _pair(api)
    t, got = _recv_in_thread(server)
    server.close()
    t.join(5)
    assert got == [b""]
    listener.close()
