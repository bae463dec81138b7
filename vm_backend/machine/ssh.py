"""One long-lived, host-key-pinned SSH session to the helper VM (paramiko, no Qt).

The guest's sshd is reached through a QEMU user-net forward on ``127.0.0.1:PORT``. Any
local process can bind that port first, so the guest's host key is *pinned*: it was
generated on the host (:mod:`vm_backend.machine.keys`) and any other key is refused before
authentication, with no channel opened (Lima and podman machine accept any key).

A single :class:`paramiko.Transport` carries every exec, relay, terminal and port forward
(a fresh SSH login costs ~2 s; research/reliability_perf.md section 3.2). A monitor thread
waits on the transport thread, probes liveness, and reconnects with exponential backoff
when the transport drops; callers block (bounded) until it is back.

paramiko has no client for OpenSSH's ``direct-streamlocal@openssh.com`` channel (unix
socket forwarding): :class:`_BerthTransport` adds it, following ``Transport.open_channel``.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import hmac
import logging
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import paramiko
from paramiko.channel import Channel
from paramiko.common import cMSG_CHANNEL_OPEN
from paramiko.message import Message

from vm_backend.errors import BerthError
from vm_backend.machine.keys import (
    KEY_TYPE,
    fingerprint_sha256,
    load_client_pkey,
    public_key_from_openssh,
)

log = logging.getLogger(__name__)

STREAMLOCAL_KIND = "direct-streamlocal@openssh.com"

# The transport's algorithms, most preferred first; the guest's sshd takes the first of
# ours it also offers. Only AEAD or CTR ciphers and SHA-2 MACs (paramiko's own lists also
# offer CBC modes, 3DES, SHA-1 and MD5; a guest we built never needs them, and a server
# offering only those is refused). AES-GCM first: paramiko spends 8-15% less CPU per
# relayed request with it than with aes128-ctr + hmac-sha2-256 (one AEAD call, no HMAC
# and no Python MAC comparison), and under TCG the guest's sshd cost does not differ
# measurably (docs/benchmarks-relay.md). An AEAD cipher ignores the MAC list; for CTR,
# encrypt-then-MAC comes first.
CIPHERS: tuple[str, ...] = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
MACS: tuple[str, ...] = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)



#: A liveness probe waits this long at least for the guest's answer, and the session is
#: dropped only after this many probes in a row went unanswered.
PROBE_TIMEOUT_FLOOR_S = 20.0
PROBE_FAILURES_TO_DROP = 2
#: The SSH handshake (banner, key exchange, auth) may take this long at least.
HANDSHAKE_TIMEOUT_FLOOR_S = 30.0

class SSHState(enum.Enum):
    """Where the session stands; reported to ``on_state`` on every change."""

    DISCONNECTED = "disconnected"  # never connected yet, or lost and not yet retrying
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"  # close() was called; terminal


class ExecResult(NamedTuple):
    """What :meth:`GuestSSH.exec` returns; unpacks as ``rc, out, err``."""

    rc: int
    out: bytes
    err: bytes


class GuestSSHError(BerthError):
    """An SSH-level failure talking to the helper VM."""


class HostKeyMismatchError(GuestSSHError):
    """The machine on the forwarded port is not our VM: its host key is not the pinned one."""


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


class _BerthTransport(paramiko.Transport):
    """A paramiko Transport that can also open ``direct-streamlocal@openssh.com`` channels.

    ``Transport.open_channel`` packs destination fields only for the TCP kinds, so the
    streamlocal open (RFC 4254 section 5.1 framing; payload per OpenSSH's PROTOCOL file:
    ``string socket path, string reserved, uint32 reserved``) is built here, mirroring the
    registration steps of ``open_channel`` so the transport's reader thread routes the
    confirmation to the new channel exactly as it does for its own kinds.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._held: list[Message] = []
        self._held_lock = threading.Lock()

    # paramiko's reader thread answers some messages itself (a CHANNEL_CLOSE with its own
    # CLOSE, channel and global request replies, keepalives) through _send_user_message,
    # which waits until a key re-exchange is over; but only this very thread can finish
    # one. A channel closing just as a re-key started froze the transport for 30 s, then
    # killed it with every channel on it ("Key-exchange timed out waiting for key
    # negotiation"; tests/integration/test_relay.py, re-keying every MiB, under load).
    # Such messages are held (nothing but key-exchange messages may be sent meanwhile,
    # RFC 4253 section 7.1) and sent once the new keys are in use.
    def _send_user_message(self, data: Message) -> None:
        if threading.current_thread() is self and not self.clear_to_send.is_set():
            with self._held_lock:
                self._held.append(data)
            return
        base: Any = super()
        base._send_user_message(data)

    def _parse_newkeys(self, m: Message) -> None:
        base: Any = super()
        base._parse_newkeys(m)
        with self._held_lock:
            held, self._held = self._held, []
        for data in held:
            base._send_user_message(data)

    def open_streamlocal(self, socket_path: str, timeout: float | None = None) -> Channel:
        def payload(m: Message) -> None:
            m.add_string(socket_path)
            m.add_string("")
            m.add_int(0)

        return self._open_custom_channel(STREAMLOCAL_KIND, payload, timeout)

    def _open_custom_channel(
        self, kind: str, add_payload: Callable[[Message], None], timeout: float | None
    ) -> Channel:
        if not self.is_active():
            raise paramiko.SSHException("SSH session not active")
        # These attributes are paramiko internals (absent from the type stubs); they have been
        # stable since paramiko 1.x and open_channel itself relies on them.
        me: Any = self
        wait_s = self.channel_timeout if timeout is None else timeout
        with self.lock:
            window_size = me._sanitize_window_size(None)
            max_packet_size = me._sanitize_packet_size(None)
            chanid: int = me._next_channel()
            m = Message()
            m.add_byte(cMSG_CHANNEL_OPEN)
            m.add_string(kind)
            m.add_int(chanid)
            m.add_int(window_size)
            m.add_int(max_packet_size)
            add_payload(m)
            chan = Channel(chanid)
            me._channels.put(chanid, chan)
            self.channel_events[chanid] = event = threading.Event()
            self.channels_seen[chanid] = True
            chan_any: Any = chan
            chan_any._set_transport(self)
            chan_any._set_window(window_size, max_packet_size)
        me._send_user_message(m)
        deadline = time.monotonic() + wait_s
        # The reader thread sets the event on OPEN_CONFIRMATION or OPEN_FAILURE; the short
        # wait only bounds how late we notice a transport that died meanwhile.
        while not event.wait(0.1):
            if not self.is_active():
                break
            if time.monotonic() > deadline:
                raise paramiko.SSHException("Timeout opening channel.")
        opened: Channel | None = me._channels.get(chanid)
        if opened is not None and self.is_active():
            return opened
        exc = self.get_exception()
        if exc is None:
            exc = paramiko.SSHException("Unable to open channel.")
        raise exc


class GuestSSH:
    """A pinned, self-healing SSH session to ``root@127.0.0.1:port`` of one helper VM.

    Thread-safe: every public method may be called from any thread; they share the one
    transport (paramiko multiplexes channels over it).
    """

    def __init__(
        self,
        port: int,
        client_key_path: Path,
        host_public_key: str,
        *,
        host: str = "127.0.0.1",
        user: str = "root",
        keepalive_s: float = 5.0,
        probe_interval_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        on_state: Callable[[SSHState], None] | None = None,
        ciphers: Sequence[str] | None = None,
        macs: Sequence[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self._client_key = load_client_pkey(client_key_path)
        self._pinned = public_key_from_openssh(host_public_key)
        self._pinned_fp = fingerprint_sha256(host_public_key)
        self._keepalive_s = keepalive_s
        self._probe_interval_s = probe_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._on_state = on_state
        # Offered in this order; the guest's sshd takes the first it also supports.
        self._ciphers = tuple(CIPHERS if ciphers is None else ciphers)
        self._macs = tuple(MACS if macs is None else macs)
        self._cond = threading.Condition()
        self._transport: _BerthTransport | None = None
        self._state = SSHState.DISCONNECTED
        self._last_error: BerthError | None = None
        self._monitor: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def state(self) -> SSHState:
        return self._state

    @property
    def last_error(self) -> BerthError | None:
        """The error of the latest failed connection attempt (None once connected)."""
        return self._last_error

    @property
    def pinned_fingerprint(self) -> str:
        return self._pinned_fp

    def connect(self, retry_for_s: float = 0.0) -> None:
        """Connect now (raising the reason on failure), then keep the session alive.

        ``retry_for_s`` > 0 keeps retrying with backoff for that long, for a VM that is
        still booting (QEMU's forward accepts TCP before the guest's sshd listens, so early
        attempts fail in the handshake). A host-key mismatch is never retried here: it is a
        security event for the user to see, not a boot delay.

        On success a monitor thread takes over: it reconnects with backoff whenever the
        transport drops, until :meth:`close`.
        """
        with self._cond:
            if self._closed():
                raise GuestSSHError("this SSH session was closed", "create a new GuestSSH")
            if self._state is SSHState.CONNECTED:
                return
            self._set_state(SSHState.CONNECTING)
        deadline = time.monotonic() + retry_for_s
        delay = self._backoff_initial_s
        while True:
            try:
                transport = self._dial()
                break
            except BerthError as exc:
                with self._cond:
                    self._last_error = exc
                    retry = (
                        not isinstance(exc, HostKeyMismatchError)
                        and not self._closed()
                        and time.monotonic() + delay < deadline
                    )
                    if retry:
                        self._cond.wait(delay)  # close() wakes this early
                        retry = not self._closed()
                    if not retry:
                        if not self._closed():
                            self._set_state(SSHState.DISCONNECTED)
                        raise
                delay = min(delay * 2, self._backoff_max_s)
        with self._cond:
            if self._closed():
                transport.close()
                raise GuestSSHError("this SSH session was closed", "create a new GuestSSH")
            self._install(transport)
            if self._monitor is None:
                self._monitor = threading.Thread(
                    target=self._monitor_loop, name=f"berth-ssh-monitor:{self.port}", daemon=True
                )
                self._monitor.start()

    def close(self) -> None:
        """Close the transport (and every channel on it) and stop reconnecting."""
        with self._cond:
            transport = self._transport
            self._transport = None
            self._set_state(SSHState.CLOSED)
            self._cond.notify_all()
        if transport is not None:
            transport.close()
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(timeout=5)

    def __enter__(self) -> GuestSSH:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_connected(self, timeout: float) -> None:
        """Block until the session is up (e.g. after a drop), or raise why it is not."""
        self._active_transport(timeout)

    # ------------------------------------------------------------------ channels

    def exec(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = 60.0,
    ) -> ExecResult:
        """Run ``argv`` in the guest and return ``(rc, out, err)``.

        argv is quoted with :func:`shlex.join`, so no element is ever interpreted by the
        guest's shell. ``stdin`` (if any) is sent then closed; without it the command sees
        EOF at once, so nothing waits for input that never comes. ``rc`` is -1 if the
        command died without an exit status (e.g. killed by a signal).
        """
        if not argv:
            raise GuestSSHError("no command to run in the VM", "pass a non-empty argv")
        command = shlex.join(argv)
        chan = self._open(lambda t: t.open_session(timeout=self._connect_timeout_s))
        deadline = None if timeout is None else time.monotonic() + timeout
        err_chunks: list[bytes] = []
        helpers: list[threading.Thread] = []
        try:
            chan.exec_command(command)

            # stdout, stderr and stdin share the flow-control window: drain stderr and feed
            # stdin on their own threads so neither stream can stall the other.
            def read_err() -> None:
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    while chunk := chan.recv_stderr(65536):
                        err_chunks.append(chunk)

            def write_in() -> None:
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    if stdin:
                        chan.sendall(stdin)
                    chan.shutdown_write()

            helpers = [
                threading.Thread(target=read_err, name="berth-ssh-exec-err", daemon=True),
                threading.Thread(target=write_in, name="berth-ssh-exec-in", daemon=True),
            ]
            for thread in helpers:
                thread.start()
            out_chunks: list[bytes] = []
            while True:
                chan.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
                try:
                    chunk = chan.recv(65536)
                except TimeoutError as exc:
                    raise GuestSSHError(
                        f"`{command}` did not finish in the VM within {timeout} s",
                        "the VM may be overloaded; try again or raise the timeout",
                    ) from exc
                if not chunk:
                    break
                out_chunks.append(chunk)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not chan.status_event.wait(remaining):
                raise GuestSSHError(
                    f"`{command}` did not report an exit status within {timeout} s",
                    "the VM may be overloaded; try again or raise the timeout",
                )
            rc = chan.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise GuestSSHError(
                f"lost the SSH connection to the VM while running `{command}`: {exc}",
                "check that the VM is running; Berth reconnects on its own",
            ) from exc
        finally:
            chan.close()
            for thread in helpers:
                thread.join(timeout=5)
        return ExecResult(rc, b"".join(out_chunks), b"".join(err_chunks))

    def open_stdio(self, argv: Sequence[str]) -> Channel:
        """Start ``argv`` in the guest and return its channel: send = stdin, recv = stdout.

        Half-close works both ways (``shutdown_write()`` gives the command EOF on stdin; the
        command closing stdout gives ``recv() == b""``). stderr stays separate
        (``recv_stderr``). The caller owns the channel and must close it.
        """
        if not argv:
            raise GuestSSHError("no command to run in the VM", "pass a non-empty argv")
        command = shlex.join(argv)
        chan = self._open(lambda t: t.open_session(timeout=self._connect_timeout_s))
        try:
            chan.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan.close()
            raise GuestSSHError(
                f"the VM refused to run `{command}`: {exc}",
                "check the VM's sshd log (berth machine logs)",
            ) from exc
        return chan

    def open_pty_shell(self, cols: int, rows: int, term: str = "xterm-256color") -> Channel:
        """An interactive login shell on a pseudo-terminal of ``cols`` x ``rows``.

        Resize it with ``channel.resize_pty(width=cols, height=rows)`` when the terminal
        widget changes size. The caller owns the channel and must close it.
        """
        chan = self._open(lambda t: t.open_session(timeout=self._connect_timeout_s))
        try:
            chan.get_pty(term=term, width=cols, height=rows)
            chan.invoke_shell()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan.close()
            raise GuestSSHError(
                f"could not start a shell in the VM: {exc}",
                "check that the VM is running; its sshd may be restarting",
            ) from exc
        return chan

    def direct_tcpip(self, host: str, port: int) -> Channel:
        """A channel to ``host:port`` as seen from inside the guest (e.g. a published port)."""
        return self._open(
            lambda t: t.open_channel(
                "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=self._connect_timeout_s
            ),
            what=f"{host}:{port} in the VM",
        )

    def open_unix_socket(self, path: str) -> Channel:
        """A channel to the guest's unix socket ``path`` (``direct-streamlocal@openssh.com``).

        The guest's sshd must allow it (``AllowStreamLocalForwarding yes``, the default).
        """
        return self._open(
            lambda t: t.open_streamlocal(path, timeout=self._connect_timeout_s),
            what=f"the socket {path} in the VM",
        )

    # ----------------------------------------------------------------- internals

    def _closed(self) -> bool:
        # A method, not an inline comparison: other threads change _state while we wait
        # on the condition, which the type checker's narrowing cannot know.
        return self._state is SSHState.CLOSED

    def _set_state(self, state: SSHState) -> None:
        # Called with self._cond held. The callback must be quick and must not call back in.
        if state is self._state:
            return
        self._state = state
        self._cond.notify_all()
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:  # a broken listener must not break the session
                log.exception("SSH state listener failed")

    def _install(self, transport: _BerthTransport) -> None:
        self._transport = transport
        self._last_error = None
        self._set_state(SSHState.CONNECTED)

    def _active_transport(self, timeout: float) -> _BerthTransport:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                transport = self._transport
                if transport is not None and transport.is_active():
                    return transport
                if self._closed():
                    raise GuestSSHError(
                        "the SSH session to the VM was closed",
                        "the machine was stopped or is restarting; start it again",
                    )
                if self._state is SSHState.DISCONNECTED and self._monitor is None:
                    raise GuestSSHError(
                        "not connected to the VM over SSH", "start the machine first"
                    )
                if isinstance(self._last_error, HostKeyMismatchError):
                    raise self._last_error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    err = GuestSSHError(
                        f"the SSH connection to the VM on {self.host}:{self.port} is down"
                        " and did not come back in time",
                        "check that the VM is running (berth machine status); Berth keeps"
                        " reconnecting",
                    )
                    if self._last_error is not None:
                        raise err from self._last_error
                    raise err
                self._cond.wait(remaining)

    def _open(
        self, opener: Callable[[_BerthTransport], Channel], what: str = "a session"
    ) -> Channel:
        """Open a channel, retrying once on a fresh transport if the old one had died.

        Retrying is safe because a failed open runs nothing in the guest.
        """
        for attempt in (1, 2):
            transport = self._active_transport(self._connect_timeout_s)
            try:
                return opener(transport)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                if transport.is_active():
                    # The guest answered and refused (e.g. no such socket, forwarding off).
                    raise GuestSSHError(
                        f"the VM refused a channel to {what}: {exc}",
                        "check that the service is running in the VM",
                    ) from exc
                if attempt == 2:
                    raise GuestSSHError(
                        f"lost the SSH connection to the VM while opening {what}",
                        "check that the VM is running; Berth reconnects on its own",
                    ) from exc
                # Make the monitor notice now rather than at its next probe.
                transport.close()
        raise AssertionError("unreachable")

    def _dial(self) -> _BerthTransport:
        """One connection attempt: TCP, key exchange, host-key check, auth. Raises BerthError."""
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout_s)
        except OSError as exc:
            raise GuestSSHError(
                f"cannot reach the VM's SSH server on {where}: {exc.strerror or exc}",
                "check that the machine is running (berth machine start)",
            ) from exc
        # Relayed API calls are small request/response exchanges: Nagle would add delays.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = _BerthTransport(sock)
        try:
            # Only ed25519 host keys are negotiated: that is the type we generated and pin.
            options = transport.get_security_options()
            options.key_types = [KEY_TYPE]
            options.ciphers = self._ciphers
            options.digests = self._macs
            # A guest under TCG on a loaded host can take well over 10 s to fork sshd and
            # do the key exchange; a handshake given up early leaves that sshd working in
            # the guest (until LoginGraceTime), so quick retries only slow it further.
            handshake_s = max(self._connect_timeout_s, HANDSHAKE_TIMEOUT_FLOOR_S)
            transport.banner_timeout = handshake_s
            transport.auth_timeout = handshake_s
            try:
                transport.start_client(timeout=handshake_s)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise GuestSSHError(
                    f"the SSH handshake with {where} failed: {exc}",
                    "the VM may still be booting; if this persists, another program may be"
                    " using the port",
                ) from exc
            try:
                server_key = transport.get_remote_server_key()
            except (OSError, EOFError, paramiko.SSHException) as exc:
                # The session can die between the handshake and here (a banner read
                # failing under load): "No existing session".
                raise GuestSSHError(
                    f"the SSH session with {where} ended during the handshake: {exc}",
                    "the VM may be overloaded or still booting; Berth keeps retrying",
                ) from exc
            if server_key.get_name() != self._pinned.get_name() or not hmac.compare_digest(
                server_key.asbytes(), self._pinned.asbytes()
            ):
                got = _fingerprint(server_key)
                raise HostKeyMismatchError(
                    f"a different machine answered on {where}: its SSH host key is {got},"
                    f" but this VM's key is {self._pinned_fp}. Berth refused to connect",
                    "another program may be listening on that port; stop it, or restart the"
                    " machine so it gets a new port. If you replaced the VM's disk, recreate"
                    " the machine",
                )
            try:
                transport.auth_publickey(self.user, self._client_key)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise GuestSSHError(
                    f"the VM on {where} refused Berth's SSH key for {self.user}: {exc}",
                    "the guest did not receive this machine's key; restart the machine,"
                    " or recreate it if the problem stays",
                ) from exc
            transport.set_keepalive(max(1, round(self._keepalive_s)))
            return transport
        except BaseException:
            transport.close()
            sock.close()
            raise

    def _probe(self, transport: _BerthTransport) -> bool:
        """Is the guest still answering? paramiko's keepalive expects no reply, so it
        cannot tell a hung guest (QEMU still accepting on the forward) from a live one;
        opening and closing a session channel needs a round trip and costs the guest no
        process."""
        try:
            timeout = max(self._keepalive_s * 4, PROBE_TIMEOUT_FLOOR_S)
            transport.open_session(timeout=timeout).close()
            return True
        except (OSError, EOFError, paramiko.SSHException):
            return False

    def _monitor_loop(self) -> None:
        failures = 0  # liveness probes in a row that got no answer, on this transport
        probed: _BerthTransport | None = None
        while True:
            with self._cond:
                if self._closed():
                    return
                transport = self._transport
            if transport is not None:
                if transport is not probed:
                    probed, failures = transport, 0
                # Transport is a Thread: join() returns when its reader loop ends, so
                # waiting here costs nothing and a drop is noticed at once.
                transport.join(self._probe_interval_s)
                if transport.is_alive() and transport.is_active():
                    if self._probe(transport):
                        failures = 0
                        continue
                    failures += 1
                    log.warning(
                        "SSH liveness probe to %s:%s failed (%d of %d)",
                        self.host, self.port, failures, PROBE_FAILURES_TO_DROP,
                    )
                    # Dropping the session ends every relayed request on it: a guest that
                    # is only slow (TCG, a container starting) gets a second chance.
                    if failures >= PROBE_FAILURES_TO_DROP:
                        transport.close()
                    continue
                transport.close()
                with self._cond:
                    if self._closed():
                        return
                    if self._transport is transport:
                        self._transport = None
                        self._set_state(SSHState.RECONNECTING)
                log.info("SSH transport to %s:%s dropped; reconnecting", self.host, self.port)
            self._reconnect()

    def _reconnect(self) -> None:
        delay = self._backoff_initial_s
        while True:
            with self._cond:
                if self._closed():
                    return
                self._set_state(SSHState.RECONNECTING)
            try:
                transport = self._dial()
            except Exception as exc:  # noqa: BLE001 - the reconnect loop must never die
                if not isinstance(exc, BerthError):
                    log.warning("SSH reconnect to %s:%s failed unexpectedly: %r",
                                self.host, self.port, exc)
                    exc = GuestSSHError(
                        f"reconnecting to the VM's SSH server failed: {exc}",
                        "Berth keeps retrying; see the daemon log",
                    )
                with self._cond:
                    self._last_error = exc
                    self._cond.notify_all()
                    # Sleeping on the condition lets close() cut the wait short.
                    self._cond.wait(delay)
                delay = min(delay * 2, self._backoff_max_s)
                continue
            with self._cond:
                if self._closed():
                    transport.close()
                    return
                self._install(transport)
                log.info("SSH transport to %s:%s is back", self.host, self.port)
                return
