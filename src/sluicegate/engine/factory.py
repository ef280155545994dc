"""Build an :class:`Engine` from a policy, opening the store the policy (or an override) names."""

from __future__ import annotations

from sluicegate.clock import Clock
from sluicegate.engine.core import Engine
from sluicegate.policy.resolve import Policy
from sluicegate.stores.url import open_store, parse_store_url


async def open_engine(
    policy: Policy, *, store_url: str | None = None, clock: Clock | None = None
) -> Engine:
    """An engine on ``store_url`` (default: the policy's ``store:``), with the policy's
    ``store_options`` (failure mode, replicas, timeout, backoff) applied to shared stores.

    Raises ``ConfigurationError`` for a bad URL and ``StoreUnavailable`` when the store cannot
    be reached, each with one clear line.
    """
    url = store_url or policy.store_url
    if parse_store_url(url).kind == "memory":
        return Engine(policy, await open_store(url), clock)
    opts = policy.spec.store_options
    store = await open_store(
        url,
        failure_mode=opts.failure_mode,
        replicas=opts.replicas,
        timeout=opts.timeout,
        backoff=opts.backoff,
        max_backoff=opts.max_backoff,
    )
    return Engine(policy, store, clock)
