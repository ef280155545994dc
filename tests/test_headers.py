"""Header rendering: IETF RateLimit fields, OpenAI x-ratelimit-*, Retry-After."""

from __future__ import annotations

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, RequestContext
from sluicegate.headers import go_duration, quota_window, render_headers
from sluicegate.policy import policy_from_text
from sluicegate.stores import MemoryStore

POLICY = policy_from_text(
    """
version: 1
default_tier: t
tiers:
  t:
    tenant:  {requests: 600/min, burst: 100, tokens: 2M/min}
    session: {requests: 30/min, burst: 3, tokens: 90k/min, tokens_burst: 9000}
"""
)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (0.0004, "1ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"),
     (61.2, "1m1.2s"), (3723, "1h2m3s"), (59.9999, "1m0s")],
)  # fmt: skip
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


async def test_headers_allowed_and_refused() -> None:
    engine = Engine(POLICY, MemoryStore(), VirtualClock(0))
    ctx = RequestContext("x", "a", "s", workload_class="realtime", tokens=3000)
    d = await engine.decide(ctx)
    h = dict(render_headers(d))
    assert h["ratelimit-policy"] == (
        '"tenant-requests";q=600;w=60, "tenant-tokens";q=2000000;w=60;qu="tokens", '
        '"session-requests";q=30;w=60, "session-tokens";q=90000;w=60;qu="tokens"'
    )
    assert h["ratelimit"] == (
        '"tenant-requests";r=99;t=1, "tenant-tokens";r=1997000;t=1, '
        '"session-requests";r=2;t=2, "session-tokens";r=6000;t=2'
    )
    # OpenAI headers describe the tightest bucket of each axis.
    assert h["x-ratelimit-limit-requests"] == "3"
    assert h["x-ratelimit-remaining-requests"] == "2"
    assert h["x-ratelimit-reset-requests"] == "2s"
    assert h["x-ratelimit-limit-tokens"] == "9000"
    assert h["x-ratelimit-remaining-tokens"] == "6000"
    assert h["x-ratelimit-reset-tokens"] == "2s"
    assert "retry-after" not in h
    await engine.decide(ctx)
    await engine.decide(ctx)
    refused = await engine.decide(ctx)
    h = dict(render_headers(refused))
    assert h["retry-after"] == "2" and h["retry-after-ms"] == "2000"
    assert h["x-ratelimit-remaining-requests"] == "0"


async def test_retry_after_is_at_least_one_second() -> None:
    policy = policy_from_text(
        "version: 1\ndefault_tier: t\ntiers:\n  t: {agent: {requests: 10/s, burst: 1}}\n"
    )
    engine = Engine(policy, MemoryStore(), VirtualClock(0))
    ctx = RequestContext("x", "a", workload_class="realtime")
    await engine.decide(ctx)
    h = dict(render_headers(await engine.decide(ctx)))
    assert h["retry-after"] == "1" and h["retry-after-ms"] == "100"


async def test_never_fitting_cost_has_no_retry_after() -> None:
    engine = Engine(POLICY, MemoryStore(), VirtualClock(0))
    d = await engine.decide(RequestContext("x", "a", "s", workload_class="realtime", tokens=10_000))
    h = dict(render_headers(d))
    assert not d.allowed and "retry-after" not in h


@pytest.mark.parametrize(
    ("count", "period", "qw"),
    [(600, 60, (600, 60)), (7.5, 60, (15, 120)), (10, 0.1, (100, 1)), (2.5, 1, (5, 2)),
     (1 / 3, 1, (1, 3)), (1 / 7, 1, (0, 1)), (2e6, 60, (2000000, 60))],
)  # fmt: skip
def test_quota_window_is_integral(count: float, period: float, qw: tuple[int, int]) -> None:
    assert quota_window(count, period) == qw
