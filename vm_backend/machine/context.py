"""The ``berth`` docker context, written straight into the docker CLI's context store.

The docker CLI keeps each context in ``$DOCKER_CONFIG/contexts/meta/<sha256(name)>/meta.json``
(``DOCKER_CONFIG`` defaults to ``~/.docker``), in this shape (docker/cli
``cli/context/store/metadatastore.go``)::

    {"Name": "berth", "Metadata": {...},
     "Endpoints": {"docker": {"Host": "unix:///...", "SkipTLSVerify": false}}}

Writing it ourselves means no docker CLI is needed on the host to set Berth up, and the
user's own CLI then sees ``docker --context berth`` / ``docker context use berth``.
On Windows the endpoint is the engine's named pipe, ``npipe:////./pipe/berth-<user>-<home
hash>-<machine>-docker`` (:func:`engine_host_url`), the docker CLI's syntax for a local pipe.
``currentContext`` in ``config.json`` is changed only when the caller asks
(:func:`use_context`): switching the user's default engine is their decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vm_backend.errors import BerthError, InputError
from vm_backend.winpipe import pipe_url

CONTEXT_NAME = "berth"
_LOCAL_NPIPE = "npipe:////./pipe/"
DEFAULT_DESCRIPTION = "Berth helper VM"


class DockerContextError(BerthError):
    """The docker context store could not be read or written."""


def docker_config_dir(environ: dict[str, str] | None = None) -> Path:
    """Where the docker CLI keeps its config: ``$DOCKER_CONFIG`` or ``~/.docker``."""
    env = os.environ if environ is None else environ
    configured = env.get("DOCKER_CONFIG")
    if configured:
        return Path(configured)
    return Path.home() / ".docker"


def context_dir(name: str, config_dir: Path | None = None) -> Path:
    """The directory holding ``meta.json`` for context ``name``."""
    base = docker_config_dir() if config_dir is None else config_dir
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return base / "contexts" / "meta" / digest


def _tls_dir(name: str, config_dir: Path) -> Path:
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return config_dir / "contexts" / "tls" / digest


def engine_host_url(socket_path: Path, pipe_name: str | None = None) -> str:
    """The ``DOCKER_HOST`` / context host of Berth's engine endpoint.

    ``unix:///path/docker.sock``, or with ``pipe_name`` (Windows: ``\\\\.\\pipe\\x``)
    ``npipe:////./pipe/x``.
    """
    if pipe_name is not None:
        return pipe_url(pipe_name)
    return f"unix://{socket_path}"


def _write_json_atomic(path: Path, data: dict[str, Any], mode: int) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:  # Windows (Python < 3.13): only the read-only bit exists; the profile is private
            os.chmod(tmp, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DockerContextError(
            f"cannot read {path}: {exc.strerror}", "check the file's permissions"
        ) from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DockerContextError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})",
            "fix or remove the file; the docker CLI cannot read it either",
        ) from exc
    if not isinstance(data, dict):
        raise DockerContextError(
            f"{path} does not hold a JSON object", "fix or remove the file"
        )
    return data


def _check_host(host: str) -> None:
    # The engine must never be reached over TCP (DESIGN.md section 7), nor over a pipe on
    # another computer (npipe:////server/pipe/x goes over SMB): only the local "." host.
    if not host.startswith(("unix://", _LOCAL_NPIPE)):
        raise InputError(
            f"the berth context must point at a local socket, not {host!r}",
            f"pass unix:///path/to/docker.sock (or {_LOCAL_NPIPE}NAME on Windows)",
        )


def write_context(
    socket_url: str,
    *,
    name: str = CONTEXT_NAME,
    description: str = DEFAULT_DESCRIPTION,
    config_dir: Path | None = None,
) -> Path:
    """Create or update context ``name`` pointing at ``socket_url``; return meta.json's path.

    Metadata keys other than ``Description`` that someone added are kept; the docker
    endpoint is replaced. ``currentContext`` is not touched.
    """
    _check_host(socket_url)
    base = docker_config_dir() if config_dir is None else config_dir
    meta_path = context_dir(name, base) / "meta.json"
    existing = _read_json(meta_path) or {}
    metadata = existing.get("Metadata")
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    metadata["Description"] = description
    endpoints = existing.get("Endpoints")
    endpoints = dict(endpoints) if isinstance(endpoints, dict) else {}
    endpoints["docker"] = {"Host": socket_url, "SkipTLSVerify": False}
    meta = {"Name": name, "Metadata": metadata, "Endpoints": endpoints}
    # 0644 like the docker CLI's own files: the path of a 0600 socket is no secret.
    _write_json_atomic(meta_path, meta, 0o644)
    return meta_path


def read_context_host(name: str = CONTEXT_NAME, config_dir: Path | None = None) -> str | None:
    """The docker endpoint host of context ``name``, or None if it does not exist."""
    meta = _read_json(context_dir(name, config_dir) / "meta.json")
    if not meta:
        return None
    host = meta.get("Endpoints", {}).get("docker", {}).get("Host")
    return host if isinstance(host, str) else None


def current_context(config_dir: Path | None = None) -> str | None:
    """``currentContext`` from the CLI's config.json (None means the default context)."""
    base = docker_config_dir() if config_dir is None else config_dir
    config = _read_json(base / "config.json") or {}
    value = config.get("currentContext")
    return value if isinstance(value, str) and value else None


def use_context(name: str | None, config_dir: Path | None = None) -> None:
    """Make ``name`` the CLI's current context (None: back to ``default``).

    Only on the user's explicit request. Every other key of config.json (auths, plugins,
    proxies...) is kept, and its mode is kept too (it may hold credentials).
    """
    base = docker_config_dir() if config_dir is None else config_dir
    path = base / "config.json"
    config = _read_json(path) or {}
    if name is None or name == "default":
        config.pop("currentContext", None)
    else:
        if read_context_host(name, base) is None:
            raise DockerContextError(
                f"there is no docker context named {name!r}",
                "start the machine first so Berth can create it",
            )
        config["currentContext"] = name
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    _write_json_atomic(path, config, mode)


def remove_context(
    name: str = CONTEXT_NAME, *, config_dir: Path | None = None, reset_current: bool = False
) -> bool:
    """Delete context ``name`` (on machine delete). Returns False if it did not exist.

    If it is the CLI's current context, the docker CLI would fail on every command after
    the removal, so, like ``docker context rm``, this refuses unless ``reset_current`` is
    given, which switches the CLI back to the default context first.
    """
    base = docker_config_dir() if config_dir is None else config_dir
    if current_context(base) == name:
        if not reset_current:
            raise DockerContextError(
                f"the docker context {name!r} is the docker CLI's current context",
                "run `docker context use default` first, or confirm resetting it",
            )
        use_context(None, base)
    meta = context_dir(name, base)
    existed = meta.exists()
    shutil.rmtree(meta, ignore_errors=True)
    shutil.rmtree(_tls_dir(name, base), ignore_errors=True)
    return existed
