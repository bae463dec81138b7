"""The ``berth`` command: the same backend as the window, from a terminal.

``berth`` with no arguments opens the window. Every subcommand prints plain text, or a
stable JSON document with ``--json`` (documented in docs/cli.md). Errors print what
happened and what to do, never a traceback; the exit status is 1 for errors, 2 for bad
usage and 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

from vm_backend import __version__
from vm_backend.engine.client import EngineClient
from vm_backend.engine.discovery import choose, discover, probe
from vm_backend.engine.models import Container, Endpoint, EndpointSource
from vm_backend.errors import BerthError
from vm_backend.settings import Settings
from vm_backend.units import human_size

JSON_SCHEMA_VERSION = 1


class CliError(BerthError):
    """A problem with what was asked on the command line."""


def _ago(epoch: float) -> str:
    if epoch <= 0:
        return ""
    delta = max(0.0, time.time() - epoch)
    for seconds, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if delta >= seconds:
            n = int(delta // seconds)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def _table(rows: list[list[str]], out: TextIO) -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        out.write("   ".join(cells).rstrip() + "\n")


def _plain(text: str) -> str:
    """Engine-supplied text with control characters made visible (no terminal escapes)."""
    return "".join(c if c.isprintable() or c == "\t" else f"\\x{ord(c):02x}" for c in text)


def _dump(doc: Any, out: TextIO) -> None:
    json.dump(doc, out, indent=2, sort_keys=False)
    out.write("\n")


# ---- engine selection ----------------------------------------------------------------------
def _endpoint(args: argparse.Namespace) -> Endpoint:
    wanted = args.engine or os.environ.get("BERTH_ENGINE", "")
    if wanted:
        ep = probe(wanted, wanted, EndpointSource.MANUAL)
        if not ep.usable:
            raise CliError(f"Engine {wanted} is unusable: {ep.reason}.", ep.hint)
        return ep
    settings = Settings.load()
    endpoints = discover(settings.extra_endpoints)
    ep_or_none = choose(endpoints, settings.default_engine)
    if ep_or_none is None:
        reasons = "; ".join(f"{e.name}: {e.reason}" for e in endpoints)
        raise CliError(
            f"No container engine answers ({reasons}).",
            "Start Docker or Podman, or create Berth's VM: berth machine init && "
            "berth machine start. `berth engines` shows details.",
        )
    return ep_or_none


def _client(args: argparse.Namespace) -> EngineClient:
    return EngineClient(_endpoint(args).url)


# ---- commands ------------------------------------------------------------------------------
def cmd_engines(args: argparse.Namespace, out: TextIO) -> int:
    settings = Settings.load()
    endpoints = discover(settings.extra_endpoints)
    active = choose(endpoints, args.engine or settings.default_engine)
    if args.json:
        _dump(
            {
                "schema": JSON_SCHEMA_VERSION,
                "active": active.url if active else None,
                "endpoints": [e.to_json() for e in endpoints],
            },
            out,
        )
        return 0
    rows = [["", "NAME", "KIND", "VERSION", "API", "OS/ARCH", "STATUS", "ADDRESS"]]
    for e in endpoints:
        mark = "*" if active is not None and e.url == active.url else ""
        status = e.status.value if e.usable else f"{e.status.value}: {e.reason}"
        osarch = f"{e.os}/{e.arch}" if e.os else ""
        kind = e.kind.value if e.usable else ""
        rows.append([mark, e.name, kind, e.version, e.api_version, osarch, status, e.url])
    _table(rows, out)
    hints = [e for e in endpoints if not e.usable and e.hint and e.status.value != "missing"]
    for e in hints:
        out.write(f"\n{e.name}: {e.hint}")
    if hints:
        out.write("\n")
    if active is None:
        out.write(
            "\nNo engine answers. Start Docker or Podman, or run: berth machine init && "
            "berth machine start\n"
        )
        return 1
    return 0


def _container_rows(containers: list[Container]) -> list[list[str]]:
    rows = [["CONTAINER ID", "NAME", "IMAGE", "STATE", "STATUS", "PORTS"]]
    for c in containers:
        ports = ", ".join(str(p) for p in c.ports)
        rows.append(
            [c.short_id, _plain(c.name), _plain(c.image), c.state.value, _plain(c.status), ports]
        )
    return rows


def cmd_ps(args: argparse.Namespace, out: TextIO) -> int:
    client = _client(args)
    containers = client.containers(all=args.all)
    containers.sort(key=lambda c: c.created, reverse=True)
    if args.json:
        _dump(
            {
                "schema": JSON_SCHEMA_VERSION,
                "engine": client.url,
                "containers": [c.to_json() for c in containers],
            },
            out,
        )
    else:
        _table(_container_rows(containers), out)
    return 0


def cmd_images(args: argparse.Namespace, out: TextIO) -> int:
    client = _client(args)
    images = client.images()
    images.sort(key=lambda i: i.created, reverse=True)
    if args.json:
        _dump(
            {
                "schema": JSON_SCHEMA_VERSION,
                "engine": client.url,
                "images": [i.to_json() for i in images],
            },
            out,
        )
        return 0
    rows = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "CONTAINERS"]]
    for i in images:
        for tag in i.tags or ("<none>:<none>",):
            repo, _, name = tag.rpartition(":")
            rows.append(
                [
                    _plain(repo),
                    _plain(name),
                    i.short_id,
                    _ago(i.created),
                    human_size(i.size),
                    str(max(i.containers, 0)),
                ]
            )
    _table(rows, out)
    return 0


def cmd_logs(args: argparse.Namespace, out: TextIO) -> int:
    client = _client(args)
    since = None
    if args.since:
        since = _parse_since(args.since)
    stream = client.logs(
        args.container,
        follow=args.follow,
        tail=args.tail,
        timestamps=args.timestamps,
        since=since,
    )
    _close_on_signal(stream.close)
    err = sys.stderr if out is sys.stdout else out
    for entry in stream:
        target = err if entry.stream == "stderr" else out
        prefix = f"{entry.timestamp} " if entry.timestamp else ""
        target.write(prefix + _plain(entry.text) + "\n")
        if args.follow:
            target.flush()
    return 0


def _parse_since(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise CliError(
            f"--since {text!r} is neither a duration nor a date.",
            "Use e.g. 10m, 2h, or 2026-01-31T12:00:00.",
        ) from None


def cmd_events(args: argparse.Namespace, out: TextIO) -> int:
    client = _client(args)
    since = _parse_since(args.since) if args.since else None
    filters = {"type": args.type} if args.type else None
    stream = client.events(since=since, filters=filters)
    _close_on_signal(stream.close)
    for event in stream:
        if args.json:
            out.write(json.dumps(event.to_json()) + "\n")
        else:
            when = datetime.fromtimestamp(event.time_nano / 1e9).isoformat(timespec="milliseconds")
            name = f" ({_plain(event.name)})" if event.name else ""
            detail = f": {_plain(event.detail)}" if event.detail else ""
            out.write(f"{when} {event.type} {event.action}{detail} {event.id[:12]}{name}\n")
        out.flush()
    return 0


def _lifecycle(verb: str) -> Callable[[argparse.Namespace, TextIO], int]:
    def run(args: argparse.Namespace, out: TextIO) -> int:
        client = _client(args)
        failed = 0
        for name in args.containers:
            try:
                if verb == "start":
                    client.start(name)
                elif verb == "stop":
                    client.stop(name, timeout=args.time)
                elif verb == "restart":
                    client.restart(name, timeout=args.time)
                elif verb == "rm":
                    client.remove(name, force=args.force, volumes=args.volumes)
                out.write(f"{name}\n")
            except BerthError as err:
                failed += 1
                sys.stderr.write(f"berth: {err.message}\n")
                if err.hint:
                    sys.stderr.write(f"  {err.hint}\n")
        return 1 if failed else 0

    return run


def cmd_gui(argv: Sequence[str]) -> int:
    try:
        from app.main import main as gui_main
    except ImportError as err:
        raise CliError(
            f"The window cannot start: {err}.",
            "Install Berth with its GUI dependencies (pip install berth), or use the "
            "subcommands (berth --help).",
        ) from err
    return int(gui_main(list(argv)))


def _close_on_signal(close: Callable[[], None]) -> None:
    def handler(signum: int, frame: object) -> None:
        close()

    signal.signal(signal.SIGINT, handler)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, handler)


# ---- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berth",
        description="Berth: containers, images, volumes and networks, and a helper VM. "
        "Without a command, opens the window.",
    )
    parser.add_argument("--version", action="version", version=f"berth {__version__}")
    parser.add_argument(
        "--engine", metavar="URL", default="", help="engine to use (default: discovered)"
    )
    parser.add_argument(
        "--screenshot", metavar="DIR", help="render each page of the window to PNG and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("engines", help="list the engines found and which one is active")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_engines)

    p = sub.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("images", help="list images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("logs", help="print a container's logs")
    p.add_argument("container")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("--tail", type=int, default=None, metavar="N")
    p.add_argument("--since", default="", metavar="WHEN", help="e.g. 10m, 2h or an ISO date")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("events", help="print engine events as they happen")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--since", default="", metavar="WHEN")
    p.add_argument("--type", default="", help="container, image, volume or network")
    p.set_defaults(func=cmd_events)

    for verb, text in (
        ("start", "start containers"),
        ("stop", "stop containers"),
        ("restart", "restart containers"),
        ("rm", "remove containers"),
    ):
        p = sub.add_parser(verb, help=text)
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        if verb in ("stop", "restart"):
            p.add_argument("-t", "--time", type=int, default=10, help="seconds before killing")
        if verb == "rm":
            p.add_argument("-f", "--force", action="store_true", help="remove running ones too")
            p.add_argument("-v", "--volumes", action="store_true", help="and anonymous volumes")
        p.set_defaults(func=_lifecycle(verb))

    try:
        from vm_backend.daemon.cli_machine import add_machine_parser
    except ImportError:
        pass
    else:
        add_machine_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        if args.command is None:
            return cmd_gui(args_list)
        func: Callable[[argparse.Namespace, TextIO], int] = args.func
        return func(args, sys.stdout)
    except BerthError as err:
        sys.stderr.write(f"berth: {err.message}\n")
        if err.hint:
            sys.stderr.write(f"  {err.hint}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `berth ps | head`: the reader left; that is not an error.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
