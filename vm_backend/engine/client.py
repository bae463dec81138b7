"""The engine client: docker-py underneath, frozen models out, EngineError on failure.

One :class:`EngineClient` talks to one endpoint (Docker or Podman's Docker-compatible
API). Methods block: call them from worker threads, never from a GUI thread. Streams
(logs, stats, events, pull, build) are :class:`~vm_backend.engine.streams.Stream`
objects that another thread may close to cancel them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tarfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import docker.types
from docker.utils import convert_filters

from vm_backend.engine import convert
from vm_backend.engine.discovery import kind_from_version
from vm_backend.engine.errors import EngineError, EngineUnavailable, NotFound, call, engine_call
from vm_backend.engine.models import (
    Container,
    DiskUsage,
    EngineInfo,
    EngineKind,
    Event,
    HistoryEntry,
    Image,
    LogEntry,
    Network,
    PruneResult,
    PullProgress,
    StatsSample,
    TopResult,
    Volume,
)
from vm_backend.engine.run import RunRequest
from vm_backend.engine.specs import parse_image_ref
from vm_backend.engine.streams import (
    ExecSession,
    Stream,
    iter_frames,
    iter_json_lines,
    iter_log_entries,
)

DEFAULT_TIMEOUT = 60


class EngineClient:
    """A blocking, thread-safe client for one engine endpoint."""

    def __init__(self, url: str, timeout: int = DEFAULT_TIMEOUT) -> None:
        self.url = url
        with engine_call(f"Connecting to {url}"):
            self.api = docker.APIClient(base_url=url, timeout=timeout, version="auto")
        self._kind: EngineKind | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.api.close()

    @property
    def _untyped(self) -> Any:
        """docker-py methods its type stubs leave untyped."""
        return self.api

    def _stream_request(
        self,
        method: str,
        path: str,
        *args: str,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """A streaming request through docker-py's session (its helpers are untyped)."""
        api: Any = self.api
        url = api._url(path, *args)
        send = api._get if method == "GET" else api._post
        response = send(url, params=dict(params or {}), stream=True, timeout=None, **kwargs)
        api._raise_for_status(response)
        return response

    # ---- engine ------------------------------------------------------------------------
    def ping(self) -> bool:
        with engine_call("Pinging the engine"):
            return bool(self.api.ping())

    def version(self) -> dict[str, Any]:
        return call("Reading the engine version", self.api.version)

    @property
    def kind(self) -> EngineKind:
        if self._kind is None:
            self._kind = kind_from_version(self.version())
        return self._kind

    def info(self) -> EngineInfo:
        with engine_call("Reading engine information"):
            version = self.api.version()
            info = self.api.info()
        self._kind = kind_from_version(version)
        return convert.info_from_api(info, version, self._kind)

    def disk_usage(self) -> DiskUsage:
        return convert.disk_usage_from_api(call("Reading disk usage", self.api.df))

    # ---- containers --------------------------------------------------------------------
    def containers(
        self, all: bool = True, filters: Mapping[str, Any] | None = None
    ) -> list[Container]:
        raw = call(
            "Listing containers", lambda: self.api.containers(all=all, filters=dict(filters or {}))
        )
        return [convert.container_from_list(c) for c in raw]

    def container(self, ident: str) -> Container:
        """One container by id or name, in list form (raises NotFound)."""
        found = self.containers(all=True, filters={"id": ident}) if len(ident) >= 12 else []
        if not found:
            info = self.inspect_container(ident)
            found = self.containers(all=True, filters={"id": info["Id"]})
        if not found:
            raise NotFound(f"No container {ident!r}.", "It may have been removed.")
        return found[0]

    def inspect_container(self, ident: str) -> dict[str, Any]:
        return call(f"Inspecting container {ident}", lambda: self.api.inspect_container(ident))

    def create(self, req: RunRequest) -> str:
        kwargs = req.create_kwargs()
        anon = kwargs.pop("anonymous")
        with engine_call(f"Creating a container from {req.image}"):
            hc = kwargs.pop("host_config")
            host_config = self.api.create_host_config(**hc)
            if anon:
                host_config.setdefault("Mounts", [])
            result = self.api.create_container(host_config=host_config, **kwargs)
        return str(result["Id"])

    def run(self, req: RunRequest) -> str:
        """Create and start; a container that fails to start is removed again."""
        cid = self.create(req)
        try:
            self.start(cid)
        except EngineError:
            # Best effort: the start error is the one to report, not a failed clean-up.
            with contextlib.suppress(EngineError):
                call(f"Removing {cid}", lambda: self.api.remove_container(cid, force=True))
            raise
        return cid

    def start(self, ident: str) -> None:
        call(f"Starting {ident}", lambda: self.api.start(ident))

    def stop(self, ident: str, timeout: int = 10) -> None:
        call(f"Stopping {ident}", lambda: self.api.stop(ident, timeout=timeout))

    def restart(self, ident: str, timeout: int = 10) -> None:
        call(f"Restarting {ident}", lambda: self.api.restart(ident, timeout=timeout))

    def pause(self, ident: str) -> None:
        call(f"Pausing {ident}", lambda: self.api.pause(ident))

    def unpause(self, ident: str) -> None:
        call(f"Resuming {ident}", lambda: self.api.unpause(ident))

    def kill(self, ident: str, signal: str = "SIGKILL") -> None:
        call(f"Killing {ident}", lambda: self.api.kill(ident, signal=signal))

    def remove(self, ident: str, force: bool = False, volumes: bool = False) -> None:
        call(
            f"Removing {ident}",
            lambda: self.api.remove_container(ident, force=force, v=volumes),
        )

    def rename(self, ident: str, new_name: str) -> None:
        call(f"Renaming {ident} to {new_name}", lambda: self.api.rename(ident, new_name))

    def wait(self, ident: str, timeout: float | None = None) -> int:
        result = call(
            f"Waiting for {ident}",
            lambda: self.api.wait(ident, timeout=None if timeout is None else int(timeout)),
        )
        return int(result.get("StatusCode", -1))

    def top(self, ident: str, ps_args: str | None = None) -> TopResult:
        raw = call(f"Listing processes of {ident}", lambda: self.api.top(ident, ps_args=ps_args))
        return TopResult(
            tuple(str(t) for t in raw.get("Titles") or []),
            tuple(tuple(str(c) for c in row) for row in raw.get("Processes") or []),
        )

    def prune_containers(self, label: str = "") -> PruneResult:
        """Remove stopped containers (only those with ``label``, "k" or "k=v", if given)."""
        filters = {"label": label} if label else None
        raw = call(
            "Pruning stopped containers", lambda: self._untyped.prune_containers(filters=filters)
        )
        return PruneResult(
            tuple(raw.get("ContainersDeleted") or []), int(raw.get("SpaceReclaimed") or 0)
        )

    # ---- logs, stats, exec, files -------------------------------------------------------
    def logs(
        self,
        ident: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
        until: float | None = None,
        timestamps: bool = False,
        stdout: bool = True,
        stderr: bool = True,
    ) -> Stream[LogEntry]:
        info = self.inspect_container(ident)
        tty = bool((info.get("Config") or {}).get("Tty"))
        params: dict[str, Any] = {
            "stdout": int(stdout),
            "stderr": int(stderr),
            "follow": int(follow),
            "timestamps": int(timestamps),
            "tail": "all" if tail is None else str(max(0, tail)),
        }
        if since:
            params["since"] = f"{since:.9f}"
        if until:
            params["until"] = f"{until:.9f}"
        with engine_call(f"Reading logs of {ident}"):
            response = self._stream_request(
                "GET", "/containers/{0}/logs", info["Id"], params=params
            )
        return Stream(response, lambda: iter_log_entries(iter_frames(response, tty), timestamps))

    def stats(self, ident: str) -> Stream[StatsSample]:
        cid = ident
        with engine_call(f"Reading stats of {ident}"):
            response = self._stream_request(
                "GET", "/containers/{0}/stats", cid, params={"stream": 1}
            )

        def items() -> Iterator[StatsSample]:
            for raw in iter_json_lines(response):
                yield convert.stats_from_api(cid, raw)

        return Stream(response, items)

    def stats_once(self, ident: str) -> StatsSample:
        raw = call(f"Reading stats of {ident}", lambda: self.api.stats(ident, stream=False))
        return convert.stats_from_api(ident, raw)

    def exec_tty(
        self,
        ident: str,
        argv: list[str],
        *,
        user: str = "",
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
    ) -> ExecSession:
        """Start ``argv`` in the container with a TTY; returns the raw session."""
        environment = {"TERM": "xterm-256color", **(env or {})}
        with engine_call(f"Opening a terminal in {ident}"):
            created = self.api.exec_create(
                ident,
                argv,
                stdin=True,
                tty=True,
                user=user,
                environment=environment,
                workdir=workdir,
            )
            exec_id = created["Id"]
            wrapper = self.api.exec_start(exec_id, tty=True, socket=True)
        sock: Any = getattr(wrapper, "_sock", wrapper)
        api: Any = self.api
        session = ExecSession(
            sock,
            exec_id,
            resize=lambda h, w: api.exec_resize(exec_id, height=h, width=w),
            inspect=lambda: api.exec_inspect(exec_id),
            keepalive=wrapper,
        )
        try:
            session.resize(cols, rows)
        except docker.errors.APIError:
            pass  # some engines refuse a resize before the process has started
        return session

    def exec_run(self, ident: str, argv: list[str], user: str = "") -> tuple[int, bytes]:
        """Run a command to completion; returns (exit code, combined output)."""
        with engine_call(f"Running {argv[0] if argv else ''} in {ident}"):
            created = self.api.exec_create(ident, argv, user=user)
            out = self.api.exec_start(created["Id"])
            code = self.api.exec_inspect(created["Id"]).get("ExitCode")
        return int(code if code is not None else -1), bytes(out)

    def get_archive(self, ident: str, path: str) -> tuple[Iterator[bytes], dict[str, Any]]:
        """A tar stream of ``path`` in the container and the path's stat."""
        with engine_call(f"Reading {path} from {ident}"):
            stream, stat = self.api.get_archive(ident, path, chunk_size=1 << 16)
        return stream, dict(stat)

    def put_archive(self, ident: str, path: str, data: bytes | IO[bytes]) -> None:
        with engine_call(f"Writing into {path} in {ident}"):
            ok = self.api.put_archive(ident, path, data)
        if not ok:
            raise EngineError(f"The engine refused to write into {path}.", "Check the path exists.")

    def list_dir(self, ident: str, path: str) -> list[tarfile.TarInfo]:
        """The direct children of a directory, read through the archive API."""
        stream, _stat = self.get_archive(ident, path)
        reader = _IterReader(stream)
        entries: list[tarfile.TarInfo] = []
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            root = ""
            for member in tar:
                if not root:
                    root = member.name.split("/")[0]
                    continue
                rel = member.name[len(root) + 1 :]
                if rel and "/" not in rel.rstrip("/"):
                    entries.append(member)
        return entries

    # ---- images --------------------------------------------------------------------------
    def images(self, all: bool = False) -> list[Image]:
        with engine_call("Listing images"):
            raw = self.api.images(all=all)
            in_use = Counter(c.get("ImageID", "") for c in self.api.containers(all=True))
        return [convert.image_from_list(i, in_use) for i in raw]

    def inspect_image(self, ident: str) -> dict[str, Any]:
        return call(f"Inspecting image {ident}", lambda: self._untyped.inspect_image(ident))

    def pull(self, reference: str) -> Stream[PullProgress]:
        ref = parse_image_ref(reference)
        with engine_call(f"Pulling {ref}"):
            params = {"fromImage": ref.repository, "tag": ref.digest or ref.tag}
            response = self._stream_request("POST", "/images/create", params=params)
        return Stream(response, lambda: (_progress(r) for r in iter_json_lines(response)))

    def remove_image(self, ident: str, force: bool = False) -> None:
        call(f"Removing image {ident}", lambda: self.api.remove_image(ident, force=force))

    def tag(self, ident: str, reference: str) -> None:
        ref = parse_image_ref(reference)
        ok = call(
            f"Tagging {ident} as {ref}",
            lambda: self.api.tag(ident, ref.repository, ref.tag or "latest"),
        )
        if not ok:
            raise EngineError(f"The engine did not tag {ident}.", "")

    def history(self, ident: str) -> list[HistoryEntry]:
        raw = call(f"Reading history of {ident}", lambda: self._untyped.history(ident))
        return [
            HistoryEntry(
                id=str(h.get("Id") or ""),
                created=convert.parse_time(h.get("Created")),
                created_by=str(h.get("CreatedBy") or ""),
                size=int(h.get("Size") or 0),
                tags=tuple(h.get("Tags") or ()),
                comment=str(h.get("Comment") or ""),
            )
            for h in raw
        ]

    def prune_images(self, dangling_only: bool = True, label: str = "") -> PruneResult:
        filters = {"dangling": "true" if dangling_only else "false"}
        if label:
            filters["label"] = label
        raw = call("Pruning images", lambda: self._untyped.prune_images(filters=filters))
        deleted = tuple(
            str(d.get("Deleted") or d.get("Untagged") or "") for d in raw.get("ImagesDeleted") or []
        )
        return PruneResult(deleted, int(raw.get("SpaceReclaimed") or 0))

    def export_image(
        self,
        ident: str,
        dest: Path,
        cancelled: Callable[[], bool] = lambda: False,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """``docker save`` to ``dest`` atomically (a partial file never stays behind)."""
        tmp = dest.with_name(f".{dest.name}.partial")
        written = 0
        try:
            with engine_call(f"Exporting {ident}"):
                # Our own response (not get_image's generator) so a cancel can close it:
                # an abandoned one keeps the engine writing into a socket nobody reads.
                response = self._stream_request("GET", "/images/{0}/get", ident)
                with response, open(tmp, "wb") as fh:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        if cancelled():
                            raise EngineError("Export cancelled.", "")
                        fh.write(chunk)
                        written += len(chunk)
                        if progress:
                            progress(written)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return written

    def load_image(self, source: Path) -> list[str]:
        """``docker load`` from a tar file; returns the loaded image names/ids."""
        with engine_call(f"Loading images from {source.name}"), open(source, "rb") as fh:
            out = self._untyped.load_image(fh)
        loaded = []
        for line in out or []:
            text = str(line.get("stream") or "")
            if "Loaded image" in text:
                loaded.append(text.split(":", 1)[1].strip())
            if line.get("error"):
                raise EngineError(f"Loading failed: {line['error']}", "Is this a docker save tar?")
        return loaded

    def import_image(self, source: Path, reference: str = "") -> str:
        """``docker import`` a root filesystem tarball as an image."""
        repo = None
        if reference:
            # The tag goes inside "repo" (the API allows it): Podman 4.3 ignores the
            # separate "tag" parameter and would name the image :latest.
            repo = str(parse_image_ref(reference))
        with engine_call(f"Importing {source.name}"):
            out = self.api.import_image_from_file(str(source), repository=repo)
        text = out if isinstance(out, str) else str(out)
        for obj in iter_json_text(text):
            if obj.get("error"):
                raise EngineError(f"Import failed: {obj['error']}", "Is this a tar archive?")
            status = str(obj.get("status") or obj.get("Id") or "")
            if status:
                return status.strip()
        return text.strip()

    def build(
        self, context: Path, tag: str = "", dockerfile: str = "Dockerfile", network: str = ""
    ) -> Stream[dict[str, Any]]:
        """Build from a folder; yields the engine's raw progress objects (stream/aux/error).

        ``network`` is the RUN steps' network mode ("none" builds offline)."""
        if not (context / dockerfile).is_file():
            raise EngineError(
                f"No {dockerfile} in {context}.", "Pick the folder with the Dockerfile."
            )
        if tag:
            parse_image_ref(tag)
        with engine_call(f"Building {context}"):
            archive = _tar_context(context)
            params = {
                "t": tag or None,
                "dockerfile": dockerfile,
                "rm": 1,
                "forcerm": 1,
                "networkmode": network or None,
            }
            response = self._stream_request(
                "POST",
                "/build",
                params={k: v for k, v in params.items() if v is not None},
                data=archive,
                headers={"Content-Type": "application/x-tar"},
            )
        return Stream(response, lambda: iter_json_lines(response))

    # ---- volumes -------------------------------------------------------------------------
    def volumes(self) -> list[Volume]:
        raw = call("Listing volumes", self.api.volumes)
        return [convert.volume_from_api(v) for v in (raw or {}).get("Volumes") or []]

    def create_volume(
        self,
        name: str = "",
        driver: str = "local",
        labels: Mapping[str, str] | None = None,
        options: Mapping[str, str] | None = None,
    ) -> Volume:
        raw = call(
            f"Creating volume {name}",
            lambda: self.api.create_volume(
                name=name or None,
                driver=driver,
                driver_opts=dict(options or {}) or None,
                labels=dict(labels or {}) or None,
            ),
        )
        return convert.volume_from_api(raw)

    def inspect_volume(self, name: str) -> dict[str, Any]:
        return call(f"Inspecting volume {name}", lambda: self.api.inspect_volume(name))

    def remove_volume(self, name: str, force: bool = False) -> None:
        call(f"Removing volume {name}", lambda: self.api.remove_volume(name, force=force))

    def prune_volumes(self, all_unused: bool = False, label: str = "") -> PruneResult:
        # Docker 23+ (API 1.42) prunes only anonymous volumes unless all=true; older
        # engines prune every unused volume and reject the "all" filter with a 400.
        filters: dict[str, str] = {"label": label} if label else {}
        if (
            all_unused
            and self.kind is EngineKind.DOCKER
            and docker.utils.version_gte(str(self.api.api_version), "1.42")
        ):
            filters["all"] = "true"
        raw = call("Pruning volumes", lambda: self.api.prune_volumes(filters=filters or None))
        return PruneResult(
            tuple(raw.get("VolumesDeleted") or []), int(raw.get("SpaceReclaimed") or 0)
        )

    # ---- networks ------------------------------------------------------------------------
    def networks(self) -> list[Network]:
        raw = call("Listing networks", self.api.networks)
        out = []
        for n in raw:
            if not n.get("Containers") and n.get("Id"):
                # Docker's list (API >= 1.28) always sends "Containers": {}, Podman may
                # omit it: only inspect has the attachments.
                nid = n["Id"]
                try:
                    n = call(f"Inspecting {nid}", functools.partial(self.api.inspect_network, nid))
                except EngineUnavailable:
                    raise  # the engine went away: the caller retries the whole list
                except EngineError:
                    pass  # removed meanwhile, or refused: keep what the list said
            out.append(convert.network_from_api(n))
        return out

    def inspect_network(self, ident: str) -> dict[str, Any]:
        return call(f"Inspecting network {ident}", lambda: self.api.inspect_network(ident))

    def create_network(
        self,
        name: str,
        driver: str = "bridge",
        subnet: str = "",
        gateway: str = "",
        internal: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        ipam = None
        if subnet or gateway:
            pool = docker.types.IPAMPool(subnet=subnet or None, gateway=gateway or None)
            ipam = docker.types.IPAMConfig(pool_configs=[pool])
        raw = call(
            f"Creating network {name}",
            lambda: self.api.create_network(
                name,
                driver=driver,
                ipam=ipam,
                internal=internal,
                labels=dict(labels or {}) or None,
                check_duplicate=True,
            ),
        )
        return str(raw.get("Id") or raw.get("id") or "")

    def remove_network(self, ident: str) -> None:
        call(f"Removing network {ident}", lambda: self.api.remove_network(ident))

    def connect(self, network: str, container: str, aliases: Iterable[str] = ()) -> None:
        call(
            f"Connecting {container} to {network}",
            lambda: self.api.connect_container_to_network(
                container, network, aliases=list(aliases) or None
            ),
        )

    def disconnect(self, network: str, container: str, force: bool = False) -> None:
        call(
            f"Disconnecting {container} from {network}",
            lambda: self.api.disconnect_container_from_network(container, network, force=force),
        )

    def prune_networks(self, label: str = "") -> PruneResult:
        filters = {"label": label} if label else None
        raw = call("Pruning networks", lambda: self._untyped.prune_networks(filters=filters))
        return PruneResult(tuple(raw.get("NetworksDeleted") or []), 0)

    def prune_build_cache(self) -> PruneResult:
        raw = call("Pruning the build cache", self.api.prune_builds)
        return PruneResult(
            tuple(raw.get("CachesDeleted") or []), int(raw.get("SpaceReclaimed") or 0)
        )

    # ---- events --------------------------------------------------------------------------
    def events(
        self, since: float | None = None, filters: Mapping[str, Any] | None = None
    ) -> Stream[Event]:
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = f"{since:.9f}"
        if filters:
            params["filters"] = convert_filters(dict(filters))
        with engine_call("Subscribing to engine events"):
            response = self._stream_request("GET", "/events", params=params)
        return Stream(
            response, lambda: (convert.event_from_api(e) for e in iter_json_lines(response))
        )


def _progress(raw: Mapping[str, Any]) -> PullProgress:
    detail = raw.get("progressDetail") or {}
    error = raw.get("error") or (raw.get("errorDetail") or {}).get("message") or ""
    return PullProgress(
        layer=str(raw.get("id") or ""),
        status=str(raw.get("status") or ""),
        current=int(detail.get("current") or 0) if isinstance(detail, Mapping) else 0,
        total=int(detail.get("total") or 0) if isinstance(detail, Mapping) else 0,
        error=str(error),
    )


def iter_json_text(text: str) -> Iterator[dict[str, Any]]:
    import json

    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return
        if isinstance(obj, dict):
            yield obj


def _tar_context(context: Path) -> bytes:
    """The build context as a tar, honouring .dockerignore via docker-py's helper."""
    from docker.utils.build import exclude_paths

    ignore_file = context / ".dockerignore"
    patterns: list[str] = []
    if ignore_file.is_file():
        patterns = [
            line.strip()
            for line in ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip() and not line.startswith("#")
        ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in sorted(exclude_paths(str(context), patterns)):
            tar.add(str(context / rel), arcname=rel, recursive=False)
    return buf.getvalue()


class _IterReader(io.RawIOBase):
    """A file-like reader over an iterator of byte chunks (for tarfile streaming)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
