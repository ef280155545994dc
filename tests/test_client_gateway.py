"""``sluicegate.client`` end to end: the real ``openai`` SDK (its own retries off) through the
transport, against a real gateway and mock upstream on free loopback ports.

The gateway runs on a ``VirtualClock``; the transport's injected sleep records each wait and
advances that clock by it, so "waited per Retry-After" is checked exactly and nothing sleeps on
the wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sluicegate.client import (
    AsyncSluicegateTransport,
    BreakerPolicy,
    BreakerState,
    CircuitOpenError,
    OpenCircuit,
    RetryPolicy,
    RouteKey,
    SluicegateTransport,
    switch_model,
)
from sluicegate.clock import VirtualClock
from sluicegate.gateway.server import GatewayServer
from tests.gateway_helpers import free_port, mock_server, running_gateway, write_policy

# Agent "planner": 1 request/s with a burst of 2; retry budget 0.2/s x 10 s = 2 retries.
LIMITS = """\
retry_budget: {percent: 0, min_per_second: 0.2, ttl: 10s}
tiers:
  pro:
    tenant:  {requests: 100000/min, burst: 10000, tokens: 100M/min}
    agent:   {requests: 60/min, burst: 2, tokens: 100M/min}
    session: {requests: 100000/min, burst: 10000, tokens: 100M/min}
tenants:
  acme: {tier: pro}
pools:
  openai: {requests: 1M/min, tokens: 1000M/min}
"""
MSG: Any = [{"role": "user", "content": "Say hi."}]
FALLBACK = {
    "id": "fallback",
    "object": "chat.completion",
    "created": 0,
    "model": "cache",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "cached answer"},
        }
    ],
}


class Recorder(httpx.AsyncBaseTransport):
    """The real network transport, recording what went over the wire."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.log: list[tuple[str | None, int, httpx.Headers]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        count = request.headers.get("x-stainless-retry-count")
        self.log.append((count, response.status_code, response.headers))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def statuses(self) -> list[int]:
        return [s for _, s, _ in self.log]

    @property
    def counts(self) -> list[str | None]:
        return [c for c, _, _ in self.log]


class Waits:
    """Injected sleep: records each wait and moves the gateway's virtual clock by it."""

    def __init__(self, clock: VirtualClock, advance: bool = True) -> None:
        self.clock = clock
        self.advance = advance
        self.delays: list[float] = []

    def sync(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.advance:
            self.clock.advance(seconds)

    async def __call__(self, seconds: float) -> None:
        self.sync(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def mock() -> AsyncIterator[GatewayServer]:
    async with mock_server() as m:
        yield m


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(1000.0)


@pytest.fixture
async def gw(
    tmp_path: Path, mock: GatewayServer, clock: VirtualClock
) -> AsyncIterator[GatewayServer]:
    policy = write_policy(tmp_path / "p.yaml", mock.mock_url, limits=LIMITS, interactive_wait="0s")
    async with running_gateway(policy, clock=clock) as server:
        yield server


def sdk(gw: GatewayServer, transport: httpx.AsyncBaseTransport) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gw.url + "/v1",
        api_key="key-acme-planner",
        max_retries=0,  # only the transport retries
        http_client=httpx.AsyncClient(transport=transport),
    )


def transport(
    recorder: Recorder, waits: Waits, clock: VirtualClock, **kw: Any
) -> AsyncSluicegateTransport:
    return AsyncSluicegateTransport(recorder, sleep=waits, clock=clock.now, rng=lambda: 0.5, **kw)


async def chat(client: openai.AsyncOpenAI, model: str = "gpt-4o") -> str | None:
    out = await client.chat.completions.create(model=model, messages=MSG, max_tokens=5)
    return out.choices[0].message.content


async def test_saturated_agent_waits_per_retry_after_then_succeeds(
    gw: GatewayServer, clock: VirtualClock
) -> None:
    rec, waits = Recorder(), Waits(clock)
    async with sdk(gw, transport(rec, waits, clock)) as client:
        for _ in range(3):
            assert await chat(client)
    assert rec.statuses == [200, 200, 429, 200]
    refusal = rec.log[2][2]
    assert waits.delays == [int(refusal["retry-after-ms"]) / 1000] == [1.0]
    # The SDK marks originals "0"; the transport numbers its retry so the gateway budgets it.
    assert rec.counts == ["0", "0", "0", "1"]
    assert rec.log[3][2]["x-ratelimit-retry-budget"] == "1"  # the gateway counted the retry


async def test_retries_stop_when_the_budget_header_says_zero(
    gw: GatewayServer, clock: VirtualClock
) -> None:
    rec, waits = Recorder(), Waits(clock)
    async with sdk(gw, transport(rec, waits, clock)) as client:
        with pytest.raises(openai.RateLimitError) as err:
            for _ in range(10):
                await chat(client)
    last_count, last_status, last_headers = rec.log[-1]
    assert last_status == 429 and last_headers["x-ratelimit-retry-budget"] == "0"
    assert last_count == "0"  # an original refused with budget 0: not retried at all
    assert "x-should-retry" not in last_headers  # the transport stopped before the gateway had to
    assert err.value.response.headers["x-ratelimit-retry-budget"] == "0"
    retries = [c for c in rec.counts if c != "0"]
    assert len(retries) == 2  # exactly the budget: 0.2/s x 10 s
    assert all(d == 1.0 for d in waits.delays)


async def test_x_should_retry_false_stops_the_transport(
    gw: GatewayServer, clock: VirtualClock
) -> None:
    rec, waits = Recorder(), Waits(clock)
    blind = RetryPolicy(honour_retry_budget=False)  # only x-should-retry can stop it now
    async with sdk(gw, transport(rec, waits, clock, retry=blind)) as client:
        with pytest.raises(openai.RateLimitError) as err:
            for _ in range(10):
                await chat(client)
    assert err.value.response.headers["x-should-retry"] == "false"
    count, status, headers = rec.log[-1]
    assert status == 429 and headers["x-should-retry"] == "false" and count != "0"
    assert int(headers["retry-after"]) > 1  # the budget refusal asks for a longer wait
    assert len(waits.delays) == len([c for c in rec.counts if c != "0"])  # no wait after it


async def test_breaker_opens_and_serves_the_fallback_without_the_network(
    gw: GatewayServer, clock: VirtualClock
) -> None:
    rec, waits = Recorder(), Waits(clock, advance=False)  # the limit never recovers
    opened: list[OpenCircuit] = []

    def on_open(request: httpx.Request, circuit: OpenCircuit) -> httpx.Response:
        opened.append(circuit)
        return httpx.Response(200, json=FALLBACK)

    breaker = BreakerPolicy(failure_threshold=2, cooldown=30.0)
    t = transport(rec, waits, clock, breaker=breaker, on_open=on_open)
    async with sdk(gw, t) as client:
        assert await chat(client) != "cached answer"
        assert await chat(client) != "cached answer"
        # 429, wait, retry: 429 again opens the breaker, and the retry loop degrades at once.
        assert await chat(client) == "cached answer"
        assert rec.statuses == [200, 200, 429, 429]
        assert await chat(client) == "cached answer"  # fails fast: nothing sent
        assert len(rec.log) == 4
        route = f"POST 127.0.0.1:{httpx.URL(gw.url).port} /v1/chat/completions"
        assert t.breaker_states() == {route: BreakerState.OPEN}
        assert [c.route for c in opened] == [route, route]
        clock.advance(30.0)  # cooldown over and the limit refilled: the probe closes it
        assert await chat(client) != "cached answer"
        assert t.breaker_states() == {route: BreakerState.CLOSED}
    assert waits.delays == [1.0]  # no second wait: the breaker had opened


async def test_breaker_switches_to_a_cheaper_model_on_upstream_503s(
    gw: GatewayServer, clock: VirtualClock
) -> None:
    rec, waits = Recorder(), Waits(clock)

    def cheaper(request: httpx.Request, circuit: OpenCircuit) -> httpx.Request:
        new = switch_model(request, "gpt-4o-mini")
        del new.headers["x-mock-status"]  # the stand-in for "the big model's upstream is down"
        return new

    breaker = BreakerPolicy(failure_threshold=1, key=RouteKey(by_model=True))
    t = transport(rec, waits, clock, breaker=breaker, on_open=cheaper)
    client = openai.AsyncOpenAI(
        base_url=gw.url + "/v1",
        api_key="key-acme-planner",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=t),
        default_headers={"x-mock-status": "503"},
    )
    async with client:
        out = await client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    assert out.model == "gpt-4o-mini"
    assert rec.statuses == [503, 200]
    # The switch is a retry of the same call: numbered, so the gateway's budget counts it.
    assert rec.counts == ["0", "1"] and rec.log[1][2]["x-ratelimit-retry-budget"] == "1"
    assert waits.delays == []  # the breaker was open: no backoff before degrading


async def test_sync_sdk_in_a_thread(gw: GatewayServer, clock: VirtualClock) -> None:
    waits = Waits(clock)
    seen: list[int] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            seen.append(response.status_code)
            return response

    t = SluicegateTransport(Counting(), sleep=waits.sync, clock=clock.now, rng=lambda: 0.5)

    def run() -> list[str | None]:
        with openai.OpenAI(
            base_url=gw.url + "/v1",
            api_key="key-acme-planner",
            max_retries=0,
            http_client=httpx.Client(transport=t),
        ) as client:
            return [
                client.chat.completions.create(model="m", messages=MSG, max_tokens=3)
                .choices[0]
                .message.content
                for _ in range(3)
            ]

    assert all(await asyncio.to_thread(run))
    assert seen == [200, 200, 429, 200] and waits.delays == [1.0]


async def test_connect_errors_retry_then_open_the_breaker(clock: VirtualClock) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    waits = Waits(clock)
    breaker = BreakerPolicy(failure_threshold=3, cooldown=60.0)
    retry = RetryPolicy(max_retries=5, base_delay=0.1)
    t = AsyncSluicegateTransport(
        sleep=waits, clock=clock.now, rng=lambda: 1.0, retry=retry, breaker=breaker
    )
    client = openai.AsyncOpenAI(
        base_url=dead, api_key="k", max_retries=0, http_client=httpx.AsyncClient(transport=t)
    )
    async with client:
        with pytest.raises(openai.APIConnectionError) as err:
            await client.models.list()
    assert isinstance(err.value.__cause__, CircuitOpenError)
    assert waits.delays == [pytest.approx(0.1), pytest.approx(0.2)]  # then it opened
