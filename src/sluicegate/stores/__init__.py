"""State backends. Every store implements :class:`sluicegate.stores.base.Store`.

Redis stores are imported lazily (``sluicegate.stores.RedisStore``), so the core imports without
redis-py installed.
"""

from sluicegate.stores.base import (
    Algorithm,
    Batch,
    BatchResult,
    BucketOp,
    BucketResult,
    Limit,
    Reservation,
    SettleResult,
    SettleStatus,
    Store,
)
from sluicegate.stores.failover import FailoverCounters, FailoverStore, FailureMode
from sluicegate.stores.memory import MemoryStore
from sluicegate.stores.url import StoreURL, open_store, parse_store_url

__all__ = [
    "Algorithm",
    "Batch",
    "BatchResult",
    "BucketOp",
    "BucketResult",
    "FailoverCounters",
    "FailoverStore",
    "FailureMode",
    "Limit",
    "MemoryStore",
    "RedisClusterStore",
    "RedisStore",
    "Reservation",
    "SettleResult",
    "SettleStatus",
    "Store",
    "StoreURL",
    "open_store",
    "parse_store_url",
]


def __getattr__(name: str) -> object:
    if name == "RedisStore":
        from sluicegate.stores.redis import RedisStore

        return RedisStore
    if name == "RedisClusterStore":
        from sluicegate.stores.redis_cluster import RedisClusterStore

        return RedisClusterStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
