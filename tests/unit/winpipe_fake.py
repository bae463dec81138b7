"""An in-memory stand-in for the Windows named-pipe calls of vm_backend.winpipe.

It models what the code under test relies on, as ``_winapi`` presents it: message pipes
read in byte mode (one message per read, a longer one split), a zero-length message,
ERROR_BROKEN_PIPE when the peer closed, ERROR_NO_DATA when writing to a closed peer or
connecting an instance whose client already left, ERROR_PIPE_BUSY / WaitNamedPipe when
every instance is taken, ERROR_ACCESS_DENIED for FILE_FLAG_FIRST_PIPE_INSTANCE on an
existing name, a ConnectNamedPipe that finds its client already there (what _winapi makes
of ERROR_PIPE_CONNECTED: an overlapped already signalled), CancelIoEx, and
GetNamedPipeServerProcessId: each server end records the "pid" of the process that created
it (``pid=`` for another program, else ``FakeApi.pid``, this process), and
``server_pid_error`` makes the call fail with that Win32 code.
Every call is recorded in ``calls`` so tests can check flags and arguments.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any

from vm_backend import winpipe as wp


def win_error(code: int) -> OSError:
    exc = OSError(f"[WinError {code}]")
    exc.winerror = code  # type: ignore[attr-defined]
    return exc


class FakeOv:
    def __init__(self, api: FakeApi, kind: str) -> None:
        self.api = api
        self.kind = kind
        self.done = threading.Event()
        self.result: tuple[int, int] = (0, 0)
        self.error: OSError | None = None
        self.buffer: bytes | None = None
        self.cancelled = False

    def complete(self, n: int = 0, err: int = 0, data: bytes | None = None,
                 error: OSError | None = None) -> None:
        """Called with api.cond held."""
        if self.done.is_set():
            return
        self.result = (n, err)
        self.buffer = data
        self.error = error
        self.done.set()

    def GetOverlappedResult(self, wait: bool) -> tuple[int, int]:
        if wait:
            self.done.wait()
        elif not self.done.is_set():
            raise win_error(996)  # ERROR_IO_INCOMPLETE
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        with self.api.cond:
            self.api.calls.append(("cancel", self.kind))
            if not self.done.is_set():
                self.cancelled = True
                self.api._forget_read(self)
                self.complete(0, wp.ERROR_OPERATION_ABORTED)

    def getbuffer(self) -> bytes | None:
        return self.buffer


class End:
    """One end of a connected pipe."""

    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.inbox: collections.deque[bytes] = collections.deque()
        self.reads: list[tuple[FakeOv, int]] = []
        self.peer: End | None = None
        self.closed = False
        self.had_peer = False


class Instance:
    def __init__(self, name: str, end: End, pid: int) -> None:
        self.name = name
        self.end = end
        self.pid = pid  # the process that created this server end
        self.connect_ov: FakeOv | None = None
        self.client_left_early = False
        self.accepted = False


class FakeAttrs:
    pointer = 0x5A5A

    def __init__(self) -> None:
        self.freed = False

    def free(self) -> None:
        self.freed = True


class FakeApi:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.calls: list[tuple[Any, ...]] = []
        self.instances: dict[str, list[Instance]] = {}
        self.ends: dict[int, End] = {}
        self.servers: dict[int, Instance] = {}
        self.closed_handles: list[int] = []
        self.attrs: list[FakeAttrs] = []
        self.raw_pipe_connected = False  # raise ERROR_PIPE_CONNECTED instead
        self.block_writes = False  # the peer reads nothing and the pipe's buffer is full
        self.pid = os.getpid()  # who creates server ends unless create_named_pipe says
        self.server_pid_error: int | None = None  # GetNamedPipeServerProcessId fails with it
        self._next = 100

    def _handle(self) -> int:
        self._next += 4
        return self._next

    # -- server side -------------------------------------------------------------------

    def owner_only_attributes(self) -> FakeAttrs:
        attrs = FakeAttrs()
        self.attrs.append(attrs)
        return attrs

    def create_named_pipe(self, name: str, open_mode: int, pipe_mode: int,
                          max_instances: int, out_size: int, in_size: int,
                          timeout_ms: int, security_attributes: int, *,
                          pid: int | None = None) -> int:
        """``pid``: the process creating it (another program's, QEMU's); default ours."""
        with self.cond:
            self.calls.append(("create_named_pipe", name, open_mode, pipe_mode, max_instances,
                               out_size, in_size, timeout_ms, security_attributes))
            existing = self.instances.setdefault(name, [])
            if open_mode & wp.FILE_FLAG_FIRST_PIPE_INSTANCE and existing:
                raise win_error(wp.ERROR_ACCESS_DENIED)
            handle = self._handle()
            end = End(handle)
            inst = Instance(name, end, self.pid if pid is None else pid)
            existing.append(inst)
            self.ends[handle] = end
            self.servers[handle] = inst
            self.cond.notify_all()
            return handle

    def squat(self, name: str, pid: int | None = None) -> int:
        """Another program (process ``pid``) creates the name first: its server handle."""
        return self.create_named_pipe(name, wp.PIPE_ACCESS_DUPLEX, 0, 1, 0, 0, 0, 0,
                                      pid=pid)

    def connect_named_pipe(self, handle: int) -> FakeOv:
        with self.cond:
            self.calls.append(("connect_named_pipe", handle))
            inst = self.servers[handle]
            if inst.client_left_early:
                raise win_error(wp.ERROR_NO_DATA)
            ov = FakeOv(self, "connect")
            if inst.end.peer is not None:
                inst.accepted = True
                if self.raw_pipe_connected:
                    raise win_error(wp.ERROR_PIPE_CONNECTED)
                ov.complete()
            else:
                inst.connect_ov = ov
            return ov

    # -- I/O ---------------------------------------------------------------------------

    def read_file(self, handle: int, size: int) -> tuple[FakeOv, int]:
        with self.cond:
            self.calls.append(("read_file", handle, size))
            end = self.ends[handle]
            ov = FakeOv(self, "read")
            if end.inbox:
                msg = end.inbox.popleft()
                if len(msg) > size:
                    end.inbox.appendleft(msg[size:])
                    msg = msg[:size]
                ov.complete(len(msg), 0, msg)
                return ov, 0
            if end.had_peer and (end.peer is None or end.peer.closed):
                raise win_error(wp.ERROR_BROKEN_PIPE)
            end.reads.append((ov, size))
            return ov, wp.ERROR_IO_PENDING

    def write_file(self, handle: int, data: bytes) -> tuple[FakeOv, int]:
        with self.cond:
            self.calls.append(("write_file", handle, bytes(data)))
            end = self.ends[handle]
            peer = end.peer
            if peer is None or peer.closed:
                raise win_error(wp.ERROR_NO_DATA)
            if self.block_writes:
                return FakeOv(self, "write"), wp.ERROR_IO_PENDING  # until cancelled
            if peer.reads:
                ov_r, size = peer.reads.pop(0)
                msg = bytes(data)
                if len(msg) > size:
                    peer.inbox.appendleft(msg[size:])
                    msg = msg[:size]
                ov_r.complete(len(msg), 0, msg)
            else:
                peer.inbox.append(bytes(data))
            ov = FakeOv(self, "write")
            ov.complete(len(data), 0)
            return ov, 0

    def _forget_read(self, ov: FakeOv) -> None:
        for end in self.ends.values():
            end.reads = [(o, s) for o, s in end.reads if o is not ov]

    def wait(self, ov: FakeOv, timeout_ms: int) -> bool:
        return ov.done.wait(None if timeout_ms == wp.INFINITE else timeout_ms / 1000)

    # -- client side -------------------------------------------------------------------

    def create_file(self, name: str, access: int, flags: int) -> int:
        with self.cond:
            self.calls.append(("create_file", name, access, flags))
            insts = self.instances.get(name)
            if not insts:
                raise win_error(wp.ERROR_FILE_NOT_FOUND)
            free = [i for i in insts if not i.end.had_peer and not i.end.closed]
            if not free:
                raise win_error(wp.ERROR_PIPE_BUSY)
            inst = free[0]
            handle = self._handle()
            client = End(handle)
            client.peer, inst.end.peer = inst.end, client
            client.had_peer = inst.end.had_peer = True
            self.ends[handle] = client
            if inst.connect_ov is not None:
                inst.connect_ov.complete()
                inst.connect_ov = None
                inst.accepted = True
            return handle

    def wait_named_pipe(self, name: str, timeout_ms: int) -> None:
        with self.cond:
            self.calls.append(("wait_named_pipe", name, timeout_ms))
            ok = self.cond.wait_for(
                lambda: any(not i.end.had_peer for i in self.instances.get(name, [])),
                None if timeout_ms == wp.NMPWAIT_WAIT_FOREVER else timeout_ms / 1000,
            )
            if not ok:
                raise win_error(wp.ERROR_SEM_TIMEOUT)

    def get_named_pipe_server_process_id(self, handle: int) -> int:
        with self.cond:
            self.calls.append(("get_named_pipe_server_process_id", handle))
            if self.server_pid_error is not None:
                raise win_error(self.server_pid_error)
            end = self.ends[handle]
            if end.closed:
                raise win_error(6)  # ERROR_INVALID_HANDLE
            server = self.servers.get(handle)
            if server is None:  # a client end: the instance it is connected to
                server = next(i for i in self.servers.values() if i.end is end.peer)
            return server.pid

    def close_handle(self, handle: int) -> None:
        with self.cond:
            self.calls.append(("close_handle", handle))
            assert handle not in self.closed_handles, f"handle {handle} closed twice"
            self.closed_handles.append(handle)
            end = self.ends[handle]
            end.closed = True
            for ov, _ in end.reads:
                ov.complete(0, wp.ERROR_OPERATION_ABORTED)
            end.reads = []
            inst = self.servers.get(handle)
            if inst is not None:
                if inst.connect_ov is not None:
                    inst.connect_ov.complete(error=win_error(6))  # ERROR_INVALID_HANDLE
                self.instances[inst.name].remove(inst)
            peer = end.peer
            if peer is not None and inst is None:
                for server in self.servers.values():
                    if server.end is peer and not server.accepted:
                        server.client_left_early = True
            if peer is not None:
                for ov, _ in peer.reads:
                    ov.complete(error=win_error(wp.ERROR_BROKEN_PIPE))
                peer.reads = []
            self.cond.notify_all()

    # -- helpers for tests -------------------------------------------------------------

    def open_handles(self) -> set[int]:
        with self.cond:
            return {h for h, e in self.ends.items() if not e.closed}
