"""``sluicegate.asgi.RateLimitMiddleware``: the engine in-process for Starlette / FastAPI apps.

Re-exported from :mod:`sluicegate.integrations.asgi` (needs no web framework to import; the
middleware is pure ASGI).
"""

from sluicegate.integrations.asgi import (
    Identity,
    IdentityExtractor,
    RateLimitMiddleware,
    api_key_identity,
)
from sluicegate.integrations.common import KeyIdentity, key_digest

__all__ = [
    "Identity",
    "IdentityExtractor",
    "KeyIdentity",
    "RateLimitMiddleware",
    "api_key_identity",
    "key_digest",
]
