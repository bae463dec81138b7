"""``berth machine ...``: the helper VM from the command line, through berthd."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from typing import Any, TextIO

from paramiko import SSHException

from vm_backend.daemon.client import DaemonClient
from vm_backend.daemon.terminal import bridge, raw_terminal, stdin_reader, watch_resize
from vm_backend.engine.specs import parse_memory
from vm_backend.errors import InputError
from vm_backend.machine.keys import ensure_machine_keys
from vm_backend.machine.paths import MachinePaths
from vm_backend.machine.ssh import GuestSSH
from vm_backend.units import human_size

DETACH_KEY = b"\x1d"  # Ctrl-]


def _memory_mib(text: str | None) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)  # plain numbers are MiB, like podman machine --memory
    return parse_memory(text) // (1024 * 1024)


def _print_stage(stage: dict[str, Any], out: TextIO) -> None:
    state = stage.get("state")
    if state in ("done", "failed", "skipped"):
        duration = stage.get("duration")
        took = f" {duration:.2f}s" if isinstance(duration, int | float) else ""
        detail = f"  {stage['detail']}" if stage.get("detail") else ""
        out.write(f"  {stage['stage']:<9} {state}{took}{detail}\n")
        out.flush()


def _status_text(doc: dict[str, Any], out: TextIO) -> None:
    spec = doc.get("spec") or {}
    out.write(f"Machine:      {doc['name']}\n")
    out.write(
        f"State:        {doc['state']}{'  (' + doc['detail'] + ')' if doc.get('detail') else ''}\n"
    )
    if doc.get("accelerator"):
        slow = "  — slow mode: no hardware acceleration" if doc.get("slow_mode") else ""
        out.write(f"Accelerator:  {doc['accelerator']}{slow}\n")
        if doc.get("accelerator_reason"):
            out.write(f"              {doc['accelerator_reason']}\n")
    if spec:
        out.write(
            f"Resources:    {spec['cpus']} CPUs, {spec['memory_mib']} MiB, "
            f"{spec['disk_gib']} GiB disk ({spec['arch']})\n"
        )
    if doc.get("docker_host"):
        out.write(f"Engine:       {doc['docker_host']}  (docker context: berth)\n")
    res = doc.get("resources") or {}
    if res.get("qemu_rss_bytes"):
        out.write(f"QEMU:         pid {doc['pid']}, RSS {res['qemu_rss_bytes'] // 2**20} MiB\n")
    if doc.get("uptime_s"):
        out.write(f"Uptime:       {doc['uptime_s']:.0f} s\n")
    agent = doc.get("agent")
    if agent:  # docs/agent.md
        if agent.get("connected"):
            age = agent.get("last_heartbeat_age_s")
            offset = agent.get("clock_offset_s")
            out.write(
                f"Agent:        connected, v{agent['agent_version']}, boot {agent['boot_id'][:8]}"
                + (f", heartbeat {age:.1f} s ago" if age is not None else "")
                + (f", clock off by {offset * 1000:+.0f} ms" if offset is not None else "")
                + "\n"
            )
        else:
            out.write(f"Agent:        not connected  {agent.get('error') or ''}\n")
        if agent.get("memory_total_bytes"):
            disk = agent.get("disk_total_bytes") or 0
            out.write(
                f"Guest:        memory {agent['memory_used_bytes'] // 2**20}/"
                f"{agent['memory_total_bytes'] // 2**20} MiB, disk "
                f"{(agent.get('disk_used_bytes') or 0) // 2**20}/{disk // 2**20} MiB, "
                f"CPU {agent.get('cpu_percent') or 0:.0f}%\n"
            )
    ports = doc.get("ports") or []
    if ports:
        out.write("Published ports:\n")
        for p in ports:
            out.write(
                f"  {p['host_address']}:{p['host_port']} -> {p['container_name']}:"
                f"{p['guest_port']}/{p['protocol']}  {p['state']}\n"
            )
    shares = doc.get("shares") or []
    if shares:  # docs/shares.md
        out.write("Shared folders:\n")
        for sh in shares:
            ro = ", read-only" if sh["read_only"] else ""
            err = f": {sh['error']}" if sh.get("error") else ""
            out.write(f"  {sh['host_path']} ({sh['transport']}{ro})  {sh['state']}{err}\n")
    stages = [s for s in doc.get("timeline") or [] if s.get("state") != "pending"]
    if stages:
        out.write("Boot timeline:\n")
        for s in stages:
            _print_stage(s, out)


def cmd_machine(args: argparse.Namespace, out: TextIO) -> int:
    action = args.machine_command
    if action is None:
        raise InputError("Say what to do with the machine.", "See: berth machine --help")
    if action == "ssh":
        return _ssh(args, out)
    client = DaemonClient()
    name = args.name
    if action == "init":
        params: dict[str, Any] = {
            "name": name,
            "arch": args.arch,
            "cpus": args.cpus,
            "disk_gib": args.disk,
            "accelerator": args.accel,
            "memory_mib": _memory_mib(args.memory),
            "shares": _shares_param(args),
        }
        params = {k: v for k, v in params.items() if v is not None}
        spec = client.call("machine.init", params)
        out.write(
            f"Created machine {spec['name']}: {spec['cpus']} CPUs, {spec['memory_mib']} MiB, "
            f"{spec['disk_gib']} GiB disk. Start it with: berth machine start\n"
        )
        return 0
    if action == "set":
        params = {
            "name": name,
            "cpus": args.cpus,
            "disk_gib": args.disk,
            "accelerator": args.accel,
            "memory_mib": _memory_mib(args.memory),
            "shares": _shares_param(args),
        }
        spec = client.call("machine.set", {k: v for k, v in params.items() if v is not None})
        out.write(
            f"Machine {spec['name']}: {spec['cpus']} CPUs, {spec['memory_mib']} MiB, "
            f"{spec['disk_gib']} GiB disk. Changes apply at the next start.\n"
        )
        return 0
    if action == "start":
        out.write(f"Starting machine {name}…\n")

        def progress(msg: dict[str, Any]) -> None:
            if "stage" in msg:
                _print_stage(msg["stage"], out)

        doc = client.call("machine.start", {"name": name}, on_progress=progress)
        if doc.get("slow_mode"):
            out.write("Running in slow mode (TCG): " + str(doc.get("accelerator_reason")) + "\n")
        out.write(
            f"Machine {name} is running. Use it with:\n  export DOCKER_HOST={doc['docker_host']}\n"
            "or: docker --context berth ps\n"
        )
        return 0
    if action == "stop":
        result = client.call("machine.stop", {"name": name, "timeout": args.timeout})
        out.write(f"Machine {name} stopped ({result['outcome']}).\n")
        return 0
    if action == "status":
        doc = client.call("machine.status", {"name": name})
        if args.json:
            json.dump({"schema": 1, **doc}, out, indent=2)
            out.write("\n")
        else:
            _status_text(doc, out)
        return 0
    if action == "rm":
        if not args.force:
            status = client.call("machine.status", {"name": name})
            if status["state"] in ("running", "starting", "paused"):
                raise InputError(
                    f"Machine {name} is {status['state']}.",
                    "Stop it first, or use berth machine rm --force.",
                )
        client.call("machine.rm", {"name": name})
        out.write(f"Removed machine {name} and its data disk.\n")
        return 0
    if action == "logs":
        which = "qemu" if args.qemu else "daemon" if args.daemon else "console"
        doc = client.call("machine.logs", {"name": name, "which": which, "lines": args.lines})
        out.write(doc["text"] + ("\n" if doc["text"] else ""))
        return 0
    if action == "env":
        doc = client.call("machine.status", {"name": name})
        if not doc.get("docker_host"):
            raise InputError(f"Machine {name} is not running.", "Start it: berth machine start")
        out.write(f"export DOCKER_HOST={doc['docker_host']}\n")
        return 0
    if action == "reclaim":
        doc = client.call("machine.reclaim", {"name": name, "compact": args.compact})
        how = "trimmed in the VM" if doc["mode"] == "trim" else "compacted"
        out.write(
            f"Data disk {how}: {human_size(doc['before_bytes'])} -> "
            f"{human_size(doc['after_bytes'])} on this computer "
            f"({human_size(doc['returned_bytes'])} given back).\n"
        )
        return 0
    if action == "diagnose":
        from vm_backend.daemon.diagnose import format_checks

        params = {"name": name, "image": args.image}
        if args.bundle:
            params["bundle"] = os.path.abspath(args.bundle)
        doc = client.call("machine.diagnose", params)
        if args.json:
            json.dump({"schema": 1, **doc}, out, indent=2)
            out.write("\n")
        else:
            out.write(format_checks(doc, name))
            if doc.get("bundle"):
                out.write(f"Support bundle written to {doc['bundle']['path']} (secrets removed).\n")
        return 0 if doc["ok"] else 1
    if action == "console":
        return _console(client, name, out)
    raise InputError(f"Unknown machine command {action!r}.", "See: berth machine --help")


def _console(client: DaemonClient, name: str, out: TextIO) -> int:
    with client.console(name) as sock, raw_terminal() as interactive:
        if interactive:
            out.write(f"Attached to {name}'s console. Press Ctrl-] to detach.\r\n")
            out.flush()
        # Piped input that ends leaves the console attached: output keeps showing.
        bridge(
            sock,
            stdin_reader(),
            sys.stdout.buffer,
            detach_key=DETACH_KEY if interactive else None,
        )
    if interactive:
        out.write("\r\nDetached.\n")
    return 0


def _ssh(args: argparse.Namespace, out: TextIO) -> int:
    client = DaemonClient()
    doc = client.call("machine.status", {"name": args.name})
    port = doc.get("ssh_port")
    if doc["state"] != "running" or not port:
        raise InputError(f"Machine {args.name} is not running.", "Start it: berth machine start")
    paths = MachinePaths.for_machine(args.name, client.home)
    keys = ensure_machine_keys(paths.state_dir, args.name)
    ssh = GuestSSH(int(port), keys.client.private_path, keys.host.public_openssh)
    ssh.connect()
    try:
        cmd = list(args.cmd)
        if cmd[:1] == ["--"]:
            cmd = cmd[1:]  # argparse.REMAINDER keeps the separator
        if cmd:
            result = ssh.exec(cmd)
            sys.stdout.buffer.write(result.out)
            sys.stderr.buffer.write(result.err)
            return int(result.rc)
        cols, rows = shutil.get_terminal_size((80, 24))
        chan = ssh.open_pty_shell(cols, rows)

        def resize(cols: int, rows: int) -> None:
            try:
                chan.resize_pty(width=cols, height=rows)
            except SSHException:
                pass  # the channel closed; the bridge sees its EOF and ends the session

        with raw_terminal(), watch_resize(resize):
            bridge(chan, stdin_reader(), sys.stdout.buffer, on_stdin_eof=chan.shutdown_write)
        return int(chan.recv_exit_status())
    finally:
        ssh.close()


def _shares_param(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """``--share``/``--share-ro`` → the spec's share list (None: leave it unchanged)."""
    paths = [(p, False) for p in args.share or []] + [(p, True) for p in args.share_ro or []]
    if not paths and not getattr(args, "no_shares", False):
        return None
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    for raw, read_only in paths:
        path = os.path.abspath(os.path.expanduser(raw))
        base = re.sub(r"[^A-Za-z0-9_-]", "-", os.path.basename(path.rstrip("/\\")))[:24]
        tag, n = base or "share", 1
        while tag in used:
            n += 1
            tag = f"{base or 'share'}-{n}"
        used.add(tag)
        out.append({"host_path": path, "tag": tag, "read_only": read_only,
                    "transport": args.share_transport})
    return out


def _add_share_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--share", action="append", metavar="DIR",
                   help="share a host folder at the same path in the VM (repeatable)")
    q.add_argument("--share-ro", action="append", metavar="DIR", help="share read-only")
    q.add_argument("--share-transport", choices=["auto", "9p", "sftp"], default="auto")


def add_machine_parser(sub: Any) -> None:
    p = sub.add_parser("machine", help="the helper VM (Linux containers on macOS/Windows)")
    p.set_defaults(func=cmd_machine)
    msub = p.add_subparsers(dest="machine_command", metavar="ACTION")

    def named(action: str, text: str) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = msub.add_parser(action, help=text)
        q.add_argument("--name", default="default", help="machine name (default: default)")
        return q

    q = named("init", "create the VM (state folder, keys, data disk)")
    q.add_argument("--arch", choices=["amd64", "arm64"], default=None)
    q.add_argument("--cpus", type=int, default=None)
    q.add_argument("--memory", default=None, help="MiB, or a size such as 4g")
    q.add_argument("--disk", type=int, default=None, help="data disk size in GiB")
    q.add_argument("--accel", choices=["auto", "kvm", "hvf", "whpx", "tcg"], default=None)
    _add_share_args(q)
    q.add_argument("--no-shares", action="store_true",
                   help="share nothing (default: your home folder, at the same path)")
    q = named("set", "change CPUs, memory, disk (grow only) or accelerator")
    q.add_argument("--cpus", type=int, default=None)
    q.add_argument("--memory", default=None)
    q.add_argument("--disk", type=int, default=None)
    q.add_argument("--accel", choices=["auto", "kvm", "hvf", "whpx", "tcg"], default=None)
    _add_share_args(q)
    q.add_argument("--no-shares", action="store_true", help="remove every shared folder")
    named("start", "boot the VM and wait until its engine answers")
    q = named("stop", "power the VM off cleanly")
    q.add_argument("--timeout", type=float, default=None, help="seconds before forcing")
    q = named("status", "state, accelerator, socket, boot timeline, resource use")
    q.add_argument("--json", action="store_true")
    q = named("rm", "delete the VM and its data disk")
    q.add_argument("-f", "--force", action="store_true", help="also when it is running")
    named("console", "attach to the serial console (Ctrl-] detaches)")
    q = named("ssh", "a shell in the VM, or run a command there")
    q.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run (after --)")
    q = named("logs", "the console log (or --qemu, --daemon)")
    q.add_argument("--qemu", action="store_true")
    q.add_argument("--daemon", action="store_true")
    q.add_argument("-n", "--lines", type=int, default=200)
    named("env", "print the DOCKER_HOST to use")
    q = named("diagnose", "check each network and sharing hop; name the broken one")
    q.add_argument("--json", action="store_true")
    q.add_argument("--bundle", metavar="FILE", help="also write a redacted support bundle")
    q.add_argument("--image", help="image to run the test containers from (default: busybox)")
    q = named("reclaim", "give the data disk's free space back (trim; compact when stopped)")
    q.add_argument(
        "--compact", action="store_true", help="compact the disk file (the VM must be stopped)"
    )
