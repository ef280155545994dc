"""The httpx transports: retries that cooperate with the gateway, and a breaker per route.

Why a transport (and not a wrapper around one SDK): the OpenAI and Anthropic SDKs both accept
``http_client=httpx.Client(transport=...)``, so one transport serves both, and plain httpx users
get the same behaviour. Set the SDK's own ``max_retries=0`` so that only this transport retries.

Why a generator in the base class: the whole decision procedure (breaker admission, degradation,
retry verdicts, the ``x-stainless-retry-count`` header, breaker bookkeeping) is written once, as
a sans-I/O generator that *yields* the I/O it needs (send, sleep, close, call the degradation
callback) and is resumed with the result. The sync and async transports are only drivers that
perform those actions with blocking or awaitable calls, so the two can never drift apart.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeAlias

import httpx

from sluicegate.client.breaker import (
    BreakerPolicy,
    BreakerRegistry,
    BreakerState,
    OpenCircuit,
    Ticket,
)
from sluicegate.client.retry import RetryBudgetTracker, RetryPolicy, error_verdict, retry_verdict

#: Header the transport sets on every retry (and that the gateway's retry budget counts).
RETRY_COUNT_HEADER = "x-stainless-retry-count"
#: Header added to responses that did not come from the original route.
DEGRADED_HEADER = "x-sluicegate-degraded"

#: What a degradation callback may return: a response to serve, a request to send instead, or
#: None to fail with :class:`CircuitOpenError`. Raising (e.g. :class:`RequestDeferred`) works too.
Degradation: TypeAlias = httpx.Response | httpx.Request | None
OnOpen: TypeAlias = Callable[[httpx.Request, OpenCircuit], Degradation]
AsyncOnOpen: TypeAlias = Callable[
    [httpx.Request, OpenCircuit], Degradation | Awaitable[Degradation]
]


class CircuitOpenError(httpx.TransportError):
    """The route's breaker is open and no fallback was served; nothing was sent.

    A ``TransportError`` because, like a refused connection, no response exists; the OpenAI SDK
    surfaces it as ``APIConnectionError`` with this exception as ``__cause__``."""

    def __init__(self, request: httpx.Request, circuit: OpenCircuit, message: str = "") -> None:
        super().__init__(
            message or f"circuit open for {circuit.route} (probe in {circuit.retry_in:.3f}s)",
            request=request,
        )
        self.circuit = circuit


class RequestDeferred(CircuitOpenError):
    """Raised by a degradation callback that queued the request to send later.

    ``ticket`` is whatever the callback's queue returned (a job id, a future), so the caller can
    follow the deferred work up."""

    def __init__(self, request: httpx.Request, circuit: OpenCircuit, ticket: object = None) -> None:
        super().__init__(request, circuit, f"deferred: circuit open for {circuit.route}")
        self.ticket = ticket


# --- the actions the core asks its driver to perform ------------------------------------------


@dataclass(frozen=True)
class _Send:
    request: httpx.Request


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Close:
    response: httpx.Response


@dataclass(frozen=True)
class _Degrade:
    request: httpx.Request
    circuit: OpenCircuit


_Action: TypeAlias = _Send | _Sleep | _Close | _Degrade
_Plan: TypeAlias = Generator[_Action, Any, httpx.Response]


def switch_model(request: httpx.Request, model: str) -> httpx.Request:
    """A copy of a JSON request with its body's ``model`` replaced: the "cheaper model"
    degradation. Pair it with ``RouteKey(by_model=True)`` so the new model has its own breaker."""
    doc = json.loads(request.content)
    doc["model"] = model
    headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"]
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        content=json.dumps(doc).encode(),
        extensions=request.extensions,
    )


class _SluicegateCore:
    """Configuration and the sans-I/O procedure shared by both transports."""

    def __init__(
        self,
        *,
        retry: RetryPolicy | None,
        breaker: BreakerPolicy | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        rng: Callable[[], float],
    ) -> None:
        self.retry_policy = retry if retry is not None else RetryPolicy()
        self.breakers = BreakerRegistry(breaker if breaker is not None else BreakerPolicy())
        self.budgets = RetryBudgetTracker(memory=self.retry_policy.budget_memory)
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng

    def breaker_states(self) -> dict[str, BreakerState]:
        """Every route seen so far and its breaker state (for status pages and tests)."""
        return self.breakers.states(self._clock())

    def _plan(self, request: httpx.Request) -> _Plan:
        policy = self.retry_policy
        is_failure = self.breakers.policy.is_failure
        retries = 0
        degraded = False
        base_count = _int_header(request.headers.get(RETRY_COUNT_HEADER))
        while True:
            breaker = self.breakers.for_request(request)
            admitted = breaker.acquire(self._clock())
            if isinstance(admitted, OpenCircuit):
                if degraded:  # the replacement's route is open too: no second fallback
                    raise CircuitOpenError(request, admitted)
                outcome = yield _Degrade(request, admitted)
                if isinstance(outcome, httpx.Response):
                    outcome.headers[DEGRADED_HEADER] = "fallback"
                    return outcome
                if isinstance(outcome, httpx.Request):
                    request, degraded = outcome, True
                    base_count = _int_header(request.headers.get(RETRY_COUNT_HEADER))
                    continue
                raise CircuitOpenError(request, admitted)
            ticket: Ticket | None = admitted
            try:
                attempt = request
                if retries:
                    attempt = _with_header(request, RETRY_COUNT_HEADER, str(base_count + retries))
                host = request.url.netloc.decode("ascii")
                try:
                    response: httpx.Response = yield _Send(attempt)
                except httpx.TransportError as exc:
                    if isinstance(exc, CircuitOpenError):
                        raise
                    breaker.record(admitted, failed=True, now=self._clock())
                    ticket = None
                    budget = self.budgets.last(host, self._clock())
                    verdict = error_verdict(policy, exc, retries, budget, self._rng)
                    if not verdict.retry:
                        raise
                else:
                    breaker.record(
                        admitted, failed=is_failure(response.status_code), now=self._clock()
                    )
                    ticket = None
                    now = self._clock()
                    fresh = self.budgets.observe(host, response.headers, now)
                    verdict = retry_verdict(
                        policy,
                        response,
                        retries,
                        fresh if fresh is not None else self.budgets.last(host, now),
                        self._wall_clock(),
                        self._rng,
                    )
                    if not verdict.retry:
                        if degraded:
                            response.headers[DEGRADED_HEADER] = "rerouted"
                        return response
                    yield _Close(response)
            finally:
                if ticket is not None:  # cancelled or an unexpected error: no verdict
                    breaker.release(ticket)
            retries += 1
            if breaker.cooldown_left(self._clock()) > verdict.delay:
                continue  # this failure opened the breaker: degrade now rather than after a wait
            yield _Sleep(verdict.delay)  # even 0: lets other tasks/threads run between attempts


def _int_header(value: str | None) -> int:
    try:
        return max(int(value), 0) if value is not None else 0
    except ValueError:
        return 0


def _with_header(request: httpx.Request, name: str, value: str) -> httpx.Request:
    """A copy of ``request`` with one header set; the body is already buffered, so it resends."""
    headers = request.headers.copy()
    headers[name] = value
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        stream=request.stream,
        extensions=request.extensions,
    )


class SluicegateTransport(_SluicegateCore, httpx.BaseTransport):
    """Blocking transport: ``httpx.Client(transport=SluicegateTransport())``.

    Safe to share between threads: breakers and the budget tracker lock internally, and nothing
    else is mutable. ``sleep``, ``clock`` (monotonic seconds), ``wall_clock`` (Unix seconds, for
    HTTP-date ``Retry-After``) and ``rng`` (``[0, 1)``) are injectable so tests never wait."""

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        on_open: OnOpen | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(retry=retry, breaker=breaker, clock=clock, wall_clock=wall_clock, rng=rng)
        self._inner = transport if transport is not None else httpx.HTTPTransport()
        self._on_open = on_open
        self._sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # buffer the body once so every retry can resend it
        plan = self._plan(request)
        try:
            action = next(plan)
            while True:
                try:
                    result = self._perform(action)
                except Exception as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(result)
        except StopIteration as done:
            response: httpx.Response = done.value
            return response
        finally:
            plan.close()

    def _perform(self, action: _Action) -> object:
        if isinstance(action, _Send):
            return self._inner.handle_request(action.request)
        if isinstance(action, _Sleep):
            self._sleep(action.seconds)
        elif isinstance(action, _Close):
            _drain(action.response)
        else:
            outcome = self._on_open(action.request, action.circuit) if self._on_open else None
            if isinstance(outcome, httpx.Request):
                outcome.read()
            return outcome
        return None

    def close(self) -> None:
        self._inner.close()


class AsyncSluicegateTransport(_SluicegateCore, httpx.AsyncBaseTransport):
    """Async transport: ``httpx.AsyncClient(transport=AsyncSluicegateTransport())``.

    Task-safe: the shared state is only touched between awaits, under short locks that are never
    held across one. ``on_open`` may be a plain or an async function."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        on_open: AsyncOnOpen | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(retry=retry, breaker=breaker, clock=clock, wall_clock=wall_clock, rng=rng)
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._on_open = on_open
        self._sleep = sleep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()  # buffer the body once so every retry can resend it
        plan = self._plan(request)
        try:
            action = next(plan)
            while True:
                try:
                    result = await self._perform(action)
                except Exception as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(result)
        except StopIteration as done:
            response: httpx.Response = done.value
            return response
        finally:
            plan.close()  # also on cancellation: frees a half-open probe slot

    async def _perform(self, action: _Action) -> object:
        if isinstance(action, _Send):
            return await self._inner.handle_async_request(action.request)
        if isinstance(action, _Sleep):
            await self._sleep(action.seconds)
        elif isinstance(action, _Close):
            await _adrain(action.response)
        else:
            outcome = self._on_open(action.request, action.circuit) if self._on_open else None
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if isinstance(outcome, httpx.Request):
                await outcome.aread()
            return outcome
        return None

    async def aclose(self) -> None:
        await self._inner.aclose()


def _drain(response: httpx.Response) -> None:
    """Read and close a response that is being retried, so its connection returns to the pool."""
    try:
        response.read()
    except httpx.HTTPError:
        pass
    finally:
        response.close()


async def _adrain(response: httpx.Response) -> None:
    try:
        await response.aread()
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()
