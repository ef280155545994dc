"""State backends. Every store implements :class:`sluicegate.stores.base.Store`."""

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
from sluicegate.stores.memory import MemoryStore

__all__ = [
    "Algorithm",
    "Batch",
    "BatchResult",
    "BucketOp",
    "BucketResult",
    "Limit",
    "MemoryStore",
    "Reservation",
    "SettleResult",
    "SettleStatus",
    "Store",
]
