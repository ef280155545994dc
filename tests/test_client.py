"""``sluicegate.client`` logic with a fake inner transport and a fake clock: no network, no
wall-clock sleeps. End-to-end tests against a real gateway are in ``test_client_gateway.py``."""

from __future__ import annotations

import asyncio
import email.utils
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from sluicegate.client import (
    DEGRADED_HEADER,
    AsyncSluicegateTransport,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    OpenCircuit,
    RequestDeferred,
    RetryPolicy,
    RouteKey,
    SluicegateTransport,
    Ticket,
    parse_retry_after,
    switch_model,
)

URL = "http://gw.test/v1/chat/completions"
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class FakeTime:
    """A monotonic clock that moves only when the transport sleeps (or a test advances it)."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@dataclass
class Upstream:
    """A scripted upstream: pops one reply per call (the last one repeats), records requests."""

    replies: list[Callable[[httpx.Request], httpx.Response]]
    seen: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return reply(request)

    @property
    def counts(self) -> list[str | None]:
        return [r.headers.get("x-stainless-retry-count") for r in self.seen]


def status(code: int, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    return lambda request: httpx.Response(code, headers=hdrs, json={"status": code})


def fail(exc: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def raise_(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    return raise_


OK = status(200, x_ratelimit_retry_budget="5")
NO_BREAKER = BreakerPolicy(failure_threshold=1000)


def make(
    upstream: Upstream,
    t: FakeTime,
    *,
    retry: RetryPolicy | None = None,
    breaker: BreakerPolicy = NO_BREAKER,
    **kw: object,
) -> httpx.Client:
    transport = SluicegateTransport(
        httpx.MockTransport(upstream),
        retry=retry,
        breaker=breaker,
        sleep=t.sleep,
        clock=t.clock,
        wall_clock=lambda: 1_700_000_000.0,
        rng=lambda: 0.5,
        **kw,  # type: ignore[arg-type]
    )
    return httpx.Client(transport=transport)


# --- Retry-After parsing -------------------------------------------------------------------


def test_parse_retry_after_prefers_ms_then_seconds_then_http_date() -> None:
    wall = 1_700_000_000.0
    h = httpx.Headers
    assert parse_retry_after(h({"retry-after-ms": "1500", "retry-after": "9"}), wall) == 1.5
    assert parse_retry_after(h({"retry-after-ms": "junk", "retry-after": "2"}), wall) == 2.0
    assert parse_retry_after(h({"retry-after": "0.25"}), wall) == 0.25
    date = email.utils.formatdate(wall + 7, usegmt=True)
    assert parse_retry_after(h({"retry-after": date}), wall) == pytest.approx(7.0)
    past = email.utils.formatdate(wall - 30, usegmt=True)
    assert parse_retry_after(h({"retry-after": past}), wall) == 0.0
    assert parse_retry_after(h({"retry-after": "-3"}), wall) == 0.0
    assert parse_retry_after(h({"retry-after": "soon"}), wall) is None
    assert parse_retry_after(h({"retry-after": "inf"}), wall) is None
    assert parse_retry_after(h(), wall) is None


def test_policies_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        BreakerPolicy(failure_threshold=0)
    with pytest.raises(ValueError):
        BreakerPolicy(failure_rate=1.5)


# --- retries ---------------------------------------------------------------------------------


def test_429_waits_per_retry_after_ms_and_marks_retries() -> None:
    t = FakeTime()
    up = Upstream(
        [status(429, retry_after_ms="1200", retry_after="2"), status(429, retry_after="3"), OK]
    )
    with make(up, t) as client:
        r = client.post(URL, json=BODY)
    assert r.status_code == 200
    assert t.slept == [1.2, 3.0]
    assert up.counts == [None, "1", "2"]
    assert all(json.loads(req.content) == BODY for req in up.seen)  # body resent intact


def test_sdk_retry_count_is_continued_not_reset() -> None:
    t = FakeTime()
    up = Upstream([status(503), OK])
    with make(up, t) as client:
        client.post(URL, json=BODY, headers={"x-stainless-retry-count": "0"})
    assert up.counts == ["0", "1"]


def test_retry_after_is_capped() -> None:
    t = FakeTime()
    up = Upstream([status(429, retry_after="3600"), OK])
    with make(up, t, retry=RetryPolicy(max_retry_after=5.0)) as client:
        assert client.post(URL, json=BODY).status_code == 200
    assert t.slept == [5.0]


def test_full_jitter_backoff_without_a_hint() -> None:
    t = FakeTime()
    up = Upstream([status(503)])
    policy = RetryPolicy(max_retries=4, base_delay=0.5, max_backoff=1.5)
    with make(up, t, retry=policy) as client:
        r = client.post(URL, json=BODY)
    assert r.status_code == 503  # the last refusal is handed back, readable
    assert r.json() == {"status": 503}
    # rng() = 0.5 of min(max_backoff, base * 2**(n-1))
    assert t.slept == [0.25, 0.5, 0.75, 0.75]
    assert len(up.seen) == 5


def test_jitter_uses_the_injected_rng() -> None:
    draws = iter([0.0, 1.0])
    t = FakeTime()
    up = Upstream([status(503), status(503), OK])
    transport = SluicegateTransport(
        httpx.MockTransport(up), sleep=t.sleep, clock=t.clock, rng=lambda: next(draws)
    )
    with httpx.Client(transport=transport) as client:
        client.get(URL)
    assert t.slept == [0.0, 1.0]


def test_non_retryable_status_is_returned_at_once() -> None:
    t = FakeTime()
    up = Upstream([status(400), OK])
    with make(up, t) as client:
        assert client.post(URL, json=BODY).status_code == 400
    assert t.slept == [] and len(up.seen) == 1


def test_x_should_retry_false_stops_and_true_forces() -> None:
    t = FakeTime()
    up = Upstream([status(429, retry_after="1", x_should_retry="false"), OK])
    with make(up, t) as client:
        assert client.post(URL, json=BODY).status_code == 429
    assert len(up.seen) == 1 and t.slept == []

    up = Upstream([status(500, x_should_retry="true", retry_after="1"), OK])
    with make(up, t) as client:
        assert client.post(URL, json=BODY).status_code == 200


def test_budget_zero_on_the_refusal_stops() -> None:
    t = FakeTime()
    up = Upstream([status(429, retry_after="1", x_ratelimit_retry_budget="0"), OK])
    with make(up, t) as client:
        assert client.post(URL, json=BODY).status_code == 429
    assert len(up.seen) == 1


def test_last_seen_budget_from_another_call_stops_a_connect_retry() -> None:
    t = FakeTime()
    up = Upstream([status(200, x_ratelimit_retry_budget="0"), fail(httpx.ConnectError), OK])
    with make(up, t) as client:
        client.get(URL)
        with pytest.raises(httpx.ConnectError):
            client.get(URL)
        assert len(up.seen) == 2
        # A reading older than budget_memory (10 s) no longer blocks: the gateway has refilled.
        up.replies = [fail(httpx.ConnectError), OK]
        t.now += 10.5
        assert client.get(URL).status_code == 200
    assert len(up.seen) == 4


def test_connect_errors_are_retried_other_transport_errors_are_not() -> None:
    t = FakeTime()
    up = Upstream([fail(httpx.ConnectError), fail(httpx.ConnectTimeout), OK])
    with make(up, t) as client:
        assert client.post(URL, json=BODY).status_code == 200
    assert up.counts == [None, "1", "2"]

    up = Upstream([fail(httpx.ReadTimeout), OK])
    with make(up, t) as client, pytest.raises(httpx.ReadTimeout):
        client.post(URL, json=BODY)
    assert len(up.seen) == 1


def test_max_retries_zero_never_retries() -> None:
    t = FakeTime()
    up = Upstream([status(429, retry_after="1"), OK])
    with make(up, t, retry=RetryPolicy(max_retries=0)) as client:
        assert client.get(URL).status_code == 429


# --- circuit breaker ---------------------------------------------------------------------------


FALLBACK = {"choices": [{"message": {"role": "assistant", "content": "cached answer"}}]}


def test_breaker_opens_and_fails_fast_without_network() -> None:
    t = FakeTime()
    up = Upstream([status(500)])
    breaker = BreakerPolicy(failure_threshold=3, cooldown=10.0)
    with make(up, t, retry=RetryPolicy(max_retries=0), breaker=breaker) as client:
        for _ in range(3):
            assert client.post(URL, json=BODY).status_code == 500
        with pytest.raises(CircuitOpenError) as err:
            client.post(URL, json=BODY)
        assert err.value.circuit.state is BreakerState.OPEN
        assert err.value.circuit.retry_in == pytest.approx(10.0)
        # Another route is unaffected.
        client.get("http://gw.test/v1/models")
        assert client._transport.breaker_states() == {  # type: ignore[attr-defined]
            "POST gw.test /v1/chat/completions": BreakerState.OPEN,
            "GET gw.test /v1/models": BreakerState.CLOSED,
        }
    assert len(up.seen) == 4


def test_open_breaker_stops_a_retry_loop_and_serves_the_fallback() -> None:
    t = FakeTime()
    up = Upstream([status(429, retry_after="1")])
    calls: list[OpenCircuit] = []

    def on_open(request: httpx.Request, circuit: OpenCircuit) -> httpx.Response:
        calls.append(circuit)
        return httpx.Response(200, json=FALLBACK)

    breaker = BreakerPolicy(failure_threshold=2, cooldown=30.0)
    with make(up, t, breaker=breaker, on_open=on_open) as client:
        r = client.post(URL, json=BODY)
    assert r.status_code == 200 and r.json() == FALLBACK
    assert r.headers[DEGRADED_HEADER] == "fallback"
    assert len(up.seen) == 2 and t.slept == [1.0]  # no wait once the breaker opened
    assert [c.route for c in calls] == ["POST gw.test /v1/chat/completions"]


def test_degradation_can_switch_to_a_cheaper_model() -> None:
    t = FakeTime()

    def reply(request: httpx.Request) -> httpx.Response:
        model = json.loads(request.content)["model"]
        return httpx.Response(500 if model == "gpt-4o" else 200, json={"model": model})

    up = Upstream([reply])
    breaker = BreakerPolicy(failure_threshold=1, key=RouteKey(by_model=True))

    def cheaper(request: httpx.Request, circuit: OpenCircuit) -> httpx.Request:
        return switch_model(request, "gpt-4o-mini")

    policy = RetryPolicy(max_retries=0)
    with make(up, t, retry=policy, breaker=breaker, on_open=cheaper) as client:
        assert client.post(URL, json=BODY).status_code == 500
        r = client.post(URL, json=BODY, headers={"x-custom": "kept"})
    assert r.json() == {"model": "gpt-4o-mini"}
    assert r.headers[DEGRADED_HEADER] == "rerouted"
    sent = up.seen[-1]
    assert sent.headers["x-custom"] == "kept"
    assert int(sent.headers["content-length"]) == len(sent.content)


def test_replacement_on_an_open_route_fails_instead_of_looping() -> None:
    t = FakeTime()
    up = Upstream([status(500)])
    breaker = BreakerPolicy(failure_threshold=1)  # same key for both models
    seen: list[int] = []

    def cheaper(request: httpx.Request, circuit: OpenCircuit) -> httpx.Request:
        seen.append(1)
        return switch_model(request, "gpt-4o-mini")

    policy = RetryPolicy(max_retries=0)
    with make(up, t, retry=policy, breaker=breaker, on_open=cheaper) as client:
        client.post(URL, json=BODY)
        with pytest.raises(CircuitOpenError):
            client.post(URL, json=BODY)
    assert seen == [1] and len(up.seen) == 1


def test_degradation_can_queue_for_later_or_decline() -> None:
    t = FakeTime()
    up = Upstream([status(503)])
    queue: list[httpx.Request] = []

    def defer(request: httpx.Request, circuit: OpenCircuit) -> None:
        queue.append(request)
        raise RequestDeferred(request, circuit, ticket=len(queue))

    policy, breaker = RetryPolicy(max_retries=0), BreakerPolicy(failure_threshold=1)
    with make(up, t, retry=policy, breaker=breaker, on_open=defer) as client:
        client.post(URL, json=BODY)
        with pytest.raises(RequestDeferred) as err:
            client.post(URL, json=BODY)
    assert err.value.ticket == 1 and json.loads(queue[0].content) == BODY

    with make(up, t, retry=policy, breaker=breaker, on_open=lambda r, c: None) as client:
        client.post(URL, json=BODY)
        with pytest.raises(CircuitOpenError):
            client.post(URL, json=BODY)


def test_half_open_probe_closes_on_success_and_reopens_on_failure() -> None:
    t = FakeTime()
    up = Upstream([status(500), status(500), status(200)])
    policy, breaker = RetryPolicy(max_retries=0), BreakerPolicy(failure_threshold=1, cooldown=5)
    with make(up, t, retry=policy, breaker=breaker) as client:
        states = client._transport.breaker_states  # type: ignore[attr-defined]
        client.get(URL)
        assert list(states().values()) == [BreakerState.OPEN]
        t.now += 5.0
        assert list(states().values()) == [BreakerState.HALF_OPEN]
        assert client.get(URL).status_code == 500  # probe fails: open again, fresh cooldown
        t.now += 4.9
        with pytest.raises(CircuitOpenError):
            client.get(URL)
        t.now += 0.1
        assert client.get(URL).status_code == 200  # probe succeeds: closed
        assert list(states().values()) == [BreakerState.CLOSED]
        assert client.get(URL).status_code == 200
    assert len(up.seen) == 4


def admit(breaker: CircuitBreaker, now: float) -> Ticket:
    ticket = breaker.acquire(now)
    assert isinstance(ticket, Ticket)
    return ticket


def test_breaker_unit_rules() -> None:
    b = CircuitBreaker("r", BreakerPolicy(failure_threshold=2, cooldown=1.0))
    first, second = admit(b, 0.0), admit(b, 0.0)
    b.record(first, failed=True, now=0.0)
    b.record(second, failed=False, now=0.0)  # a success resets the consecutive count
    b.record(admit(b, 0.0), failed=True, now=0.0)
    assert b.state(0.0) is BreakerState.CLOSED
    slow = admit(b, 0.0)
    b.record(admit(b, 0.0), failed=True, now=0.0)
    assert b.state(0.5) is BreakerState.OPEN
    b.record(slow, failed=False, now=0.5)  # began before opening: ignored
    assert b.state(0.5) is BreakerState.OPEN
    probe = b.acquire(1.0)
    assert not isinstance(probe, OpenCircuit) and probe.probe
    assert isinstance(b.acquire(1.0), OpenCircuit)  # only one probe at a time
    b.release(probe)  # e.g. cancelled: the next caller may probe
    assert not isinstance(b.acquire(1.0), OpenCircuit)


def test_failure_rate_window_trips_a_flapping_route() -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_rate=0.5, window=10.0, min_calls=6)
    b = CircuitBreaker("r", policy)
    for i, failed in enumerate([True, False, True, False, True]):
        b.record(admit(b, float(i)), failed=failed, now=float(i))
    assert b.state(5.0) is BreakerState.CLOSED  # below min_calls
    b.record(admit(b, 5.0), failed=False, now=5.0)
    assert b.state(5.0) is BreakerState.OPEN  # 3 of 6 failed
    b2 = CircuitBreaker("r", policy)
    for i in range(6):  # old failures age out of the window
        b2.record(admit(b2, float(i)), failed=i < 3, now=float(i * 5))
    assert b2.state(30.0) is BreakerState.CLOSED


def test_route_key_and_switch_model() -> None:
    req = httpx.Request("POST", "http://h:8080/v1/files/abc/content?x=1", json=BODY)
    assert RouteKey()(req) == "POST h:8080 /v1/files/abc"
    assert RouteKey(depth=2)(req) == "POST h:8080 /v1/files"
    assert (
        RouteKey(depth=None, by_model=True)(req) == "POST h:8080 /v1/files/abc/content model=gpt-4o"
    )
    swapped = switch_model(req, "small")
    assert json.loads(swapped.content)["model"] == "small"
    assert swapped.url == req.url


def test_sync_transport_is_thread_safe_one_probe_among_many_threads() -> None:
    t = FakeTime()
    gate = threading.Event()
    arrived = threading.Event()

    def slow_ok(request: httpx.Request) -> httpx.Response:
        arrived.set()
        assert gate.wait(5)
        return httpx.Response(200)

    up = Upstream([status(500), slow_ok])
    policy, breaker = RetryPolicy(max_retries=0), BreakerPolicy(failure_threshold=1, cooldown=1)
    results: list[object] = []
    lock = threading.Lock()
    with make(up, t, retry=policy, breaker=breaker) as client:
        client.get(URL)
        t.now += 1.0

        def call() -> None:
            try:
                out: object = client.get(URL).status_code
            except CircuitOpenError:
                out = "open"
            with lock:
                results.append(out)

        threads = [threading.Thread(target=call) for _ in range(16)]
        for th in threads:
            th.start()
        assert arrived.wait(5)
        deadline = time.monotonic() + 5  # a safety bound only, never a timing assertion
        while len(results) < 15 and time.monotonic() < deadline:
            threading.Event().wait(0.001)
        gate.set()
        for th in threads:
            th.join(5)
    assert sorted(results, key=str) == [200] + ["open"] * 15
    assert len(up.seen) == 2


# --- async transport ---------------------------------------------------------------------------


def amake(
    upstream: Upstream, t: FakeTime, *, breaker: BreakerPolicy = NO_BREAKER, **kw: object
) -> httpx.AsyncClient:
    transport = AsyncSluicegateTransport(
        httpx.MockTransport(upstream),
        breaker=breaker,
        sleep=t.asleep,
        clock=t.clock,
        rng=lambda: 0.5,
        **kw,  # type: ignore[arg-type]
    )
    return httpx.AsyncClient(transport=transport)


async def test_async_retries_with_retry_after_and_budget() -> None:
    t = FakeTime()
    up = Upstream([status(429, retry_after_ms="250"), status(503), OK])
    async with amake(up, t) as client:
        assert (await client.post(URL, json=BODY)).status_code == 200
    assert t.slept == [0.25, 0.5] and up.counts == [None, "1", "2"]

    up = Upstream([status(429, retry_after="1", x_ratelimit_retry_budget="0"), OK])
    async with amake(up, t) as client:
        assert (await client.post(URL, json=BODY)).status_code == 429


async def test_async_breaker_with_an_async_fallback() -> None:
    t = FakeTime()
    up = Upstream([status(503)])

    async def fallback(request: httpx.Request, circuit: OpenCircuit) -> httpx.Response:
        await asyncio.sleep(0)
        return httpx.Response(200, json=FALLBACK)

    breaker = BreakerPolicy(failure_threshold=2)
    async with amake(up, t, breaker=breaker, on_open=fallback) as client:
        r = await client.post(URL, json=BODY)
    assert r.json() == FALLBACK and len(up.seen) == 2


async def test_async_cancelled_probe_frees_the_slot() -> None:
    t = FakeTime()
    started = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(500)
        if calls == 2:
            return await hang(request)
        return httpx.Response(200)

    transport = AsyncSluicegateTransport(
        httpx.MockTransport(handler),
        retry=RetryPolicy(max_retries=0),
        breaker=BreakerPolicy(failure_threshold=1, cooldown=1),
        sleep=t.asleep,
        clock=t.clock,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(URL)
        t.now += 1.0
        probe = asyncio.create_task(client.get(URL))
        await started.wait()
        with pytest.raises(CircuitOpenError):
            await client.get(URL)  # the probe is out
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert (await client.get(URL)).status_code == 200  # a new probe was allowed
        assert transport.breaker_states() == {
            "GET gw.test /v1/chat/completions": BreakerState.CLOSED
        }
