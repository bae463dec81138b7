"""What "run a container" asks for, validated, and its ``docker run`` equivalent."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from vm_backend.engine.specs import PortSpec, RestartPolicy, VolumeSpec, ports_for_api


@dataclass(frozen=True)
class RunRequest:
    image: str
    name: str = ""
    command: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    ports: tuple[PortSpec, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    restart: RestartPolicy = field(default_factory=lambda: RestartPolicy("no"))
    memory: int | None = None  # bytes
    nano_cpus: int | None = None
    network: str = ""
    auto_remove: bool = False
    tty: bool = False
    stdin_open: bool = False
    workdir: str = ""
    user: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    def create_kwargs(self) -> dict[str, Any]:
        """Arguments for docker-py's low-level ``create_container`` + host config."""
        binds: dict[str, dict[str, str]] = {}
        anon: list[str] = []
        for v in self.volumes:
            if v.source:
                binds[v.source] = {"bind": v.target, "mode": "ro" if v.read_only else "rw"}
            else:
                anon.append(v.target)
        host_config: dict[str, Any] = {
            "port_bindings": {k: v for k, v in ports_for_api(list(self.ports)).items() if v},
            "binds": binds or None,
            "restart_policy": self.restart.for_api(),
            "auto_remove": self.auto_remove,
        }
        if self.memory:
            host_config["mem_limit"] = self.memory
        if self.nano_cpus:
            host_config["nano_cpus"] = self.nano_cpus
        if self.network:
            host_config["network_mode"] = self.network
        return {
            "image": self.image,
            "name": self.name or None,
            "command": list(self.command) or None,
            "entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "ports": [(p.container_port, p.protocol) for p in self.ports] or None,
            "environment": [f"{k}={v}" for k, v in self.env] or None,
            "volumes": [v.target for v in self.volumes] or None,
            "tty": self.tty,
            "stdin_open": self.stdin_open,
            "working_dir": self.workdir or None,
            "user": self.user or None,
            "labels": dict(self.labels) or None,
            "detach": True,
            "host_config": host_config,
            "anonymous": anon,
        }

    def docker_run_argv(self) -> list[str]:
        """The equivalent ``docker run`` command line, as a list of arguments."""
        argv = ["docker", "run", "-d"]
        if self.name:
            argv += ["--name", self.name]
        if self.auto_remove:
            argv.append("--rm")
        if self.tty:
            argv.append("-t")
        if self.stdin_open:
            argv.append("-i")
        for p in self.ports:
            argv += ["-p", str(p)]
        for k, v in self.env:
            argv += ["-e", f"{k}={v}"]
        for vol in self.volumes:
            argv += ["-v", str(vol)]
        if self.restart.name != "no":
            argv += ["--restart", str(self.restart)]
        if self.memory:
            argv += ["--memory", f"{self.memory // (1024 * 1024)}m"]
        if self.nano_cpus:
            argv += ["--cpus", f"{self.nano_cpus / 1e9:g}"]
        if self.network:
            argv += ["--network", self.network]
        if self.workdir:
            argv += ["--workdir", self.workdir]
        if self.user:
            argv += ["--user", self.user]
        for k, v in self.labels:
            argv += ["--label", f"{k}={v}"]
        if self.entrypoint is not None:
            argv += ["--entrypoint", shlex.join(self.entrypoint)]
        argv.append(self.image)
        argv += list(self.command)
        return argv

    def docker_run_command(self) -> str:
        return shlex.join(self.docker_run_argv())
