"""Engine errors: what the engine said, in words a user can act on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import docker.errors
import paramiko
import requests.exceptions

from vm_backend.errors import BerthError

T = TypeVar("T")


class EngineError(BerthError):
    """The engine refused or failed a request."""

    def __init__(self, message: str, hint: str = "", status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


class EngineUnavailable(EngineError):
    """The engine does not answer (stopped, crashed, socket gone)."""


class NotFound(EngineError):
    """The object named does not exist (any more)."""


class Conflict(EngineError):
    """The object is in a state that forbids the request (in use, name taken...)."""


def _explanation(err: docker.errors.APIError) -> str:
    text = err.explanation
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text or err).strip()


def translate(err: BaseException, doing: str) -> EngineError:
    """Turn a docker-py/requests error into an EngineError that says what to do."""
    if isinstance(err, EngineError):
        return err
    if isinstance(err, docker.errors.NotFound):
        return NotFound(
            f"{doing}: {_explanation(err)}", "Check the name or id; it may have been removed.", 404
        )
    if isinstance(err, docker.errors.APIError):
        status = err.status_code
        text = _explanation(err)
        if status == 409:
            return Conflict(f"{doing}: {text}", "Stop or remove what uses it first.", 409)
        if status == 304:
            return EngineError(f"{doing}: nothing to do (already in that state).", "", 304)
        hint = "The engine refused the request; its message says why."
        return EngineError(f"{doing}: {text}", hint, status)
    if isinstance(err, docker.errors.ImageNotFound):
        return NotFound(f"{doing}: image not found", "Pull or build the image first.", 404)
    if isinstance(
        err,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | ConnectionError
        | FileNotFoundError
        | TimeoutError,
    ):
        return EngineUnavailable(
            f"{doing}: the engine does not answer ({type(err).__name__})",
            "Check that the engine is running (berth engines), then retry.",
        )
    if isinstance(err, paramiko.SSHException):
        return EngineUnavailable(
            f"{doing}: SSH to the engine's host failed: {err}",
            "Check the host is in known_hosts and your key is authorised there.",
        )
    if isinstance(err, docker.errors.DockerException):
        return EngineError(f"{doing}: {err}", "")
    return EngineError(f"{doing}: {type(err).__name__}: {err}", "")


@contextmanager
def engine_call(doing: str) -> Iterator[None]:
    """Run a block, translating any engine/transport failure into an EngineError."""
    try:
        yield
    except EngineError:
        raise
    except (
        docker.errors.DockerException,
        requests.exceptions.RequestException,
        OSError,
        paramiko.SSHException,
    ) as err:
        raise translate(err, doing) from err


def call(doing: str, fn: Callable[[], T]) -> T:
    with engine_call(doing):
        return fn()
