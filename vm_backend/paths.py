"""Where Berth keeps its files (platformdirs; ``BERTH_HOME`` overrides for tests)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def berth_home() -> Path:
    """Berth's data directory (machines, state). Not created here."""
    override = os.environ.get("BERTH_HOME")
    if override:
        return Path(override)
    return Path(platformdirs.user_data_dir("berth", appauthor=False))


def config_dir() -> Path:
    override = os.environ.get("BERTH_HOME")
    if override:
        return Path(override) / "config"
    return Path(platformdirs.user_config_dir("berth", appauthor=False))


def docker_config_dir() -> Path:
    """The docker CLI's config dir (``DOCKER_CONFIG`` or ``~/.docker``)."""
    override = os.environ.get("DOCKER_CONFIG")
    return Path(override) if override else Path.home() / ".docker"
