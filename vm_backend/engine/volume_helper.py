"""Reach into a volume's files through a short-lived helper container (no Qt).

Engines offer no API to read or write a volume directly. We create a helper container
from a local image with the volume mounted at ``/volume`` and use the engine's archive
API (``GET/PUT /containers/{id}/archive``) on it. The helper is only *created*, never
started: both Docker and Podman serve the archive API for a created container and mount
its volumes for the copy, so the helper runs no process, needs no network
(``network_mode='none'`` anyway) and cannot be confused with user work. It carries the
label ``berth.helper=1`` and is removed on every exit path (``VolumeHelper.__exit__``),
including errors and cancellation.

The archive API has no depth limit, so listing a folder streams its whole subtree and
keeps only the direct children: instant for typical volumes, slow for a folder holding
gigabytes. (Running ``find -maxdepth 1`` in a started helper would avoid that, at the
price of needing a shell in the image and a running container.)

Everything here blocks: call it from a worker thread. Long transfers take a
``cancelled()`` callable polled between chunks and a ``progress(done_bytes)`` callable;
files written on the host appear atomically (``.partial`` + rename) or not at all.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import docker.utils

from vm_backend.engine.client import EngineClient
from vm_backend.engine.errors import EngineError, NotFound, engine_call
from vm_backend.engine.models import Container, Image
from vm_backend.engine.run import RunRequest
from vm_backend.engine.specs import VolumeSpec
from vm_backend.engine.streams import Stream

log = logging.getLogger(__name__)

HELPER_LABEL = "berth.helper"
MOUNT = "/volume"
# The image we ship for tests and recommend; any local image works (see module docstring).
PREFERRED_IMAGE = "berth-test/busybox:latest"
_CHUNK = 1 << 20

Cancelled = Callable[[], bool]
Progress = Callable[[int], None]


def _never() -> bool:
    return False


def _ignore(_done: int) -> None:
    return None


class VolumeHelperError(EngineError):
    """A volume file operation failed (no helper image, bad path, bad archive...)."""


class TransferCancelled(EngineError):
    """The user cancelled a transfer; nothing half-written was left behind."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} cancelled.", "")


@dataclass(frozen=True)
class VolumeEntry:
    """One item in a volume directory, with its path relative to the volume root."""

    name: str
    path: str
    kind: str  # "dir", "file", "link" or "other"
    size: int
    mode: int
    mtime: float
    link_target: str = ""

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


def clean_path(path: str) -> str:
    """A path inside the volume, normalised and relative ("" is the root).

    Refuses anything that would leave the volume ("..", NUL), so a user typing a path or a
    crafted name can never make the helper read or write outside ``/volume``.
    """
    if "\x00" in path:
        raise VolumeHelperError("The path contains a NUL byte.", "Remove it.")
    norm = posixpath.normpath("/" + path.replace("\\", "/"))
    # normpath keeps a leading "//"; "/.." collapses to "/" so escaping is impossible here.
    rel = norm.lstrip("/")
    return "" if rel == "." else rel


def container_path(path: str) -> str:
    rel = clean_path(path)
    return f"{MOUNT}/{rel}" if rel else MOUNT


def _contents_path(path: str) -> str:
    """The archive path for a directory's contents (see :func:`_normalise`)."""
    return container_path(path) + "/."


def pick_helper_image(client: EngineClient) -> str:
    """The id of a local image to create helpers from; raises when there is none.

    The preferred test image first (Podman lists it as ``localhost/...``), then the
    smallest local image: the helper is never started, so any image will do.
    """
    images: list[Image] = client.images()
    for image in images:
        if any(t.endswith(PREFERRED_IMAGE) for t in image.tags):
            return image.id
    tagged = sorted((i for i in images if i.tags), key=lambda i: i.size)
    candidates = tagged or sorted(images, key=lambda i: i.size)
    if not candidates:
        raise VolumeHelperError(
            "There is no local image to create the volume helper from.",
            "Pull or load any small image (for example busybox) and retry.",
        )
    return candidates[0].id


def helper_containers(client: EngineClient, volume: str = "") -> list[Container]:
    """Helper containers that still exist (normally none, even after failures).

    With ``volume``, only the helpers that mount that volume.
    """
    filters: dict[str, str] = {"label": f"{HELPER_LABEL}=1"}
    if volume:
        filters["volume"] = volume
    return client.containers(all=True, filters=filters)


def remove_stale_helpers(
    client: EngineClient, older_than: float = 600.0, volume: str = ""
) -> list[str]:
    """Remove helpers left by a crashed Berth (only those of ``volume`` if given).

    A helper lives for one transfer, so one older than ``older_than`` seconds belongs to
    a process that died mid-operation (``__exit__`` never ran). Younger ones may be in
    use by another Berth window or the CLI right now and are left alone.
    """
    cutoff = time.time() - older_than
    removed: list[str] = []
    for helper in helper_containers(client, volume):
        if helper.created and helper.created > cutoff:
            continue
        try:
            client.remove(helper.id, force=True)
        except NotFound:
            continue
        removed.append(helper.id)
    return removed


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _normalise(name: str) -> str:
    """An archive member name relative to the directory archived as ``DIR/.``.

    Docker names such members ``./a`` (with a ``.`` root entry), Podman ``a`` (no root
    entry); both become ``a``, and the root becomes "". Archiving ``DIR`` itself instead
    would prefix Docker's names with the basename but not Podman's, and Podman does not
    always put the root entry first, so there is no reliable way to strip a prefix.
    """
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return "" if name == "." else name.rstrip("/")


class _ChunkReader(io.RawIOBase):
    """A readable over engine chunks that counts bytes and honours cancellation."""

    def __init__(
        self, chunks: Iterator[bytes], cancelled: Cancelled, progress: Progress, what: str
    ) -> None:
        self._chunks = chunks
        self._cancelled = cancelled
        self._progress = progress
        self._what = what
        self._buf = b""
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            if self._cancelled():
                raise TransferCancelled(self._what)
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
            self.count += len(self._buf)
            self._progress(self.count)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _file_chunks(
    fh: IO[bytes], cancelled: Cancelled, progress: Progress, what: str
) -> Iterator[bytes]:
    done = 0
    while True:
        if cancelled():
            raise TransferCancelled(what)
        chunk = fh.read(_CHUNK)
        if not chunk:
            return
        done += len(chunk)
        progress(done)
        yield chunk


def _entry_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.isfile():
        return "file"
    if member.issym() or member.islnk():
        return "link"
    return "other"


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if "\x00" in name or _normalise(name).split("/")[0] == ".." or "/../" in f"/{name}/":
        raise VolumeHelperError(
            f"The archive holds an unsafe path {name!r}.",
            "Only import tar files made by Berth or `tar -C DIR -c .`.",
        )
    if member.isdev():
        raise VolumeHelperError(
            f"The archive holds a device file {name!r}.", "Volumes hold files, not devices."
        )


class VolumeHelper:
    """A helper container with one volume mounted, removed again on exit.

    ``with VolumeHelper(client, "data") as h: h.list_dir("")`` — the container exists only
    inside the ``with`` block, whatever happens in it.
    """

    def __init__(
        self,
        client: EngineClient,
        volume: str,
        *,
        read_only: bool = False,
        image: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.volume = volume
        self.read_only = read_only
        self.image = image
        self.labels = dict(labels or {})
        self.container_id = ""

    def __enter__(self) -> VolumeHelper:
        image = self.image or pick_helper_image(self.client)
        request = RunRequest(
            image=image,
            # Never started; a command is still required by Podman for create.
            command=("true",),
            volumes=(VolumeSpec(self.volume, MOUNT, read_only=self.read_only),),
            network="none",
            labels=tuple({**self.labels, HELPER_LABEL: "1"}.items()),
        )
        self.container_id = self.client.create(request)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.container_id:
            return
        try:
            self.client.remove(self.container_id, force=True)
        except NotFound:
            pass
        except EngineError as err:
            # Do not mask the original error; the label lets a later sweep find it.
            log.warning("could not remove volume helper %s: %s", self.container_id[:12], err)
        self.container_id = ""

    # ---- reading -----------------------------------------------------------------------
    @contextmanager
    def _archive(self, path: str) -> Iterator[tuple[Iterator[bytes], dict[str, object]]]:
        """A tar stream of ``path`` that is closed on exit, read or not.

        docker-py's ``get_archive`` hands out a generator we cannot close: an abandoned
        download then keeps the engine busy writing, and dockerd refuses to remove the
        helper until its 60 s timeout. Holding the response lets us shut it down at once.
        """
        api: Any = self.client.api  # docker-py's request helpers are untyped
        with engine_call(f"Reading {path} from volume {self.volume}"):
            url = api._url("/containers/{0}/archive", self.container_id)
            response = api._get(url, params={"path": path}, stream=True)
            api._raise_for_status(response)
        header = response.headers.get("x-docker-container-path-stat", "")
        stat = docker.utils.decode_json_header(header) if header else {}
        stream: Stream[bytes] = Stream(response, lambda: response.iter_content(_CHUNK))
        try:
            yield iter(stream), dict(stat)
        finally:
            stream.close()

    def _is_dir(self, path: str) -> bool:
        """Whether ``path`` in the container is a directory (HEAD: stat only, no data)."""
        api: Any = self.client.api
        with engine_call(f"Reading {path} from volume {self.volume}"):
            url = api._url("/containers/{0}/archive", self.container_id)
            response = api.head(url, params={"path": path})
            api._raise_for_status(response)
        header = response.headers.get("x-docker-container-path-stat", "")
        stat = docker.utils.decode_json_header(header) if header else {}
        # Docker marks directories with Go's os.ModeDir bit; Podman also says isDir.
        return bool(stat.get("isDir")) or (_int(stat.get("mode")) & (1 << 31)) != 0

    def list_dir(self, path: str = "") -> list[VolumeEntry]:
        """The direct children of a directory in the volume, directories first."""
        rel_dir = clean_path(path)
        entries: list[VolumeEntry] = []
        with self._archive(_contents_path(rel_dir)) as (stream, _stat):
            tar = _open_stream(_ChunkReader(stream, _never, _ignore, "List"))
            for member in tar if tar is not None else ():
                rel = _normalise(member.name)
                if not rel or "/" in rel:
                    continue
                entries.append(
                    VolumeEntry(
                        name=rel,
                        path=posixpath.join(rel_dir, rel) if rel_dir else rel,
                        kind=_entry_kind(member),
                        size=member.size,
                        mode=member.mode,
                        mtime=float(member.mtime),
                        link_target=member.linkname,
                    )
                )
        entries.sort(key=lambda e: (not e.is_dir, e.name.lower()))
        return entries

    def download(
        self,
        path: str,
        dest: Path,
        cancelled: Cancelled = _never,
        progress: Progress = _ignore,
    ) -> int:
        """Copy a file to ``dest`` (its bytes) or a directory to ``dest`` (a tar of it).

        Returns the bytes received from the engine.
        """
        rel = clean_path(path)
        if not rel or self._is_dir(container_path(rel)):
            with self._archive(_contents_path(rel)) as (stream, _stat):
                reader = _ChunkReader(stream, cancelled, progress, "Download")
                _rebase_tar(reader, dest)
                return reader.count
        with self._archive(container_path(rel)) as (stream, _stat):
            reader = _ChunkReader(stream, cancelled, progress, "Download")
            _save_single_file(rel, reader, dest)
            return reader.count

    def export_tar(
        self, dest: Path, cancelled: Cancelled = _never, progress: Progress = _ignore
    ) -> int:
        """The whole volume as a portable tar (paths relative to the volume root)."""
        with self._archive(_contents_path("")) as (stream, _stat):
            reader = _ChunkReader(stream, cancelled, progress, "Export")
            _rebase_tar(reader, dest)
            return reader.count

    # ---- writing -----------------------------------------------------------------------
    def upload(
        self,
        source: Path,
        dest_dir: str = "",
        cancelled: Cancelled = _never,
        progress: Progress = _ignore,
    ) -> int:
        """Copy a host file or folder into a directory of the volume; returns bytes sent."""
        if not source.exists():
            raise VolumeHelperError(f"{source} does not exist.", "Pick an existing file.")
        with tempfile.TemporaryFile(prefix="berth-upload-") as spool:
            with tarfile.open(fileobj=spool, mode="w") as tar:
                tar.add(str(source), arcname=source.name, filter=_portable)
            spool.seek(0)
            return self._put(container_path(dest_dir), spool, cancelled, progress, "Upload")

    def import_tar(
        self, source: Path, cancelled: Cancelled = _never, progress: Progress = _ignore
    ) -> int:
        """Unpack a tar into the volume root (over what is there); returns bytes sent."""
        try:
            with tarfile.open(source, mode="r:*") as tar:
                for member in tar:
                    _check_member(member)
        except (tarfile.TarError, EOFError) as err:
            raise VolumeHelperError(
                f"{source.name} is not a readable tar archive ({err}).",
                "Pick a .tar made by a volume export.",
            ) from err
        except OSError as err:
            raise VolumeHelperError(f"Cannot read {source}: {err.strerror}.", "") from err
        with open(source, "rb") as fh:
            return self._put(MOUNT, fh, cancelled, progress, "Import")

    def _put(
        self, dest: str, fh: IO[bytes], cancelled: Cancelled, progress: Progress, what: str
    ) -> int:
        sent = 0

        def counted(done: int) -> None:
            nonlocal sent
            sent = done
            progress(done)

        # A generator body makes requests stream it chunked: nothing is held in memory,
        # and raising TransferCancelled from it aborts the upload mid-way.
        chunks = _file_chunks(fh, cancelled, counted, what)
        try:
            self.client.put_archive(self.container_id, dest, chunks)  # type: ignore[arg-type]
        except EngineError as err:
            cause = err.__cause__
            if isinstance(cause, TransferCancelled):
                raise cause from None
            raise
        if cancelled():
            raise TransferCancelled(what)
        return sent


def _portable(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Uploaded files keep their modes but not the host user's ids or device files."""
    if info.isdev():
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _open_stream(reader: _ChunkReader) -> tarfile.TarFile | None:
    """An archive stream opened for reading; None for an empty directory's zero bytes."""
    try:
        return tarfile.open(fileobj=reader, mode="r|")
    except tarfile.ReadError:
        if reader.count == 0:
            return None
        raise


def _save_single_file(rel: str, reader: _ChunkReader, dest: Path) -> None:
    """Write the one regular file in an archive stream to ``dest``, atomically."""
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise VolumeHelperError(
                    f"{rel} is not a regular file.", "Download its folder instead."
                )
            src = tar.extractfile(member)
            if src is None:
                raise VolumeHelperError(f"{rel} could not be read.", "")
            with open(tmp, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _rebase_tar(reader: _ChunkReader, dest: Path) -> None:
    """Rewrite a ``DIR/.`` archive stream into ``dest`` with names relative to DIR."""
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        src = _open_stream(reader)
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
            if src is not None:
                with src:
                    for member in src:
                        member.name = _normalise(member.name) or "."
                        data = src.extractfile(member) if member.isfile() else None
                        out.addfile(member, data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# ---- one-shot helpers for callers that do a single operation -----------------------------
def list_volume_dir(client: EngineClient, volume: str, path: str = "") -> list[VolumeEntry]:
    with VolumeHelper(client, volume, read_only=True) as helper:
        return helper.list_dir(path)


def export_volume(
    client: EngineClient,
    volume: str,
    dest: Path,
    cancelled: Cancelled = _never,
    progress: Progress = _ignore,
) -> int:
    with VolumeHelper(client, volume, read_only=True) as helper:
        return helper.export_tar(dest, cancelled, progress)


def import_volume(
    client: EngineClient,
    volume: str,
    source: Path,
    cancelled: Cancelled = _never,
    progress: Progress = _ignore,
) -> int:
    with VolumeHelper(client, volume) as helper:
        return helper.import_tar(source, cancelled, progress)


def download_from_volume(
    client: EngineClient,
    volume: str,
    path: str,
    dest: Path,
    cancelled: Cancelled = _never,
    progress: Progress = _ignore,
) -> int:
    with VolumeHelper(client, volume, read_only=True) as helper:
        return helper.download(path, dest, cancelled, progress)


def upload_to_volume(
    client: EngineClient,
    volume: str,
    source: Path,
    dest_dir: str = "",
    cancelled: Cancelled = _never,
    progress: Progress = _ignore,
) -> int:
    with VolumeHelper(client, volume) as helper:
        return helper.upload(source, dest_dir, cancelled, progress)
