"""Shared fixtures. The ``store`` fixture is parametrized over every store kind (memory, Redis,
Redis Cluster), so one contract suite (``test_store_contract.py``) proves they agree.

Redis fixtures start their own ``redis-server`` processes on free ports (never the system's
6379) and stop them at the end of the session; see ``tests/redis_servers.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluicegate.stores import Store
from tests.redis_servers import (  # noqa: F401 - fixtures for every test module
    STORE_KINDS,
    make_test_store,
    redis_cluster,
    redis_cluster_factory,
    redis_server,
    redis_server_factory,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh, empty store of each kind, on the caller's clock."""
    s: Store = await make_test_store(request.param, request)
    yield s
    await s.aclose()
