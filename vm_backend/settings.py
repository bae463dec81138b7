"""User settings, persisted as JSON in the platform's config dir (no Qt).

Unknown keys are kept (a newer Berth may have written them); a corrupt file is moved
aside and defaults are used, so a bad file never stops Berth from starting.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vm_backend.paths import config_dir


@dataclass
class Settings:
    theme: str = "system"  # system | light | dark
    start_at_login: bool = False
    confirm_destructive: bool = True
    log_buffer_lines: int = 100_000
    default_engine: str = ""  # endpoint URL; "" = first usable in discovery order
    extra_endpoints: list[str] = field(default_factory=list)
    notify_failures: bool = True
    close_to_tray: bool = True
    _unknown: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def path(cls) -> Path:
        return config_dir() / "settings.json"

    @classmethod
    def load(cls) -> Settings:
        path = cls.path()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError):
            try:
                path.replace(path.with_suffix(".json.corrupt"))
            except OSError:
                pass
            return cls()
        if not isinstance(raw, dict):
            return cls()
        known = {f.name: f for f in fields(cls) if not f.name.startswith("_")}
        values: dict[str, Any] = {}
        unknown: dict[str, Any] = {}
        defaults = cls()
        for key, value in raw.items():
            if key in known:
                default = getattr(defaults, key)
                if isinstance(value, type(default)) and not (
                    isinstance(default, int)
                    and isinstance(value, bool) != isinstance(default, bool)
                ):
                    values[key] = value
            else:
                unknown[key] = value
        settings = cls(**values)
        settings._unknown = unknown
        if settings.theme not in ("system", "light", "dark"):
            settings.theme = "system"
        settings.log_buffer_lines = min(max(settings.log_buffer_lines, 1000), 10_000_000)
        return settings

    def save(self) -> None:
        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        data = {**self._unknown, **data}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".settings.", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
