"""``sluicegate.client``: an httpx transport (sync and async) that cooperates with the gateway.

It honours ``retry-after-ms`` / ``Retry-After``, stops retrying on ``x-should-retry: false`` or
when ``x-ratelimit-retry-budget`` says 0, backs off with full jitter otherwise, marks retries with
``x-stainless-retry-count`` (so the gateway's retry budget sees them), and keeps a circuit
breaker per upstream route with a degradation callback. See ``docs/client.md``.

Plug it into an SDK (and switch the SDK's own retries off)::

    client = openai.OpenAI(
        base_url=..., max_retries=0,
        http_client=httpx.Client(transport=SluicegateTransport()),
    )
"""

from sluicegate.client.breaker import (
    BreakerPolicy,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    OpenCircuit,
    RouteKey,
    Ticket,
    default_is_failure,
)
from sluicegate.client.retry import (
    RetryBudgetTracker,
    RetryPolicy,
    Verdict,
    parse_retry_after,
    retry_verdict,
)
from sluicegate.client.transport import (
    DEGRADED_HEADER,
    RETRY_COUNT_HEADER,
    AsyncOnOpen,
    AsyncSluicegateTransport,
    CircuitOpenError,
    Degradation,
    OnOpen,
    RequestDeferred,
    SluicegateTransport,
    switch_model,
)

__all__ = [
    "DEGRADED_HEADER",
    "RETRY_COUNT_HEADER",
    "AsyncOnOpen",
    "AsyncSluicegateTransport",
    "BreakerPolicy",
    "BreakerRegistry",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "Degradation",
    "OnOpen",
    "OpenCircuit",
    "RequestDeferred",
    "RetryBudgetTracker",
    "RetryPolicy",
    "RouteKey",
    "SluicegateTransport",
    "Ticket",
    "Verdict",
    "default_is_failure",
    "parse_retry_after",
    "retry_verdict",
    "switch_model",
]
