"""Stream decoding against a real HTTP server on localhost that writes exactly the bytes a
test gives it: chunked bodies cut at awkward places, bodies with a length, a connection cut
mid-chunk, and close() from another thread while a read blocks."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from vm_backend.engine.streams import Stream, iter_frames, iter_json_lines


class OneShotServer:
    """Accepts one connection, reads the request head, then writes ``parts`` one by one
    (a short pause between them so each arrives as its own read), then optionally holds
    the connection open until told to stop."""

    def __init__(self, parts: list[bytes], hold: bool = False) -> None:
        self.parts = parts
        self.hold = hold
        self.release = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            for part in self.parts:
                conn.sendall(part)
                time.sleep(0.005)
            if self.hold:
                self.release.wait(30)

    def get(self) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.port}/x", stream=True, timeout=30)

    def close(self) -> None:
        self.release.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def serve() -> Iterator[list[OneShotServer]]:
    servers: list[OneShotServer] = []
    yield servers
    for s in servers:
        s.close()


def start(servers: list[OneShotServer], parts: list[bytes], hold: bool = False) -> OneShotServer:
    server = OneShotServer(parts, hold)
    servers.append(server)
    return server


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def frame(stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream_id, len(payload)) + payload


def test_json_objects_split_across_and_packed_into_chunks(serve: list[OneShotServer]) -> None:
    objs = [{"n": i, "text": "é" * i} for i in range(6)]
    body = b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objs)
    # One chunk holding two objects, then the rest cut mid-object and mid-UTF-8 character.
    first = body.index(b"\n", body.index(b"\n") + 1) + 1
    cut = body.index(b"\xc3", first) + 1  # between the two bytes of an "é"
    parts = [CHUNKED_HEAD, chunk(body[:first]), chunk(body[first:cut]), chunk(body[cut:]),
             b"0\r\n\r\n"]
    server = start(serve, parts)
    assert list(iter_json_lines(server.get())) == objs


def test_frames_spanning_chunks_and_several_per_chunk(serve: list[OneShotServer]) -> None:
    frames = [(1, b"out one\n"), (2, b"err one\n"), (1, b""), (1, b"x" * 70000), (2, b"end\n")]
    body = b"".join(frame(s, p) for s, p in frames)
    pieces = [body[:3], body[3:40], body[40:41], body[41:50000], body[50000:]]
    server = start(serve, [CHUNKED_HEAD, *(chunk(p) for p in pieces), b"0\r\n\r\n"])
    assert list(iter_frames(server.get(), tty=False)) == frames


def test_tty_output_is_passed_through(serve: list[OneShotServer]) -> None:
    server = start(serve, [CHUNKED_HEAD, chunk(b"ab"), chunk(b"c\x1b[0m"), b"0\r\n\r\n"])
    assert b"".join(d for _, d in iter_frames(server.get(), tty=True)) == b"abc\x1b[0m"


def test_a_body_with_a_length_is_read_too(serve: list[OneShotServer]) -> None:
    body = frame(1, b"hello\n") + frame(2, b"world\n")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    server = start(serve, [head, body[:5], body[5:]])
    assert list(iter_frames(server.get(), tty=False)) == [(1, b"hello\n"), (2, b"world\n")]


def test_a_connection_cut_mid_chunk_ends_the_stream(serve: list[OneShotServer]) -> None:
    whole = json.dumps({"a": 1}).encode() + b"\n"
    server = start(serve, [CHUNKED_HEAD, chunk(whole), b"40\r\n{\"b\": "])
    assert list(iter_json_lines(server.get())) == [{"a": 1}]


def test_close_from_another_thread_ends_a_blocked_read(serve: list[OneShotServer]) -> None:
    server = start(serve, [CHUNKED_HEAD, chunk(b'{"first": true}\n')], hold=True)
    response = server.get()
    stream: Stream[dict[str, object]] = Stream(response, lambda: iter_json_lines(response))
    got: list[dict[str, object]] = []
    done = threading.Event()

    def read() -> None:
        got.extend(stream)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [{"first": True}]
    stream.close()
    assert done.wait(10), "close() did not end the blocked read"


def test_garbage_instead_of_a_chunk_size_is_an_error(serve: list[OneShotServer]) -> None:
    server = start(serve, [CHUNKED_HEAD, b"zz-not-hex\r\n"])
    with pytest.raises(ValueError):
        list(iter_json_lines(server.get()))


def test_log_time_keys_sort_as_times_not_as_strings() -> None:
    from vm_backend.engine.streams import log_time_key

    # Docker trims the fraction's trailing zeros: as strings ".1Z" sorts after ".12Z".
    a, b = "2026-11-29T04:10:00.1Z", "2026-11-29T04:10:00.12Z"
    assert a > b
    ka, kb = log_time_key(a), log_time_key(b)
    assert ka is not None and kb is not None and ka < kb
    assert log_time_key("2026-11-29T04:10:00Z") == (ka[0], 0)
    assert log_time_key("2026-11-29T05:10:00.000000001+01:00") == (ka[0], 1)
    for bad in (None, "", "soon", "2026-13-01T00:00:00Z", "2026-11-29T04:10:00.1234567890Z"):
        assert log_time_key(bad) is None
