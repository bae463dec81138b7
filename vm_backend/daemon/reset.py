"""Reset a helper VM to its factory state, keeping or dropping its data disk.

berthd has no "reset" method; a reset is composed from the ones it has, so the window and
the CLI can share it without a protocol change:

* drop the data: ``machine.rm`` (stop, remove every file), then ``machine.init`` with the
  same spec: a new, empty data disk and fresh keys;
* keep the data: ``machine.stop``, then remove every file of the machine except
  ``data.qcow2`` (under the machine's flock, so no start can run meanwhile), then
  ``machine.init`` with the same spec. ``Machine.create`` finds the disk present and
  leaves it alone, so images and volumes survive while keys, logs, run records and the
  spec file are new.

No Qt here: this runs on a worker thread of the window, or in the CLI.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from vm_backend.errors import BerthError
from vm_backend.machine.lock import MachineLock
from vm_backend.machine.paths import MachinePaths

#: Files that survive a reset that keeps the data. The lock file is only an flock target
#: (no state); it is held while the others are removed, so it stays too.
KEPT_WITH_DATA = frozenset({"data.qcow2", "lock"})
STOP_TIMEOUT_S = 30.0
LOCK_TIMEOUT_S = 60.0


class ResetError(BerthError):
    """The reset could not finish; the message says how far it got."""


class MachineCaller(Protocol):
    """What a reset needs from a berthd client (``DaemonClient`` fits)."""

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = 900.0,
    ) -> Any: ...


def remove_all_but_data(paths: MachinePaths) -> list[str]:
    """Delete the machine's files except the data disk; the names removed, sorted."""
    removed: list[str] = []
    with MachineLock(paths.lock_file, LOCK_TIMEOUT_S):
        for entry in sorted(paths.state_dir.iterdir()):
            if entry.name in KEPT_WITH_DATA:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
        # A run dir kept outside the state dir (long paths) holds only sockets and a pid
        # file, stale once QEMU is stopped.
        if paths.run_dir.parent != paths.state_dir:
            shutil.rmtree(paths.run_dir, ignore_errors=True)
    return removed


def reset_machine(
    client: MachineCaller, name: str, *, keep_data: bool, home: Path | None = None
) -> dict[str, Any]:
    """Reset machine ``name`` to factory state; returns the re-created spec (JSON form)."""
    spec = client.call("machine.spec", {"name": name})
    if not isinstance(spec, dict):
        raise ResetError(f"berthd returned no settings for machine {name!r}.", "")
    if keep_data:
        client.call("machine.stop", {"name": name, "timeout": STOP_TIMEOUT_S})
        paths = MachinePaths.for_machine(name, home)
        if not paths.data_disk.exists():
            raise ResetError(
                f"Machine {name!r} has no data disk to keep.",
                "Reset it without keeping the data instead.",
            )
        remove_all_but_data(paths)
    else:
        client.call("machine.rm", {"name": name})
    params = {k: v for k, v in spec.items() if k != "version"}
    params["name"] = name
    try:
        created = client.call("machine.init", params)
    except BerthError as err:
        raise ResetError(
            f"The machine was cleared but could not be created again: {err.message}",
            err.hint or "Create it again from the Machine page or with: berth machine init",
        ) from err
    if not isinstance(created, dict):
        raise ResetError(f"berthd returned no settings for machine {name!r}.", "")
    return created
