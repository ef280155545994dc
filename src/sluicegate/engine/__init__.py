"""The decision engine (no web framework imported here)."""

from sluicegate.engine.core import Engine, ScaleEvent, bucket_prefix, safe_id
from sluicegate.engine.decision import BucketReport, Decision, Outcome, Reason, RequestContext
from sluicegate.engine.factory import open_engine
from sluicegate.engine.identity import (
    AuthError,
    Identity,
    IdentityResolver,
    hash_key,
    make_key_entry,
)

__all__ = [
    "AuthError",
    "Identity",
    "IdentityResolver",
    "hash_key",
    "make_key_entry",
    "BucketReport",
    "Decision",
    "Engine",
    "Outcome",
    "Reason",
    "RequestContext",
    "ScaleEvent",
    "bucket_prefix",
    "open_engine",
    "safe_id",
]
