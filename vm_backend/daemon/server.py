"""berthd: the per-user daemon that owns the helper VMs.

Started on demand by the CLI or the window (:mod:`vm_backend.daemon.client`), it serves
the control protocol (:mod:`vm_backend.daemon.protocol`) on ``berthd.sock``, a 0600 unix
socket in a 0700 directory — never TCP. On Windows it serves the same protocol, with the
same per-connection handling (:func:`serve_connection`), on an owner-only named pipe
``\\\\.\\pipe\\berth-<user>-<home hash>-berthd`` (:mod:`vm_backend.winpipe`; unit-tested on
Linux with a fake, never run on Windows). It outlives the window; on start it reattaches to
VMs that kept running while it was away. SIGTERM makes it drop its connections and exit,
leaving VMs running (``berth machine stop`` stops them).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, cast

from vm_backend import __version__
from vm_backend.daemon.protocol import PROTOCOL_VERSION, LineReader, ProtocolError, encode
from vm_backend.daemon.service import MachineService
from vm_backend.errors import BerthError, InputError
from vm_backend.machine.paths import daemon_pipe_name, ensure_private_dir, run_dir_for
from vm_backend.machine.spec import default_shares, spec_from_json, spec_to_json
from vm_backend.paths import berth_home
from vm_backend.winpipe import ListenerClosed, PipeListener, PipeStream, connect_local

log = logging.getLogger("berthd")


def daemon_dir(home: Path | None = None) -> Path:
    return (home or berth_home()) / "daemon"


def socket_path(home: Path | None = None) -> Path:
    return run_dir_for(daemon_dir(home)) / "berthd.sock"


def use_pipes() -> bool:
    """Whether berthd's control endpoint is a named pipe (Windows) or a unix socket."""
    return sys.platform == "win32"


def daemon_address(home: Path | None = None) -> str:
    """Where berthd listens: the socket path, or on Windows the pipe name."""
    if use_pipes():
        return daemon_pipe_name(home or berth_home())
    return str(socket_path(home))


class Daemon:
    """The machines and the request handlers; transport-agnostic."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or berth_home()
        self._lock = threading.Lock()
        self._services: dict[str, MachineService] = {}
        self.started_at = time.time()

    def service(self, name: str, must_exist: bool = True) -> MachineService:
        with self._lock:
            svc = self._services.get(name)
            if svc is None:
                svc = MachineService(name, home=self.home)
                self._services[name] = svc
        if must_exist and not svc.machine.exists:
            raise InputError(
                f"There is no machine named {name!r}.", "Create it: berth machine init"
            )
        return svc

    def names(self) -> list[str]:
        base = self.home / "machines"
        try:
            return sorted(p.name for p in base.iterdir() if (p / "machine.json").exists())
        except OSError:
            return []

    def reattach_all(self) -> None:
        for name in self.names():
            try:
                if self.service(name).attach():
                    log.info("reattached to running machine %s", name)
            except BerthError as err:
                log.warning("could not reattach to %s: %s", name, err)

    def close(self) -> None:
        with self._lock:
            services = list(self._services.values())
        for svc in services:
            svc.close()

    # ---- methods ------------------------------------------------------------------------
    def handle(self, method: str, params: dict[str, Any], progress: Any) -> Any:
        name = str(params.get("name") or "default")
        if method == "ping":
            return {"version": __version__, "protocol": PROTOCOL_VERSION, "pid": os.getpid()}
        if method == "machine.list":
            return [self.service(n).status_json() for n in self.names()]
        if method == "machine.init":
            if "shares" not in params:  # a new machine shares the home folder by default
                params = {**params, "shares": [asdict(s) for s in default_shares()]}
            spec = spec_from_json({**params, "name": name})
            svc = self.service(name, must_exist=False)
            if svc.machine.exists:
                raise InputError(
                    f"Machine {name!r} exists already.",
                    "Change it with berth machine set, or remove it first.",
                )
            return spec_to_json(svc.create(spec))
        if method == "machine.set":
            svc = self.service(name)
            current = spec_to_json(svc.machine.spec)
            changes = {k: v for k, v in params.items() if k != "name" and v is not None}
            return spec_to_json(svc.machine.update(spec_from_json({**current, **changes})))
        if method == "machine.start":
            svc = self.service(name)
            svc.add_listener(progress)
            try:
                svc.start()
            finally:
                svc.remove_listener(progress)
            return svc.status_json()
        if method == "machine.stop":
            svc = self.service(name)
            timeout = params.get("timeout")
            outcome = svc.stop(float(timeout) if timeout is not None else None)
            return {"outcome": outcome.value}
        if method == "machine.status":
            return self.service(name).status_json()
        if method == "machine.rm":
            svc = self.service(name)
            svc.delete()
            with self._lock:
                self._services.pop(name, None)
            return {"removed": name}
        if method == "machine.pause":
            self.service(name).machine.pause()
            return self.service(name).status_json()
        if method == "machine.resume":
            self.service(name).machine.resume()
            return self.service(name).status_json()
        if method == "machine.logs":
            return {
                "text": self._log_tail(
                    name, str(params.get("which") or "console"), int(params.get("lines") or 200)
                )
            }
        if method == "machine.reclaim":
            result = self.service(name).reclaim(compact=bool(params.get("compact")))
            return {
                "mode": result.mode,
                "before_bytes": result.before_bytes,
                "after_bytes": result.after_bytes,
                "returned_bytes": result.returned_bytes,
                "detail": result.detail,
            }
        if method == "machine.spec":
            return spec_to_json(self.service(name).machine.spec)
        if method == "machine.diagnose":
            return self._diagnose(name, params)
        raise InputError(f"Unknown method {method!r}.", "Update the berth client and daemon.")

    def _diagnose(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Hop-by-hop checks, and the support bundle when asked (docs/diagnose.md)."""
        from vm_backend.daemon.diagnose import checks_to_json, run_checks, write_bundle

        bundle = params.get("bundle")
        if bundle and not os.path.isabs(str(bundle)):
            raise InputError("The bundle path must be absolute.", "Give the full path.")
        svc = self.service(name)
        checks = run_checks(svc, str(params["image"]) if params.get("image") else None)
        doc = checks_to_json(checks)
        if bundle:
            log_path = daemon_dir(self.home) / "berthd.log"
            doc["bundle"] = write_bundle(svc, Path(str(bundle)), checks, log_path)
        return doc

    def _log_tail(self, name: str, which: str, lines: int) -> str:
        paths = self.service(name).machine.paths
        files = {
            "console": paths.console_log,
            "qemu": paths.qemu_log,
            "daemon": daemon_dir(self.home) / "berthd.log",
        }
        path = files.get(which)
        if path is None:
            raise InputError(f"Unknown log {which!r}.", "Use console, qemu or daemon.")
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 256 * 1024))
                data = fh.read()
        except FileNotFoundError:
            return ""
        text = data.decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-max(1, min(lines, 100_000)) :])


class Stream(Protocol):
    """What a control connection needs: a unix socket or a :class:`PipeStream`."""

    def recv(self, bufsize: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def shutdown(self, how: int, /) -> None: ...


def serve_connection(daemon: Daemon, sock: Stream) -> None:
    """Answer requests on one control connection until the client leaves."""
    # LineReader only calls recv(); a pipe stream has it too.
    reader = LineReader(cast(socket.socket, sock))
    send_lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with send_lock:
            sock.sendall(encode(message))

    while True:
        try:
            request = reader.read()
        except (ProtocolError, OSError):
            return
        if request is None:
            return
        req_id = request.get("id")
        method = str(request.get("method") or "")
        params = request.get("params") or {}
        if not isinstance(params, dict):
            send({"id": req_id, "error": {"message": "params must be an object", "hint": ""}})
            continue
        if method == "machine.console":
            _console(daemon, sock, reader, req_id, params, send)
            return

        def progress(message: dict[str, Any], req_id: Any = req_id) -> None:
            with contextlib.suppress(OSError):
                send({"id": req_id, "progress": message})

        try:
            result = daemon.handle(method, params, progress)
        except BerthError as err:
            reply = {"id": req_id, "error": {"message": err.message, "hint": err.hint}}
        except Exception as err:
            log.exception("request %s failed", method)
            reply = {
                "id": req_id,
                "error": {
                    "message": f"{type(err).__name__}: {err}",
                    "hint": "See the daemon log: berth machine logs --daemon",
                },
            }
        else:
            reply = {"id": req_id, "result": result}
        try:
            send(reply)
        except OSError:
            return


def _console(
    daemon: Daemon,
    sock: Stream,
    reader: LineReader,
    req_id: Any,
    params: dict[str, Any],
    send: Any,
) -> None:
    try:
        svc = daemon.service(str(params.get("name") or "default"))
        console = svc.machine.console
        if console is None:
            raise BerthError("The VM is not running.", "Start it: berth machine start")
    except BerthError as err:
        send({"id": req_id, "error": {"message": err.message, "hint": err.hint}})
        return
    send({"id": req_id, "result": {"attached": True}})
    done = threading.Event()

    def out(data: bytes) -> None:
        try:
            sock.sendall(data)
        except OSError:
            done.set()

    def console_gone() -> None:
        # QEMU went away: end the client's session instead of waiting on its socket.
        done.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    console.on_closed(console_gone)
    sub = console.subscribe(out, replay=bool(params.get("replay", True)))
    try:
        if reader.buffer:
            console.write(reader.buffer)
        while not done.is_set():
            data = sock.recv(4096)
            if not data:
                break
            console.write(data)
    except OSError:
        pass
    finally:
        sub.close()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        serve_connection(self.server.daemon, self.request)


if sys.platform == "win32":
    # No AF_UNIX in Python on Windows: _Server is never built there (berthd serves a pipe).
    _UnixBase = socketserver.TCPServer
else:
    _UnixBase = socketserver.UnixStreamServer


class _Server(socketserver.ThreadingMixIn, _UnixBase):
    daemon_threads = True
    daemon: Daemon


class _PipeServer:
    """berthd on an owner-only named pipe (Windows): the same handling per connection as
    the unix server, one thread per client, and the same serve/shutdown calls."""

    def __init__(self, name: str) -> None:
        self.server_address = name
        self.daemon: Daemon
        self._listener = PipeListener(name)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._streams: set[PipeStream] = set()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        try:
            while not self._stop.is_set():
                try:
                    stream = self._listener.accept(poll_interval)
                except TimeoutError:
                    continue
                except ListenerClosed:
                    break
                except (OSError, BerthError) as err:
                    log.warning("berthd: cannot accept on %s: %s", self.server_address, err)
                    time.sleep(poll_interval)
                    continue
                with self._lock:
                    self._streams.add(stream)
                threading.Thread(
                    target=self._serve, args=(stream,), name="berthd-conn", daemon=True
                ).start()
        finally:
            self._stopped.set()

    def _serve(self, stream: PipeStream) -> None:
        try:
            serve_connection(self.daemon, stream)
        finally:
            with self._lock:
                self._streams.discard(stream)
            stream.close()

    def shutdown(self) -> None:
        """Stop serve_forever() (from another thread) and wait for it to return."""
        self._stop.set()
        self._listener.close()  # wakes a blocked accept
        self._stopped.wait()

    def server_close(self) -> None:
        self._listener.close()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.close()


def make_pipe_server(home: Path | None = None) -> _PipeServer:
    """berthd's owner-only named pipe (Windows), and reattach to running machines."""
    home = home or berth_home()
    ensure_private_dir(home)
    ensure_private_dir(daemon_dir(home))
    name = daemon_pipe_name(home)
    with contextlib.suppress(OSError):
        connect_local(name, 1.0).close()
        raise BerthError(f"berthd is already running on {name}.", "")
    server = _PipeServer(name)  # PipeError if another program holds the name
    server.daemon = Daemon(home)
    server.daemon.reattach_all()
    return server


def make_server(home: Path | None = None) -> _Server | _PipeServer:
    """Bind berthd's socket (0600 in a 0700 dir) and reattach to running machines."""
    if use_pipes():
        return make_pipe_server(home)
    home = home or berth_home()
    ensure_private_dir(home)
    ensure_private_dir(daemon_dir(home))
    path = socket_path(home)
    ensure_private_dir(path.parent)
    if _answers(path):
        raise BerthError(f"berthd is already running on {path}.", "")
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise BerthError(f"{path} exists and is not berthd's socket.", "Remove it by hand.")
        path.unlink()  # a stale socket from a crashed berthd
    old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
    try:
        server = _Server(str(path), _Handler)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    server.daemon = Daemon(home)
    server.daemon.reattach_all()
    return server


def run_server(server: _Server | _PipeServer) -> None:
    """Serve until shutdown(); then drop connections (VMs keep running)."""
    address = str(server.server_address)
    log.info("berthd %s listening on %s", __version__, address)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        server.daemon.close()
        if isinstance(server, _Server):
            with contextlib.suppress(FileNotFoundError):
                Path(address).unlink()


def serve(home: Path | None = None) -> None:
    """Run berthd in this process until SIGTERM/SIGINT."""
    server = make_server(home)

    def on_signal(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_server(server)


def _answers(path: Path) -> bool:
    try:
        connect_local(str(path), 1.0).close()
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="berthd", description="Berth's per-user VM daemon")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        serve(args.home)
    except BerthError as err:
        sys.stderr.write(f"berthd: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
