"""Compose projects: found from container labels, driven whole, and up/down from a file.

Projects are read from the ``com.docker.compose.*`` labels every Compose version sets, so
they show up whoever started them. Start/stop/restart/remove of a project go through the
engine API (no Compose needed). ``up``/``down`` and validation of a compose file run the
Compose CLI the user has — the ``docker compose`` plugin, else the standalone
``docker-compose`` — with an argument list (never a shell) and ``DOCKER_HOST`` set to the
active engine; when neither exists the error says what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vm_backend.engine.client import EngineClient
from vm_backend.engine.models import COMPOSE_SERVICE_LABEL, Container, LogEntry
from vm_backend.engine.streams import Stream
from vm_backend.errors import BerthError, InputError

WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"


class ComposeError(BerthError):
    """Compose is missing, or it failed."""


@dataclass(frozen=True)
class ComposeProject:
    name: str
    containers: tuple[Container, ...]
    working_dir: str = ""
    config_files: tuple[str, ...] = ()
    services: tuple[str, ...] = field(default=())

    @property
    def running(self) -> int:
        return sum(1 for c in self.containers if c.running)

    @property
    def state(self) -> str:
        if not self.containers:
            return "empty"
        if self.running == len(self.containers):
            return "running"
        if self.running == 0:
            return "stopped"
        return f"partly running ({self.running}/{len(self.containers)})"


def projects(containers: Sequence[Container]) -> list[ComposeProject]:
    """Group containers by their compose project label, sorted by name."""
    groups: dict[str, list[Container]] = {}
    for c in containers:
        if c.compose_project:
            groups.setdefault(c.compose_project, []).append(c)
    out = []
    for name, members in sorted(groups.items()):
        members.sort(key=lambda c: (c.compose_service, c.name))
        first = members[0].labels
        files = tuple(f for f in first.get(CONFIG_FILES_LABEL, "").split(",") if f)
        services = tuple(sorted({c.labels.get(COMPOSE_SERVICE_LABEL, "") for c in members} - {""}))
        out.append(
            ComposeProject(name, tuple(members), first.get(WORKING_DIR_LABEL, ""), files, services)
        )
    return out


def find_compose_cli() -> list[str] | None:
    """The Compose command line to use, or None when Compose is not installed."""
    docker = shutil.which("docker")
    if docker:
        try:
            probe = subprocess.run(
                [docker, "compose", "version"], capture_output=True, timeout=20, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            probe = None
        if probe is not None and probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


INSTALL_HINT = (
    "Install Docker Compose: the docker-compose-plugin package (Docker's repository), or "
    "Debian/Ubuntu's docker-compose package, or `pip install docker-compose`."
)


def _require_cli() -> list[str]:
    cli = find_compose_cli()
    if cli is None:
        raise ComposeError("Docker Compose is not installed.", INSTALL_HINT)
    return cli


def _check_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"{path} is not a file.", "Pick a compose.yaml file.")
    return path


def project_name_for(path: Path) -> str:
    """Compose's default project name: the folder name, lowercased, [a-z0-9_-] only."""
    raw = path.resolve().parent.name.lower()
    name = "".join(c for c in raw if c.isalnum() or c in "_-").lstrip("_-")
    return name or "default"


class ComposeRun:
    """A running compose command: iterate for output lines; ``cancel()`` stops it."""

    def __init__(self, argv: list[str], cwd: Path, engine_url: str) -> None:
        env = {**os.environ, "DOCKER_HOST": engine_url, "COMPOSE_ANSI": "never", "NO_COLOR": "1"}
        env.pop("DOCKER_CONTEXT", None)
        self.argv = argv
        try:
            self._proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
        except OSError as err:
            raise ComposeError(f"Could not run {argv[0]}: {err}.", INSTALL_HINT) from err
        self._lock = threading.Lock()
        self.returncode: int | None = None

    def __iter__(self) -> Iterator[str]:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            yield line.rstrip("\n")
        self.returncode = self._proc.wait()

    def wait(self) -> int:
        for _ in self:
            pass
        return self.returncode if self.returncode is not None else self._proc.wait()

    def cancel(self) -> None:
        with self._lock:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()


def _base(path: Path, project: str) -> list[str]:
    return [*_require_cli(), "-f", str(path), "-p", project]


def up(path: Path, engine_url: str, project: str = "") -> ComposeRun:
    path = _check_file(path)
    argv = [*_base(path, project or project_name_for(path)), "up", "-d"]
    return ComposeRun(argv, path.parent, engine_url)


def down(path: Path, engine_url: str, project: str = "", volumes: bool = False) -> ComposeRun:
    path = _check_file(path)
    argv = [*_base(path, project or project_name_for(path)), "down"]
    if volumes:
        argv.append("--volumes")
    return ComposeRun(argv, path.parent, engine_url)


def validate_text(text: str) -> list[str]:
    """Quick local checks of a compose file's text; returns problems (empty: looks fine)."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        return [f"Not valid YAML{where}: {problem}."]
    if not isinstance(doc, dict):
        return ["A compose file must be a mapping with a 'services' key."]
    services = doc.get("services")
    problems = []
    if not isinstance(services, dict) or not services:
        problems.append("There is no 'services' section (or it is empty).")
        return problems
    for name, svc in services.items():
        if not isinstance(svc, dict):
            problems.append(f"Service {name!r} must be a mapping.")
        elif "image" not in svc and "build" not in svc:
            problems.append(f"Service {name!r} needs an 'image' or a 'build'.")
    return problems


def validate_file(path: Path, engine_url: str) -> list[str]:
    """Local checks, then Compose's own (``config -q``) when Compose is installed."""
    path = _check_file(path)
    problems = validate_text(path.read_text(encoding="utf-8", errors="replace"))
    if problems:
        return problems
    cli = find_compose_cli()
    if cli is None:
        return []
    run = ComposeRun([*cli, "-f", str(path), "config", "-q"], path.parent, engine_url)
    output = list(run)
    if run.returncode:
        return [line for line in output if line.strip()] or ["Compose rejected the file."]
    return []


class MergedLogs:
    """The logs of several containers in one timeline, each line prefixed by its service.

    History (the last ``tail`` lines of each container) is merged by engine timestamp;
    after that, ``follow`` streams new lines from every container as they come. Call
    :meth:`take` from any thread to collect what arrived; :meth:`close` stops everything.
    """

    def __init__(
        self,
        client: EngineClient,
        containers: Sequence[Container],
        tail: int = 500,
        follow: bool = True,
    ) -> None:
        self.client = client
        self.containers = list(containers)
        self.tail = tail
        self.follow = follow
        self._lock = threading.Lock()
        self._pending: list[tuple[str | None, str, str]] = []
        self._streams: list[Stream[LogEntry]] = []
        self._closed = False
        self.errors: list[str] = []

    @staticmethod
    def label(c: Container) -> str:
        return c.compose_service or c.name

    def start(self) -> None:
        threading.Thread(target=self._run, name="berth-compose-logs", daemon=True).start()

    def _run(self) -> None:
        history: list[tuple[str, str, str, str]] = []
        for c in self.containers:
            try:
                stream = self.client.logs(c.id, tail=self.tail, timestamps=True)
                for e in stream:
                    history.append((e.timestamp or "", self.label(c), e.stream, e.text))
            except BerthError as err:
                self.errors.append(f"{c.name}: {err.message}")
        history.sort(key=lambda item: item[0])  # RFC 3339 in UTC sorts as text
        with self._lock:
            self._pending.extend((ts or None, s, f"{svc} | {t}") for ts, svc, s, t in history)
        if not self.follow:
            return
        since = time.time()
        for c in self.containers:
            threading.Thread(target=self._follow, args=(c, since), daemon=True).start()

    def _follow(self, c: Container, since: float) -> None:
        try:
            stream = self.client.logs(c.id, follow=True, since=since, timestamps=True)
        except BerthError as err:
            self.errors.append(f"{c.name}: {err.message}")
            return
        with self._lock:
            if self._closed:
                stream.close()
                return
            self._streams.append(stream)
        label = self.label(c)
        try:
            for e in stream:
                with self._lock:
                    self._pending.append((e.timestamp, e.stream, f"{label} | {e.text}"))
        except BerthError as err:
            self.errors.append(f"{c.name}: {err.message}")

    def take(self) -> list[tuple[str | None, str, str]]:
        with self._lock:
            lines, self._pending = self._pending, []
        return lines

    def close(self) -> None:
        with self._lock:
            self._closed = True
            streams, self._streams = self._streams, []
        for s in streams:
            s.close()
