"""QMP: the QEMU control channel, through ``qemu.qmp``'s asyncio ``QMPClient``.

:class:`QmpMonitor` is the async API (for berthd's loop); :class:`SyncQmp` is a thin
blocking wrapper running it on an :class:`EventLoopThread`. Events of interest are
delivered to callbacks as frozen :class:`QmpEvent` values, *on the loop thread*: callbacks
must be quick and thread-safe. A dropped connection that we did not ask for (QEMU died,
was killed) is reported through ``on_disconnect`` — one of the two crash signals, the
other being the process exit.

On Windows QEMU's QMP endpoint is a named pipe (``-chardev pipe``, ``\\\\.\\pipe\\<stem>-
<name>-qmp``) that serves one client and is not owner-only: berthd claims it right after
QEMU starts (:mod:`vm_backend.machine.qemu_pipes`, which refuses a pipe someone else
holds), and :class:`_QMPClient` runs qemu.qmp over the claimed pipe through a threaded
asyncio transport instead of connecting to an address. Unit-tested on Linux over the
in-memory fake of the pipe API; never run on Windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ssl import SSLContext
from types import MappingProxyType
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError, Runstate

from vm_backend.errors import BerthError
from vm_backend.machine.loopthread import EventLoopThread
from vm_backend.machine.paths import PIPE_PREFIX
from vm_backend.machine.qemu_pipes import claim_qemu_pipe, open_stream_connection
from vm_backend.winpipe import PipeStream

log = logging.getLogger(__name__)

_QUIET_CONNECT_LOG = logging.getLogger("berth.qmp.connect-attempt")
_QUIET_CONNECT_LOG.setLevel(logging.CRITICAL)

WATCHED_EVENTS = ("SHUTDOWN", "POWERDOWN", "RESET", "STOP", "RESUME", "BLOCK_IO_ERROR")
DEFAULT_COMMAND_TIMEOUT = 10.0
_HOSTFWD_WAIT = DEFAULT_COMMAND_TIMEOUT + 2.0


class QmpError(BerthError):
    """QMP could not connect, a command failed, or the connection dropped."""


@dataclass(frozen=True)
class QmpEvent:
    """One QMP event: its name, its data and QEMU's timestamp (seconds since the epoch)."""

    name: str
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    timestamp: float = 0.0


@dataclass(frozen=True)
class VmRunStatus:
    """``query-status``: QEMU's run state (running, paused, shutdown, internal-error, ...)."""

    status: str
    running: bool


EventCallback = Callable[[QmpEvent], None]
DisconnectCallback = Callable[[], None]


def _to_event(message: Mapping[str, Any]) -> QmpEvent:
    stamp = message.get("timestamp") or {}
    ts = float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
    data = message.get("data") or {}
    return QmpEvent(str(message.get("event", "")), MappingProxyType(dict(data)), ts)


def _hostfwd_rule(proto: str, host_addr: str, host_port: int) -> str:
    """``tcp:127.0.0.1:8080`` — validated, because it is spliced into an HMP command line."""
    if proto not in ("tcp", "udp"):
        raise QmpError(f"Unknown protocol {proto!r} for a port forward.", "Use tcp or udp.")
    try:
        addr = ipaddress.IPv4Address(host_addr)
    except ValueError as exc:
        raise QmpError(f"{host_addr!r} is not an IPv4 address.") from exc
    if not 0 < host_port < 65536:
        raise QmpError(f"{host_port} is not a TCP/UDP port.")
    return f"{proto}:{addr}:{host_port}"


class _QMPClient(QMPClient):
    """qemu.qmp's client, which can also talk over a pipe berthd has already claimed."""

    def __init__(self, name: str, pipe: PipeStream | None = None) -> None:
        super().__init__(name)
        self._pipe = pipe

    async def _do_connect(
        self, address: Any, ssl: SSLContext | None = None
    ) -> None:
        if self._pipe is None:
            await super()._do_connect(address, ssl)
            return
        # What qemu.qmp's _do_connect does, with the claimed pipe in place of a socket.
        assert self.runstate == Runstate.IDLE
        self._set_state(Runstate.CONNECTING)
        await asyncio.sleep(0)  # let runstate watchers see CONNECTING
        self.logger.debug("Talking over the pipe %s ...", address)
        self._reader, self._writer = open_stream_connection(self._pipe, address, self.readbuflen)


def _address_ready(address: str) -> bool:
    return os.path.exists(address)


class QmpMonitor:
    """An async QMP session with event callbacks and loss-of-connection detection."""

    def __init__(self, name: str = "berth") -> None:
        self._name = name
        self._client: QMPClient | None = None
        self._event_callbacks: list[EventCallback] = []
        self._disconnect_callbacks: list[DisconnectCallback] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.connected_after: float | None = None

    def on_event(self, callback: EventCallback) -> None:
        self._event_callbacks.append(callback)

    def on_disconnect(self, callback: DisconnectCallback) -> None:
        self._disconnect_callbacks.append(callback)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.runstate is Runstate.RUNNING

    async def connect(
        self,
        address: str,
        timeout: float = 10.0,
        retry_interval: float = 0.01,
        alive: Callable[[], bool] | None = None,
        pipe: PipeStream | None = None,
    ) -> None:
        """Connect, retrying until ``timeout`` while QEMU creates the socket.

        ``alive`` (if given) is checked between attempts, so a QEMU that died during
        start-up fails the connect at once instead of after the whole timeout.

        A Windows pipe name is claimed instead (:func:`claim_qemu_pipe`: a pipe someone
        else holds raises :class:`~vm_backend.machine.qemu_pipes.PipeTakenError`), unless
        ``pipe`` is that pipe, claimed already; it is closed if the session fails.
        """
        started = time.monotonic()
        deadline = started + timeout
        if pipe is not None or address.startswith(PIPE_PREFIX):
            client = await self._connect_pipe(address, deadline, alive, pipe)
            self.connected_after = time.monotonic() - started
            self._start(client)
            return
        last_error: BaseException | None = None
        while True:
            if not _address_ready(address):
                # Connecting before QEMU has created the socket would only log errors.
                last_error = FileNotFoundError(address)
                if alive is not None and not alive():
                    raise QmpError("QEMU exited before its control socket was ready.")
                if time.monotonic() >= deadline:
                    raise QmpError(
                        f"QEMU did not create its control socket {address} "
                        f"within {timeout:.0f} s.",
                        "See qemu.log in the machine's folder.",
                    )
                await asyncio.sleep(retry_interval)
                continue
            client = _QMPClient(self._name)
            # A socket that exists but is not listening yet refuses us for a moment; that
            # is expected while QEMU starts, so keep qemu.qmp from logging it as an error.
            client.logger = _QUIET_CONNECT_LOG
            try:
                # Bounded: QEMU serves one QMP client per socket, so when another program
                # holds it the kernel accepts our connection but no greeting ever comes.
                await asyncio.wait_for(
                    client.connect(address), max(0.1, deadline - time.monotonic())
                )
            except TimeoutError as exc:
                with contextlib.suppress(QMPError, OSError, AssertionError):
                    await client.disconnect()
                raise QmpError(
                    f"QEMU's control socket {address} did not answer within {timeout:.0f} s.",
                    "Another program may be connected to it (QEMU serves one at a time).",
                ) from exc
            except (QMPError, OSError) as exc:
                last_error = exc
                with contextlib.suppress(QMPError, OSError):
                    await client.disconnect()
            else:
                client.logger = logging.getLogger("qemu.qmp.protocol").getChild(self._name)
                self._client = client
                self.connected_after = time.monotonic() - started
                break
            if alive is not None and not alive():
                raise QmpError("QEMU exited before its control socket was ready.")
            if time.monotonic() >= deadline:
                raise QmpError(
                    f"Could not connect to QEMU's control socket {address} "
                    f"within {timeout:.0f} s ({last_error}).",
                    "See qemu.log in the machine's folder.",
                ) from last_error
            await asyncio.sleep(retry_interval)
        self._start(client)

    async def _connect_pipe(
        self, address: str, deadline: float, alive: Callable[[], bool] | None,
        pipe: PipeStream | None,
    ) -> QMPClient:
        if pipe is None:
            # Blocking (it polls for the pipe): off the loop.
            pipe = await asyncio.get_running_loop().run_in_executor(
                None, claim_qemu_pipe, address, deadline, alive
            )
        client = _QMPClient(self._name, pipe)
        client.logger = _QUIET_CONNECT_LOG
        try:
            # The pipe is ours; a QEMU still starting up greets once its chardevs are
            # all connected.
            await asyncio.wait_for(client.connect(address),
                                   max(0.1, deadline - time.monotonic()))
        except BaseException as exc:
            with contextlib.suppress(QMPError, OSError, AssertionError):
                await client.disconnect()
            pipe.close()  # QEMU serves the pipe once: a failed session cannot be retried
            if isinstance(exc, TimeoutError):
                raise QmpError(
                    f"QEMU did not greet on its control pipe {address} in time.",
                    "See qemu.log in the machine's folder.",
                ) from exc
            if isinstance(exc, QMPError | OSError):
                raise QmpError(
                    f"The QMP handshake on {address} failed: {exc}.",
                    "See qemu.log in the machine's folder.",
                ) from exc
            raise
        client.logger = logging.getLogger("qemu.qmp.protocol").getChild(self._name)
        self._client = client
        return client

    def _start(self, client: QMPClient) -> None:
        listener = EventListener(WATCHED_EVENTS)
        client.register_listener(listener)
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._pump_events(listener), name="qmp-events"),
            asyncio.create_task(self._watch_runstate(client), name="qmp-runstate"),
        ]

    async def _pump_events(self, listener: EventListener) -> None:
        async for message in listener:
            event = _to_event(message)
            for callback in list(self._event_callbacks):
                try:
                    callback(event)
                except Exception:  # a broken subscriber must not stop event delivery
                    log.exception("QMP event callback failed")

    async def _watch_runstate(self, client: QMPClient) -> None:
        while True:
            state = await client.runstate_changed()
            if state is Runstate.DISCONNECTING or state is Runstate.IDLE:
                break
        if self._closing:
            return  # close() disconnects
        for callback in list(self._disconnect_callbacks):
            try:
                callback()
            except Exception:
                log.exception("QMP disconnect callback failed")

    async def execute(
        self, command: str, arguments: Mapping[str, object] | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> Any:
        client = self._client
        if client is None or client.runstate is not Runstate.RUNNING:
            raise QmpError(f"QMP is not connected (cannot run {command}).", "Is the VM running?")
        try:
            return await asyncio.wait_for(client.execute(command, dict(arguments or {})), timeout)
        except ExecuteError as exc:
            raise QmpError(f"QEMU refused {command}: {exc.error.error.desc}") from exc
        except TimeoutError as exc:
            raise QmpError(f"QEMU did not answer {command} within {timeout:.0f} s.") from exc
        except (QMPError, OSError, EOFError, ConnectionError) as exc:
            raise QmpError(f"The QMP connection failed during {command}: {exc}") from exc

    async def query_status(self) -> VmRunStatus:
        reply = await self.execute("query-status")
        return VmRunStatus(status=str(reply["status"]), running=bool(reply["running"]))

    async def system_powerdown(self) -> None:
        await self.execute("system_powerdown")

    async def stop(self) -> None:
        await self.execute("stop")

    async def cont(self) -> None:
        await self.execute("cont")

    async def quit(self) -> None:
        """Ask QEMU to exit now. The connection drop that follows is expected, not a crash."""
        self._closing = True
        with contextlib.suppress(QmpError):
            await self.execute("quit")

    async def human_monitor_command(self, command_line: str) -> str:
        """Run an HMP command (e.g. ``hostfwd_add``); HMP reports errors as text, returned."""
        reply = await self.execute("human-monitor-command", {"command-line": command_line})
        return str(reply)

    async def hostfwd_add(
        self, proto: str, host_addr: str, host_port: int, guest_port: int,
        netdev: str = "net0",
    ) -> None:
        """Forward ``host_addr:host_port`` to the guest's ``guest_port`` (slirp hostfwd).

        HMP answers success with an empty string and failure with text (e.g. "Could not
        set up host forwarding rule 'tcp:127.0.0.1:80-:80'" when the port is taken).
        """
        await self._hostfwd("hostfwd_add", netdev,
                            f"{_hostfwd_rule(proto, host_addr, host_port)}-:{guest_port}")

    async def hostfwd_remove(
        self, proto: str, host_addr: str, host_port: int, netdev: str = "net0"
    ) -> None:
        await self._hostfwd("hostfwd_remove", netdev, _hostfwd_rule(proto, host_addr, host_port))

    async def _hostfwd(self, command: str, netdev: str, rule: str) -> None:
        reply = (await self.human_monitor_command(f"{command} {netdev} {rule}")).strip()
        if reply and "removed" not in reply:
            raise QmpError(
                f"QEMU could not {command.replace('hostfwd_', '')} the forward {rule}: {reply}",
                "The host port may be in use by another program.",
            )

    async def close(self) -> None:
        self._closing = True
        client, self._client = self._client, None
        # Stop our watcher first so only one coroutine ever calls disconnect(): qemu.qmp
        # asserts on concurrent disconnects.
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, QMPError, OSError):
                await task
        self._tasks = []
        if client is not None:
            # AssertionError: qemu.qmp's cleanup asserts its runstate, which a connection
            # already torn down by the peer (QEMU killed) can violate.
            with contextlib.suppress(QMPError, OSError, EOFError, ConnectionError, AssertionError):
                await client.disconnect()


class SyncQmp:
    """Blocking facade over :class:`QmpMonitor`, running on a dedicated event-loop thread."""

    def __init__(self, loop: EventLoopThread, name: str = "berth") -> None:
        self._loop = loop
        self.monitor = QmpMonitor(name)

    def on_event(self, callback: EventCallback) -> None:
        self.monitor.on_event(callback)

    def on_disconnect(self, callback: DisconnectCallback) -> None:
        self.monitor.on_disconnect(callback)

    @property
    def connected(self) -> bool:
        return self.monitor.connected

    def connect(
        self, address: str, timeout: float = 10.0, alive: Callable[[], bool] | None = None,
        pipe: PipeStream | None = None,
    ) -> float:
        """Connect (over ``pipe`` if given, see :meth:`QmpMonitor.connect`); returns how
        long it took (seconds)."""
        self._loop.run(self.monitor.connect(address, timeout, alive=alive, pipe=pipe),
                       timeout + 5)
        return self.monitor.connected_after or 0.0

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        return self._loop.run(self.monitor.execute(command, arguments))

    def query_status(self) -> VmRunStatus:
        return self._loop.run(self.monitor.query_status())

    def system_powerdown(self) -> None:
        self._loop.run(self.monitor.system_powerdown())

    def stop(self) -> None:
        self._loop.run(self.monitor.stop())

    def cont(self) -> None:
        self._loop.run(self.monitor.cont())

    def quit(self) -> None:
        self._loop.run(self.monitor.quit())

    def human_monitor_command(self, command_line: str) -> str:
        return self._loop.run(self.monitor.human_monitor_command(command_line))

    # The hostfwd calls come from the port forwarder's threads while the VM may be going
    # away: bounded, so a loop that has stopped turns into a TimeoutError, never a hang.
    def hostfwd_add(
        self, proto: str, host_addr: str, host_port: int, guest_port: int, netdev: str = "net0"
    ) -> None:
        self._loop.run(
            self.monitor.hostfwd_add(proto, host_addr, host_port, guest_port, netdev),
            _HOSTFWD_WAIT,
        )

    def hostfwd_remove(self, proto: str, host_addr: str, host_port: int,
                       netdev: str = "net0") -> None:
        self._loop.run(
            self.monitor.hostfwd_remove(proto, host_addr, host_port, netdev), _HOSTFWD_WAIT
        )

    def usernet_info(self) -> str:
        """HMP ``info usernet``: slirp's sockets (rules and their connections), as text."""
        return self._loop.run(self.monitor.human_monitor_command("info usernet"), _HOSTFWD_WAIT)

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            self._loop.run(self.monitor.close(), timeout=10)
