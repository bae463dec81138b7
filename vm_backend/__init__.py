"""Berth's Qt-free backend: engines, the helper VM, the daemon and the CLI."""

__version__ = "0.1.0"
