"""Cancellable live streams: logs, stats, events, pull and build progress, exec TTYs.

Each stream wraps one HTTP response from the engine. Iterating blocks in the caller's
(worker) thread; ``close()`` from any thread ends the iteration promptly by shutting the
underlying socket down, so a GUI can cancel a follow without waiting for the next line.
"""

from __future__ import annotations

import codecs
import datetime
import json
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import requests
import urllib3.exceptions

from vm_backend.engine.models import LogEntry

T = TypeVar("T")

_STREAMS = {0: "stdout", 1: "stdout", 2: "stderr"}


def _response_socket(response: requests.Response) -> socket.socket | None:
    """The raw socket under a streaming response (unix or TCP), if we can reach it."""
    raw: Any = response.raw
    for path in (("_fp", "fp", "raw", "_sock"), ("_fp", "fp", "_sock"), ("_connection", "sock")):
        obj: Any = raw
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, socket.socket):
            return obj
    return None


class Stream(Generic[T]):
    """An iterator over a live engine response that another thread may close."""

    def __init__(self, response: requests.Response, items: Callable[[], Iterator[T]]) -> None:
        self._response = response
        self._items = items
        self._closed = threading.Event()
        self._sock = _response_socket(response)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __iter__(self) -> Iterator[T]:
        try:
            for item in self._items():
                if self._closed.is_set():
                    return
                yield item
        except (
            OSError,
            ValueError,
            AttributeError,
            requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError,  # raw reads (logs) see ProtocolError unwrapped
        ):
            # Reading from a socket that close() shut down, or a dropped connection: the
            # stream simply ends. Callers that care (the event monitor) reconnect.
            if not self._closed.is_set():
                raise
        finally:
            self.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self._response.close()
        except Exception:  # noqa: BLE001 - closing must never raise into the caller
            pass

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body of a streaming response, one piece per HTTP chunk.

    dockerd writes every log frame, stats sample and event as an HTTP chunk of its own, and
    urllib3's chunk decoding costs tens of microseconds of Python per chunk: the limit of a
    followed log at 50,000 lines/s and most of an idle window's stats readers' CPU. So a
    chunked body that nobody has read yet is decoded here, straight from the connection's
    buffered socket file (a few C-level reads per chunk). Anything else (a body with a
    length, a content encoding, a response already read from) goes through urllib3.
    """
    raw: Any = response.raw
    inner: Any = getattr(raw, "_fp", None)  # http.client.HTTPResponse
    fp: Any = getattr(inner, "fp", None)  # the socket's BufferedReader
    direct = (
        fp is not None
        and getattr(raw, "chunked", False)
        and getattr(raw, "chunk_left", None) is None
        and getattr(inner, "chunk_left", None) is None
        and not response.headers.get("Content-Encoding")
        and hasattr(fp, "readline")
    )
    if not direct:
        for piece in response.iter_content(chunk_size=None, decode_unicode=False):
            if piece:
                yield piece if isinstance(piece, bytes) else piece.encode()
        return
    while True:
        line = fp.readline(_MAX_CHUNK_LINE)
        if not line:
            return  # the connection ended (or was shut down by close())
        size = int(line.split(b";", 1)[0].strip() or b"x", 16)  # ValueError: not HTTP
        if size == 0:
            return  # the last chunk (trailers, if any, are not read: the stream is done)
        data = fp.read(size)
        if len(data) < size or fp.read(2) != b"\r\n":
            return  # cut mid-chunk
        yield data


# A chunk-size line is a few hex digits (plus rarely extensions): anything longer is
# not a chunked body.
_MAX_CHUNK_LINE = 1024


def iter_json_lines(response: requests.Response) -> Iterator[dict[str, Any]]:
    """Objects from a newline-delimited (or concatenated) JSON stream."""
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")("replace")  # a chunk may end mid-character
    buf = ""
    for chunk in _body_chunks(response):
        buf += text.decode(chunk)
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                obj, end = decoder.raw_decode(buf)
            except ValueError:
                break
            buf = buf[end:]
            if isinstance(obj, dict):
                yield obj


def iter_frames(response: requests.Response, tty: bool) -> Iterator[tuple[int, bytes]]:
    """(stream id, payload) from the engine's multiplexed stdout/stderr framing."""
    chunks = _body_chunks(response)
    if tty:
        for data in chunks:
            yield 1, data
        return
    # Frames and chunks need not line up: a frame may span chunks, a chunk hold several.
    buf = b""
    for data in chunks:
        buf = buf + data if buf else data
        pos, size = 0, len(buf)
        while size - pos >= 8:
            stream_id, length = _FRAME_HEADER.unpack_from(buf, pos)
            end = pos + 8 + length
            if end > size:
                break
            yield stream_id, buf[pos + 8 : end]
            pos = end
        buf = buf[pos:] if pos else buf


_FRAME_HEADER = struct.Struct(">BxxxL")


def iter_log_entries(frames: Iterator[tuple[int, bytes]], timestamps: bool) -> Iterator[LogEntry]:
    """Split framed output into lines, per stream, keeping partial lines until complete."""
    pending: dict[int, bytes] = {}
    for stream_id, data in frames:
        buf = pending.get(stream_id, b"") + data
        *lines, rest = buf.split(b"\n")
        pending[stream_id] = rest
        for line in lines:
            yield _entry(stream_id, line, timestamps)
    for stream_id, rest in pending.items():
        if rest:
            yield _entry(stream_id, rest, timestamps)


_LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def log_time_key(timestamp: str | None) -> tuple[int, int] | None:
    """An engine log timestamp (RFC 3339, up to nanoseconds) as (epoch seconds, ns).

    Docker trims trailing zeros from the fraction, so the strings themselves do not sort;
    these keys do. None for a missing or malformed timestamp.
    """
    match = _LOG_TIME.fullmatch(timestamp or "")
    if match is None:
        return None
    whole, frac, zone = match.groups()
    try:
        when = datetime.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return int(when.timestamp()), int((frac or "").ljust(9, "0"))


def _entry(stream_id: int, line: bytes, timestamps: bool) -> LogEntry:
    text = line.decode("utf-8", "replace").removesuffix("\r")
    ts = None
    if timestamps:
        head, sep, tail = text.partition(" ")
        if sep and head[:4].isdigit() and "T" in head:
            ts, text = head, tail
    return LogEntry(_STREAMS.get(stream_id, "stdout"), text, ts)


class ExecSession:
    """An interactive exec with a TTY: a raw bidirectional byte stream plus resize.

    ``read()`` blocks until output arrives (b"" at the end); ``write()`` sends keystrokes;
    ``resize()`` changes the TTY size; ``exit_code()`` asks the engine once it ended.
    """

    def __init__(
        self,
        sock: socket.socket,
        exec_id: str,
        resize: Callable[[int, int], None],
        inspect: Callable[[], dict[str, Any]],
        keepalive: object = None,
    ) -> None:
        self._sock = sock
        self.exec_id = exec_id
        self._resize = resize
        self._inspect = inspect
        self._keepalive = keepalive  # docker-py's wrapper: dropping it would close the socket
        self._closed = False
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, size: int = 65536) -> bytes:
        if self._closed:
            return b""
        try:
            return self._sock.recv(size)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        with self._lock:
            if not self._closed:
                self._sock.sendall(data)

    def resize(self, cols: int, rows: int) -> None:
        if cols > 0 and rows > 0 and not self._closed:
            self._resize(rows, cols)

    def close_input(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def exit_code(self) -> int | None:
        info = self._inspect()
        if info.get("Running"):
            return None
        code = info.get("ExitCode")
        return int(code) if isinstance(code, int) else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
