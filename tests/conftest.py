"""Test tiers: tests/unit (core maths, no ComfyUI),
tests/integration (the real ComfyUI in-process, tiny model), tests/e2e (the real server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerfusion_dev.pack import import_pack

TIERS = {"unit": "unit", "integration": "integration", "e2e": "e2e"}

import_pack()  # makes `layerfusion.*` importable in every test module


ORDER = ("unit", "integration", "e2e")  # the quickest first; the tier-3 server starts meanwhile (tests/e2e/conftest.py)


def tier_of(item: pytest.Item) -> str:
    return Path(str(item.fspath)).parent.name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, TIERS[tier]))
    items.sort(key=lambda item: ORDER.index(tier_of(item)) if tier_of(item) in ORDER else len(ORDER))  # stable
