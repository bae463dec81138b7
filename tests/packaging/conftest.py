"""Packaging tests: the ``packaging`` ones (build the .deb, install it in a clean root, boot
its guest image) only run when asked for with ``-m packaging``; the recipe checks in
test_recipes.py are fast and always run."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "packaging" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow packaging check: run with -m packaging "
                                   "(docs/packaging.md)")
    for item in items:
        if item.get_closest_marker("packaging"):
            item.add_marker(skip)
