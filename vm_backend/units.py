"""Sizes as people read them (decimal units, like the docker CLI)."""

from __future__ import annotations


def human_size(n: int) -> str:
    """Bytes as a short text: ``0 B``, ``1.5 kB``, ``2.0 GB``; "" for unknown (< 0)."""
    if n < 0:
        return ""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
