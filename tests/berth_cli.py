"""Run the installed-tree `berth` CLI as a user would, against its own BERTH_HOME and a
private docker config (so the `berth` context never touches the user's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_berth(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vm_backend.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "BERTH_HOME": str(home), "DOCKER_CONFIG": str(home / "docker")},
    )
