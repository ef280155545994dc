"""Shared fixtures. Store fixtures are parametrized so every store runs the same contract suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sluicegate.stores import MemoryStore, Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

StoreFactory = Callable[[], Store]

STORE_KINDS = ["memory"]


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh, empty store of each kind."""
    s: Store = MemoryStore()
    yield s
    await s.aclose()
