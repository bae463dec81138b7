"""Fixtures shared by berthd's unit tests (unix socket and named-pipe servers)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private BERTH_HOME for the daemon under test."""
    h = tmp_path / "home"
    monkeypatch.setenv("BERTH_HOME", str(h))
    return h
