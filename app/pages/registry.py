"""The window's page registry: other modules add sidebar pages without touching the window.

A page module calls :func:`register_page` at import time::

    from app.pages.registry import register_page

    register_page("images", "Images", ImagesPage)   # ImagesPage(ctx: AppContext) -> QWidget

A real page registered under a key that holds a placeholder replaces the placeholder,
also when the window already exists (the window subscribes to registrations). Page
modules are found by :func:`load_page_modules`, which imports the well-known module names
below when they exist, so a new page only needs its own module file.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QWidget

if TYPE_CHECKING:
    from app.context import AppContext

log = logging.getLogger(__name__)

PageFactory = Callable[["AppContext"], QWidget]

# Sidebar order of the pages we know will exist; anything else goes after them.
KNOWN_ORDER = {
    "containers": 10,
    "compose": 15,
    "images": 20,
    "volumes": 30,
    "networks": 40,
    "disk": 50,
    "events": 60,
    "engines": 70,
    "machine": 80,
    "settings": 90,
}

# Modules that register pages when imported. Missing ones are simply not built yet.
PAGE_MODULES = (
    "app.pages.containers",
    "app.pages.compose",
    "app.pages.images",
    "app.pages.volumes",
    "app.pages.networks",
    "app.pages.disk",
    "app.pages.events",
    "app.pages.engines",
    "app.pages.machine",
    "app.pages.settings",
    "app.pages.details.panel",
)


@dataclass(frozen=True)
class PageSpec:
    key: str
    title: str
    factory: PageFactory
    icon: str = ""
    order: int = 100
    placeholder: bool = False


_pages: dict[str, PageSpec] = {}
_listeners: list[Callable[[PageSpec], None]] = []


def register_page(
    key: str,
    title: str,
    factory: PageFactory,
    icon: str = "",
    *,
    order: int | None = None,
    placeholder: bool = False,
) -> None:
    """Add (or replace) the sidebar page ``key``.

    ``factory(ctx)`` builds the page widget the first time the page is shown. ``icon`` is
    a freedesktop icon-theme name or a file path. A placeholder never replaces a real page.
    """
    current = _pages.get(key)
    if placeholder and current is not None and not current.placeholder:
        return
    spec = PageSpec(
        key,
        title,
        factory,
        icon,
        KNOWN_ORDER.get(key, 100) if order is None else order,
        placeholder,
    )
    _pages[key] = spec
    for listener in list(_listeners):
        listener(spec)


def unregister_page(key: str) -> None:
    """Forget a page (tests use this to restore the registry)."""
    _pages.pop(key, None)


def pages() -> list[PageSpec]:
    """Registered pages in sidebar order."""
    return sorted(_pages.values(), key=lambda s: (s.order, s.title))


def page(key: str) -> PageSpec | None:
    return _pages.get(key)


def subscribe(listener: Callable[[PageSpec], None]) -> Callable[[], None]:
    """Call ``listener(spec)`` on every later registration; returns an unsubscribe."""
    _listeners.append(listener)

    def unsubscribe() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return unsubscribe


def load_page_modules(names: tuple[str, ...] = PAGE_MODULES) -> None:
    """Import the page modules that exist; a module that is absent is not an error.

    Only the absence of the module itself is tolerated: an ImportError raised *inside* an
    existing page module is a bug and is logged with its traceback, not hidden.
    """
    from app.pages import placeholder

    placeholder.register_placeholders()
    for name in names:
        load_page_module(name)


def load_page_module(name: str) -> None:
    """Import one page module (see :func:`load_page_modules`); errors are logged."""
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            log.exception("page module %s failed to import", name)
    except Exception:  # one broken page must not stop the window
        log.exception("page module %s failed to import", name)
