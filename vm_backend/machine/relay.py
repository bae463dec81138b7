"""The engine socket: a host unix socket relayed to the guest's docker.sock over SSH.

For each client connection (docker CLI, docker-py, the Berth window) one SSH channel is
taken on a long-lived transport to the VM (berthd gives the relay a session of its own, and
keeps spare channels open ahead of need), to ``/var/run/docker.sock`` in the guest,
and bytes are pumped both ways. Half-close is propagated in both directions, which the
Docker API's hijacked streams need (``docker attach``, ``exec -it``, ``run -i`` with stdin
closed): the client's ``shutdown(SHUT_WR)`` becomes the channel's EOF, and the channel's
EOF becomes ``shutdown(SHUT_WR)`` on the client socket.

Two channel kinds can reach the guest socket (docs/transports.md compares them, with
figures): ``direct-streamlocal@openssh.com`` (sshd connects to the socket itself; the
default) and an exec of ``docker system dial-stdio`` per connection (a process per
connection in the guest; kept as a fallback for a guest sshd with streamlocal off).

Security (research/reliability_perf.md 1.1 and 1.6): the socket is root-equivalent in the
guest, so it lives in a 0700 directory owned by us and is itself 0600. It is bound under
a temporary name in that directory and renamed into place, so a symlink or file planted at
the final path is replaced, never followed. The relay only ever connects to a socket path
*inside the guest*, by the SSH channel; it never resolves a host path per connection
(the CVE-2026-79994 shape). On Windows the counterpart is an owner-only named pipe
(``pipe_name``, ``\\\\.\\pipe\\berth-<user>-<hash>-<machine>-docker``;
:mod:`vm_backend.winpipe`: a DACL for the current user only, remote clients rejected, and
a name another program created first refused). Its clients are
:class:`~vm_backend.winpipe.PipeStream` objects, which have the socket calls the pumps make;
a zero-length message is a half-close both ways (Docker's go-winio convention).
Unit-tested on Linux over a fake pipe API; never run on Windows.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import queue
import secrets
import select
import selectors
import socket
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from paramiko.buffered_pipe import BufferedPipe
from paramiko.channel import Channel
from paramiko.common import cMSG_CHANNEL_WINDOW_ADJUST
from paramiko.message import Message
from paramiko.ssh_exception import SSHException

from vm_backend.errors import BerthError
from vm_backend.winpipe import ListenerClosed, PipeListener, PipeStream, pipe_url

log = logging.getLogger(__name__)

GUEST_DOCKER_SOCKET = "/var/run/docker.sock"
DIAL_STDIO_ARGV: tuple[str, ...] = ("docker", "system", "dial-stdio")
# sun_path is 108 bytes on Linux and 104 on macOS; use the smaller so a path that works
# on one works on both.
MAX_SOCKET_PATH = 103
_CHUNK = 65536
# Non-blocking send flag for the transport thread's direct writes (absent on Windows,
# where the fast path is then off).
_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
# Spare channels berthd keeps open to the guest's engine socket (EngineSocketRelay's
# ``spare_channels``): a new client gets one at once instead of waiting a round trip to the
# guest's sshd for its channel. dockerd reads nothing from a connection until the client
# writes, and no Docker release times out a connection that has not sent a request within
# minutes (moby's ReadHeaderTimeout, where set, is 5 min); a spare older than
# SPARE_MAX_AGE_S is closed unused all the same.
ENGINE_SPARE_CHANNELS = 2
SPARE_MAX_AGE_S = 60.0


class RelayMechanism(enum.Enum):
    """How each client connection reaches the guest's engine socket."""

    STREAMLOCAL = "direct-streamlocal"
    DIAL_STDIO = "dial-stdio"


class ChannelOpener(Protocol):
    """What the relay needs from the SSH session (GuestSSH provides it; tests may fake it)."""

    def open_unix_socket(self, path: str) -> Channel: ...

    def open_stdio(self, argv: Sequence[str]) -> Channel: ...


class RelayError(BerthError):
    """The engine socket could not be set up."""


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` 0700 if needed and check it is ours and not reachable by others.

    A directory that exists but belongs to someone else, or is a symlink, is refused: the
    socket inside would be theirs to replace. Loose permissions on our own directory are
    tightened rather than refused (an old umask may have created it).
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RelayError(
            f"{directory} is not a plain directory (a symlink or a file is in the way)",
            "remove it so Berth can create its socket directory",
        )
    if st.st_uid != os.getuid():
        raise RelayError(
            f"{directory} belongs to another user (uid {st.st_uid})",
            "Berth keeps the engine socket only in a directory of its own; remove it",
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)


def bind_private_socket(path: Path, backlog: int = 128) -> tuple[socket.socket, os.stat_result]:
    """Listen on a new 0600 unix socket at ``path`` (in a 0700 dir), atomically.

    Returns the listening socket and the ``lstat`` of the bound file, so the owner can
    later unlink the path only if it still is this very socket.
    """
    if not hasattr(socket, "AF_UNIX"):
        raise RelayError(
            "this platform has no unix sockets",
            "on Windows the engine socket is a named pipe (EngineSocketRelay's pipe_name)",
        )
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise RelayError(
            f"the socket path {path} is longer than {MAX_SOCKET_PATH} bytes, the limit of"
            " unix sockets",
            "choose a shorter Berth data directory (or machine name)",
        )
    ensure_private_dir(path.parent)
    tmp = path.parent / f".{secrets.token_hex(4)}.sock.tmp"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(tmp))
        # The directory is 0700 and ours, so nobody can reach the temporary name in the
        # instant between bind (mode from umask) and this chmod.
        os.chmod(tmp, 0o600)
        sock.listen(backlog)
        try:
            # rename(2) replaces whatever is at ``path`` (a stale socket, a planted symlink)
            # as a directory entry and never follows it.
            os.rename(tmp, path)
        except IsADirectoryError as exc:
            raise RelayError(
                f"a directory is in the way of the engine socket at {path}",
                "remove it and start the machine again",
            ) from exc
        return sock, os.lstat(path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class _DirectPipe(BufferedPipe):  # type: ignore[type-arg]
    """A channel's input buffer that hands the guest's bytes straight to the client.

    paramiko's reader thread (the transport) decrypts each packet and feeds its payload
    to ``channel.in_buffer``; a pump thread then wakes up, reads it and writes it to the
    client socket. For request/response traffic that wake-up is a third thread hop per
    reply (client -> pump -> transport -> *pump* -> client) where OpenSSH has one event
    loop. This pipe takes the place of the channel's buffer (same object, class
    swapped) and, while it is *direct*, writes each payload to the client socket from
    the transport thread itself, non-blocking, and acknowledges the window as
    ``Channel.recv`` would.

    It falls back to the ordinary buffer, waking the connection's downstream pump thread
    (which waits meanwhile) until that thread has written the buffer out, as soon as the
    client cannot take a payload at once (a slow reader, a bulk download: the transport
    thread must never block on one client), or a key re-exchange is under way (a window
    adjust must not wait for it on the thread that runs it), or a write got past the
    class swap (see ``_Watch``). Its EOF and close notifications (``close()``, which
    paramiko calls from ``_handle_eof`` and ``_set_closed`` with the channel's lock
    held) become the client's EOF; they never call back into the channel.
    """

    _conn: _Connection
    _direct: bool
    # BufferedPipe's own state (private in paramiko, absent from its type stubs).
    _lock: threading.Lock
    _cv: threading.Condition
    _event: Any
    _buffer: Any
    _closed: bool

    def _buffer_frombytes(self, data: bytes) -> None:
        self._buffer.frombytes(data)

    def feed(self, data: bytes) -> None:
        sent = 0
        with self._lock:
            if self._direct and not self._closed and len(self._buffer) == 0:
                sent = self._conn.deliver(data)
                if sent < len(data):
                    self._direct = False
                    self._conn.to_buffered()
            if sent < len(data):
                if self._event is not None:
                    self._event.set()
                self._buffer_frombytes(data[sent:])
                self._cv.notify_all()
        # Outside the pipe's lock: the window needs the channel's lock, which a thread
        # closing the channel holds while it closes this pipe.
        if sent:
            self._conn.ack(sent)

    def close(self) -> None:
        with self._lock:
            direct = self._direct
            first = not self._closed  # the EOF, then maybe the channel's close
            self._closed = True
            self._cv.notify_all()
            if self._event is not None:
                self._event.set()
        if direct and first:
            self._conn.guest_eof_direct()


class _Watch:
    """The pipe's ``_event`` while direct: a write that got past the class swap ends it.

    A ``BufferedPipe.feed`` or ``close`` that paramiko's thread entered just before
    :meth:`_Connection._go_direct` swapped the class runs the base code, which sets the
    event (under the pipe's lock) before adding its data: the bytes then wait in the
    buffer, and the downstream thread takes over.
    """

    def __init__(self, pipe: _DirectPipe) -> None:
        self.pipe = pipe

    def set(self) -> None:
        pipe = self.pipe
        if pipe._direct:  # pipe._lock is held here (base feed/close set it in the lock)
            pipe._direct = False
            pipe._conn.to_buffered()

    def clear(self) -> None:
        pass


class _Workers:
    """Reusable threads for the relay's pumps: a new connection's halves go to idle ones.

    Starting a thread for each half cost 180-210 us apiece on our machines (measured by
    bench/bench_relay_timeline.py: accept -> up thread running -> down thread running),
    over a third of a whole ``ssh -L`` round trip through a local sshd each; handing work
    to a waiting thread is a queue put. Threads are started only when none is idle (so the
    count follows the peak of concurrent halves, bounded by ``max_connections``), and one
    left idle for ``idle_s`` exits. A thread that cannot be started raises RuntimeError
    from :meth:`submit`, as ``Thread.start`` does.
    """

    def __init__(self, idle_s: float = 30.0) -> None:
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], str] | None] = (
            queue.SimpleQueue()
        )
        self._idle = 0  # threads waiting for a job, less the jobs queued for them
        self._closed = False

    def submit(self, job: Callable[[], None], name: str) -> None:
        """Run ``job()`` on an idle thread, or on a new one named ``name``."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the relay is stopping")
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put((job, name))
                return
        threading.Thread(target=self._run, args=(job,), name=name, daemon=True).start()

    def close(self) -> None:
        """Let every idle thread exit now (busy ones exit when their job ends)."""
        with self._lock:
            self._closed = True
            for _ in range(self._idle):
                self._jobs.put(None)
            self._idle = 0

    def _run(self, job: Callable[[], None]) -> None:
        me = threading.current_thread()
        while True:
            try:
                job()
            except Exception:  # a pump's own handlers log what they expect
                log.exception("engine socket: unexpected error in a pump thread")
            del job  # nothing of the connection stays referenced while idle
            with self._lock:
                if self._closed:
                    return
                self._idle += 1
            try:
                item = self._jobs.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:
                    try:
                        item = self._jobs.get_nowait()  # queued as the wait ran out
                    except queue.Empty:
                        self._idle -= 1
                        return
            if item is None:
                return
            job, me.name = item


class _Connection:
    """One relayed client: a client socket, one SSH channel, two pump threads (from the
    relay's :class:`_Workers`).

    Every path ends in :meth:`_release`, exactly once, after both pump halves are done:
    it closes the channel and the client socket and removes the connection from the
    relay's count, whatever failed on the way (a channel that cannot be opened, a thread
    that cannot be started, a transport that dies while the channel is being closed).
    """

    def __init__(self, relay: EngineSocketRelay, client: socket.socket, number: int) -> None:
        self.relay = relay
        self.client = client
        self.number = number
        self.chan: Channel | None = None
        self._lock = threading.Lock()
        self._halves_done = 0
        self._up_done = False
        self._aborted = False
        self._finished = False
        # The fast path (_DirectPipe): while it lasts, run_down only waits on _down_go,
        # which is set when the pipe falls back to buffering, or the guest's EOF was
        # passed on from the transport thread (_direct_eof), or the connection aborts.
        self._direct = False
        self._direct_eof = False
        self._down_go = threading.Event()

    def run_up(self) -> None:
        """Thread 1: open the channel, start the downstream pump, then client -> channel."""
        try:
            chan = self.relay._open_channel()
        except Exception as exc:  # any failure must still release this connection
            if isinstance(exc, BerthError):
                log.warning("engine socket: %s", exc)
            else:
                log.exception("engine socket: unexpected error opening a channel")
            # Closing without a reply is what a dead engine socket looks like to a client:
            # docker-py/CLI report "connection reset/EOF", and the daemon logs the reason.
            self._half_done(up=True)
            self._half_done()
            return
        with self._lock:
            self.chan = chan
            aborted = self._aborted
        if aborted:
            self._half_done(up=True)
            self._half_done()
            return
        self._go_direct(chan)
        try:
            self.relay._workers.submit(self.run_down, f"berth-relay-down-{self.number}")
        except RuntimeError as exc:  # "can't start new thread": out of threads
            log.warning("engine socket: cannot start a pump thread: %s", exc)
            self._abort(str(exc))
            self._half_done(up=True)
            self._half_done()
            return
        try:
            while True:
                data = self.client.recv(_CHUNK)
                if not data:
                    break
                chan.sendall(data)
            if not self._aborted:
                chan.shutdown_write()
                self._wait_client_hangup()
        except (OSError, EOFError, SSHException) as exc:
            self._abort(f"client to guest: {exc}")
        finally:
            self._half_done(up=True)

    def run_down(self) -> None:
        """Thread 2: channel -> client; the channel's EOF becomes the client's EOF.

        After the EOF it stays until the channel is closed or the client side is done: a
        guest that *closes* the channel (a dial-stdio process exiting, sshd after both
        EOFs) can take nothing more from the client, so the client is cut then, as
        OpenSSH's ``ssh -L`` does, rather than left waiting until it writes or hangs up.
        """
        chan = self.chan
        assert chan is not None
        try:
            while True:
                if self._direct:
                    self._down_go.wait()  # the transport thread delivers meanwhile
                if self._direct_eof:
                    break  # it delivered the EOF too
                if self._pump_buffered(chan):
                    if not self._aborted:
                        self.client.shutdown(socket.SHUT_WR)
                    break
            if self._wait_channel_closed(chan):
                self._abort("the guest closed the channel")
        except (OSError, EOFError, SSHException) as exc:
            self._abort(f"guest to client: {exc}")
        finally:
            self._half_done()

    def _pump_buffered(self, chan: Channel) -> bool:
        """Copy the channel's buffer to the client: True at the channel's EOF, False once
        the buffer is drained and direct delivery resumed (see :meth:`_rearm`)."""
        while True:
            data = chan.recv(_CHUNK)
            if not data:
                return True
            self.client.sendall(data)
            if self._direct and self._rearm(chan):
                return False

    # ------------------------------------------------------------ the fast path

    def _go_direct(self, chan: Channel) -> None:
        """Swap the channel's input buffer for a :class:`_DirectPipe` if it is safe to.

        Only a real paramiko channel whose buffer is still empty and unwatched
        (``fileno()`` not used) is switched; anything else keeps the buffered path.
        """
        if not _DONTWAIT or not self.relay.direct_delivery:
            return
        found = getattr(chan, "in_buffer", None)
        transport = getattr(chan, "transport", None)
        if type(found) is not BufferedPipe or getattr(transport, "clear_to_send", None) is None:
            return
        pipe: Any = found
        with pipe._lock:
            if pipe._closed or len(pipe._buffer) or pipe._event is not None:
                return
            pipe.__class__ = _DirectPipe
            pipe._conn = self
            pipe._direct = True
            pipe._event = _Watch(pipe)
        self._direct = True

    def deliver(self, data: bytes) -> int:
        """Transport thread: write ``data`` to the client without blocking; bytes sent.

        A key re-exchange in progress sends nothing (0): paramiko's own thread runs it,
        so the window adjust (:meth:`ack`) must not wait for it here.
        """
        chan: Any = self.chan
        transport: Any = chan.transport
        if self._aborted or not transport.clear_to_send.is_set():
            return 0
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                sent += self.client.send(view[sent:], _DONTWAIT)
        except OSError:
            pass  # full (EAGAIN), or gone: the buffered path takes over and sees it again
        return sent

    def ack(self, n: int) -> None:
        """Transport thread: count ``n`` delivered bytes against the channel's window and
        send a window adjust when due, as ``Channel.recv`` does."""
        chan: Any = self.chan
        transport: Any = chan.transport
        ack = chan._check_add_window(n)
        if ack > 0:
            m = Message()
            m.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
            m.add_int(chan.remote_chanid)
            m.add_int(ack)
            try:
                transport._send_user_message(m)
            except (OSError, EOFError, SSHException) as exc:  # the transport is dying
                log.debug("engine socket connection %d: window adjust: %s", self.number, exc)

    def _rearm(self, chan: Channel) -> bool:
        """Down thread, buffer written out: hand delivery back to the transport thread.

        Under the pipe's lock, so a payload arriving meanwhile is either in the buffer
        (we keep pumping) or comes after the switch (delivered directly, in order:
        everything before it has been written by now).
        """
        pipe: Any = getattr(chan, "in_buffer", None)
        if type(pipe) is not _DirectPipe:
            return False
        with pipe._lock:
            if len(pipe._buffer) or pipe._closed or self._aborted:
                return False
            self._down_go.clear()
            pipe._direct = True
            return True

    def to_buffered(self) -> None:
        """The pipe fell back to buffering: run_down pumps from now on."""
        self._down_go.set()

    def guest_eof_direct(self) -> None:
        """Transport thread (channel lock held): the guest's EOF; pass it to the client.

        Must not call into the channel. run_down then waits for the channel's close.
        """
        if not self._aborted:
            with contextlib.suppress(OSError):
                self.client.shutdown(socket.SHUT_WR)
        self._direct_eof = True
        self._down_go.set()

    # --------------------------------------------------------------- endings

    def _wait_channel_closed(self, chan: Channel) -> bool:
        """Block until the channel is closed (True) or the upstream half is done (False).

        paramiko notifies ``out_buffer_cv`` (a condition on the channel's lock) when the
        channel closes; :meth:`_half_done` notifies it when the upstream half ends. A
        channel without them (a test double) is not waited for.
        """
        cv: threading.Condition | None = getattr(chan, "out_buffer_cv", None)
        if cv is None:
            return False
        with cv:
            cv.wait_for(lambda: chan.closed or self._up_done)
            return bool(chan.closed) and not self._up_done

    def _wait_client_hangup(self) -> None:
        """After the client's EOF, wait until it hangs up completely or we finish.

        A client that half-closed may still be reading (docker attach with stdin done);
        one that *closed* will never read again, but a quiet hijacked stream would keep
        its channel open until the container wrote something. POLLHUP is raised when both
        directions are shut: the client closed, or run_down shut ours after the channel's
        EOF, or _abort shut both, so this wait always ends and never spins.
        """
        client = self.client
        if isinstance(client, PipeStream):
            # A named-pipe client (Windows has no poll()): a read that ends when the client
            # closes its end stands in for POLLHUP.
            def hung_up() -> bool:
                return client.wait_peer_gone(1.0)
        else:
            poller = select.poll()
            poller.register(client.fileno(), 0)  # 0: only HUP/ERR/NVAL wake us

            def hung_up() -> bool:
                # Linux raises POLLHUP as described; the 1 s timeout is only a safety net
                # for platforms whose unix sockets report it differently (one wake-up a
                # second per half-closed connection, never a spin).
                events = poller.poll(1000)
                bad = select.POLLHUP | select.POLLERR | select.POLLNVAL
                return any(ev & bad for _, ev in events)

        while not hung_up():
            with self._lock:
                if self._halves_done >= 1 or self._aborted:
                    break
        with self._lock:
            down_done = self._halves_done >= 1
        if not down_done:
            # The client went away while the guest side was still open: stop the stream.
            self._abort("client hung up")

    def _abort(self, reason: str) -> None:
        with self._lock:
            if self._aborted or self._finished:
                return
            self._aborted = True
            chan = self.chan
        self._down_go.set()
        log.debug("engine socket connection %d aborted: %s", self.number, reason)
        # Both calls wake the pump threads: recv() on a closed channel returns b"", and
        # shutdown() makes the client socket's recv return and poll report HUP.
        if chan is not None:
            _close_channel(chan, self.number)
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_RDWR)

    def _half_done(self, up: bool = False) -> None:
        with self._lock:
            self._halves_done += 1
            if up:
                self._up_done = True
            last = self._halves_done >= 2 and not self._finished
            if last:
                self._finished = True
            chan = self.chan
        if up and chan is not None:
            # Wake run_down if it waits for the channel to close (_wait_channel_closed).
            cv: threading.Condition | None = getattr(chan, "out_buffer_cv", None)
            if cv is not None:
                with cv:
                    cv.notify_all()
        if last:
            self._release(chan)

    def _release(self, chan: Channel | None) -> None:
        try:
            if chan is not None:
                try:
                    if chan.recv_stderr_ready():
                        # Only an exec'd relay (dial-stdio) has stderr; it explains an
                        # early EOF.
                        err = chan.recv_stderr(4096).decode("utf-8", "replace").strip()
                        log.warning("engine socket: guest relay command said: %s", err)
                finally:
                    _close_channel(chan, self.number)
        finally:
            with contextlib.suppress(OSError):
                self.client.close()
            self.relay._forget(self)

    def abort(self) -> None:
        self._abort("relay stopping")


def _close_channel(chan: Channel, number: int) -> None:
    """Close ``chan``; a transport dying meanwhile (paramiko raises then) is only logged."""
    try:
        chan.close()
    except (OSError, EOFError, SSHException) as exc:
        log.debug("engine socket connection %d: closing its channel: %s", number, exc)


class EngineSocketRelay:
    """Serve ``socket_path`` on the host; relay each connection to the guest's engine.

    ``max_connections`` bounds threads and channels (two threads and one channel per
    connection); a client beyond it is closed at once and a warning is logged.

    ``direct_delivery`` (on by default) lets paramiko's transport thread write the
    guest's bytes straight to the client (:class:`_DirectPipe`); off, every byte goes
    through the downstream pump thread. It exists for the benchmark's side-by-side.

    ``spare_channels`` (0 by default; berthd's engine socket uses
    :data:`ENGINE_SPARE_CHANNELS`) keeps that many channels to the guest socket opened
    ahead of need, by a thread of their own: a new client takes one and skips the channel
    open's round trip to the guest, and the thread opens its replacement meanwhile. Only
    for a socket where an unused connection is harmless (the engine's); a port forward
    must not connect to a container's port before a client does. A spare found closed
    (the guest hung up, the SSH session dropped) or older than ``spare_max_age_s`` is
    closed and skipped; nothing is opened while no client comes (no idle traffic).
    """

    direct_delivery = True

    def __init__(
        self,
        ssh: ChannelOpener,
        socket_path: Path,
        *,
        guest_socket: str = GUEST_DOCKER_SOCKET,
        mechanism: RelayMechanism = RelayMechanism.STREAMLOCAL,
        dial_stdio_argv: Sequence[str] = DIAL_STDIO_ARGV,
        max_connections: int = 256,
        spare_channels: int = 0,
        spare_max_age_s: float = SPARE_MAX_AGE_S,
        pipe_name: str | None = None,
    ) -> None:
        self.ssh = ssh
        self.socket_path = Path(socket_path)
        # Windows: serve this owner-only named pipe instead of socket_path.
        self.pipe_name = pipe_name
        self._pipe_listener: PipeListener | None = None
        self.guest_socket = guest_socket
        self.mechanism = mechanism
        self.dial_stdio_argv = tuple(dial_stdio_argv)
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._counter = 0
        self._listener: socket.socket | None = None
        self._bound: os.stat_result | None = None
        self._wake_r: int = -1
        self._wake_w: int = -1
        self._accept_thread: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)
        self.spare_channels = max(0, spare_channels)
        self.spare_max_age_s = spare_max_age_s
        self._spares: deque[tuple[float, Channel]] = deque()
        self._spare_lock = threading.Lock()
        self._spare_wanted = threading.Event()
        self._spare_stop = False
        self._spare_thread: threading.Thread | None = None
        self._workers = _Workers()

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    @property
    def url(self) -> str:
        """The ``DOCKER_HOST`` value: ``unix://...``, or ``npipe:////./pipe/...``."""
        if self.pipe_name is not None:
            return pipe_url(self.pipe_name)
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        """Bind the socket (see :func:`bind_private_socket`) and start accepting."""
        if self._listener is not None or self._pipe_listener is not None:
            return
        if self.pipe_name is not None:
            self._pipe_listener = PipeListener(self.pipe_name)  # PipeError if squatted
            target = self._accept_pipe_loop
        elif sys.platform == "win32":
            raise RelayError(
                "on Windows the engine socket is a named pipe, and none was given",
                "report this: berthd passes the machine's pipe name",
            )
        else:
            self._listener, self._bound = bind_private_socket(self.socket_path)
            self._wake_r, self._wake_w = os.pipe()
            target = self._accept_loop
        self._accept_thread = threading.Thread(
            target=target, name=f"berth-relay-accept:{self.socket_path.name}",
            daemon=True,
        )
        self._accept_thread.start()
        self._workers = _Workers()  # a relay stopped before has closed its threads
        if self.spare_channels:
            self._spare_stop = False
            self._spare_wanted.set()  # the first spares, so the first client is quick too
            self._spare_thread = threading.Thread(
                target=self._spare_loop, name=f"berth-relay-spares:{self.socket_path.name}",
                daemon=True,
            )
            self._spare_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut every relayed connection, and remove the socket file.

        The file is removed only if it still is the socket we bound (same inode), so a
        newer relay's socket at the same path is left alone.
        """
        pipe, self._pipe_listener = self._pipe_listener, None
        if pipe is not None:
            pipe.close()  # wakes the accept thread's ConnectNamedPipe
            if self._accept_thread is not None:
                self._accept_thread.join(timeout)
            self._end_connections(timeout)
            return
        listener = self._listener
        if listener is None:
            return
        self._listener = None
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        bound = self._bound
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.socket_path)
            if bound is not None and (st.st_ino, st.st_dev) == (bound.st_ino, bound.st_dev):
                os.unlink(self.socket_path)
        self._end_connections(timeout)

    def _end_connections(self, timeout: float) -> None:
        """stop(): close the spares, cut every relayed connection, wait for them."""
        self._stop_spares(timeout)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.abort()
        with self._idle:
            self._idle.wait_for(lambda: not self._connections, timeout)
        self._workers.close()

    def __enter__(self) -> EngineSocketRelay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- internals

    def _open_channel(self) -> Channel:
        if self.spare_channels:
            spare = self._take_spare()
            if spare is not None:
                return spare  # replaced when this connection ends (_forget), off its path
            self._spare_wanted.set()  # none left (a burst): refill now
        return self._open_new_channel()

    def _open_new_channel(self) -> Channel:
        if self.mechanism is RelayMechanism.STREAMLOCAL:
            return self.ssh.open_unix_socket(self.guest_socket)
        return self.ssh.open_stdio(self.dial_stdio_argv)

    # ------------------------------------------------------------ spare channels

    def _take_spare(self) -> Channel | None:
        """A spare channel still fit to use, or None; unfit ones are closed on the way."""
        now = time.monotonic()
        while True:
            with self._spare_lock:
                if not self._spares:
                    return None
                opened, chan = self._spares.popleft()
            if self._spare_fit(chan, opened, now):
                return chan
            _close_channel(chan, 0)

    def _spare_fit(self, chan: Channel, opened: float, now: float) -> bool:
        if now - opened > self.spare_max_age_s:
            return False
        # The guest end said nothing and closed nothing (dockerd only ever answers).
        return not (chan.closed or chan.eof_received or chan.recv_ready())

    def _spare_loop(self) -> None:
        """Keep ``spare_channels`` spares while clients come; open nothing while idle.

        Woken at start, when a connection ends (its spare is replaced then, not while its
        request is under way) and when a client finds none left. Each round opens at
        most ``spare_channels``: a failure to open (the VM's SSH session down) ends it, and
        a guest that hangs up on every new connection costs one round per client, never a
        loop; the next client wakes it again.
        """
        while True:
            self._spare_wanted.wait()
            self._spare_wanted.clear()
            if self._spare_stop:
                return
            now = time.monotonic()
            stale: list[Channel] = []
            with self._spare_lock:
                for _ in range(len(self._spares)):
                    opened, chan = self._spares.popleft()
                    if self._spare_fit(chan, opened, now):
                        self._spares.append((opened, chan))
                    else:
                        stale.append(chan)
                missing = self.spare_channels - len(self._spares)
            for chan in stale:
                _close_channel(chan, 0)
            for _ in range(missing):
                if self._spare_stop:
                    break
                try:
                    chan = self._open_new_channel()
                except Exception as exc:  # the next client tries again
                    if isinstance(exc, (BerthError, OSError, EOFError, SSHException)):
                        log.debug("engine socket: cannot open a spare channel: %s", exc)
                    else:
                        log.exception("engine socket: unexpected error opening a spare")
                    break
                with self._spare_lock:
                    kept = not self._spare_stop
                    if kept:
                        self._spares.append((time.monotonic(), chan))
                if not kept:
                    _close_channel(chan, 0)

    def _stop_spares(self, timeout: float) -> None:
        thread = self._spare_thread
        if thread is None:
            return
        self._spare_thread = None
        self._spare_stop = True
        self._spare_wanted.set()
        thread.join(timeout)
        with self._spare_lock:
            spares = [c for _, c in self._spares]
            self._spares.clear()
        for chan in spares:
            _close_channel(chan, 0)

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in sel.select()}
                if self._wake_r in ready:
                    return
                try:
                    client, _ = listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        # Out of descriptors: the pending client stays queued; wait for a
                        # connection to end rather than spinning on accept.
                        log.warning("engine socket: cannot accept: %s", exc)
                        with self._idle:
                            self._idle.wait(0.5)
                    continue
                self._serve(client)

    def _accept_pipe_loop(self) -> None:
        """Windows: hand each pipe client to :meth:`_serve` until stop() closes the pipe."""
        pipe = self._pipe_listener
        if pipe is None:
            return  # stop() came first
        while True:
            try:
                client = pipe.accept()
            except ListenerClosed:
                return
            except (OSError, BerthError) as exc:
                if pipe.closed:
                    return
                log.warning("engine socket: cannot accept on %s: %s", self.pipe_name, exc)
                with self._idle:
                    self._idle.wait(0.5)
                continue
            # A PipeStream has the socket calls the relay makes on a client (recv,
            # sendall, send, shutdown, close, family).
            self._serve(cast(socket.socket, client))

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            if len(self._connections) >= self.max_connections:
                full = True
            else:
                full = False
                self._counter += 1
                conn = _Connection(self, client, self._counter)
                self._connections.add(conn)
        if not full and client.family in (socket.AF_INET, socket.AF_INET6):
            # A port forward's TCP client: replies go out as they come (no Nagle delay).
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if full:
            log.warning(
                "engine socket: %d connections already open; refusing one more",
                self.max_connections,
            )
            client.close()
            return
        try:
            self._workers.submit(conn.run_up, f"berth-relay-up-{conn.number}")
        except RuntimeError as exc:  # "can't start new thread": out of threads
            log.warning("engine socket: cannot start a pump thread: %s", exc)
            conn._half_done(up=True)
            conn._half_done()

    def _forget(self, conn: _Connection) -> None:
        with self._idle:
            self._connections.discard(conn)
            self._idle.notify_all()
        if self.spare_channels:
            self._spare_wanted.set()
