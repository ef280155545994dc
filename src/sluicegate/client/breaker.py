"""A circuit breaker per upstream route: closed -> open -> half-open -> closed.

Why on the client: when an upstream (or the gateway's view of it) keeps refusing, every further
call an agent makes only adds load and burns its retry budget. An open breaker answers at once,
without touching the network, and hands the call to a degradation callback (fallback answer,
cheaper model, queue for later). After ``cooldown`` one probe call goes through; its success
closes the breaker, its failure opens it again for another cooldown.

Thread-safe: every state change happens under one ``threading.Lock`` held only for a few
arithmetic steps and never across I/O or an ``await``, so the same breaker is safe from threads
(sync transport) and from tasks (async transport).
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def default_is_failure(status: int) -> bool:
    """429 and 5xx mean the route is unhealthy or saturated; other 4xx are the caller's fault."""
    return status == 429 or status >= 500


@dataclass(frozen=True)
class RouteKey:
    """The breaker key of a request: ``METHOD host[:port] /first/depth/segments``.

    ``depth`` keeps ids out of the key (``/v1/files/abc`` and ``/v1/files/def`` share a breaker
    with ``depth=2``); ``None`` uses the whole path. ``by_model`` appends the JSON body's
    ``model``, so that switching to a cheaper model in the degradation callback goes through a
    breaker of its own instead of the one that just opened."""

    depth: int | None = 3
    by_model: bool = False

    def __call__(self, request: httpx.Request) -> str:
        segments = [s for s in request.url.path.split("/") if s]
        if self.depth is not None:
            segments = segments[: self.depth]
        key = f"{request.method} {request.url.netloc.decode('ascii')} /{'/'.join(segments)}"
        if self.by_model:
            model = _model_of(request)
            if model:
                key += f" model={model}"
        return key


def _model_of(request: httpx.Request) -> str | None:
    import json

    try:
        doc = json.loads(request.content)
    except (httpx.RequestNotRead, ValueError):
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None


@dataclass(frozen=True)
class BreakerPolicy:
    """When a route's breaker opens and for how long.

    Opens after ``failure_threshold`` consecutive failures, or, when ``failure_rate`` is set,
    when at least ``min_calls`` outcomes in the last ``window`` seconds fail at that rate or more
    (catches a flapping upstream that never fails N times in a row). Stays open ``cooldown``
    seconds, then lets one probe through."""

    failure_threshold: int = 5
    cooldown: float = 30.0
    failure_rate: float | None = None
    window: float = 60.0
    min_calls: int = 20
    is_failure: Callable[[int], bool] = default_is_failure
    key: Callable[[httpx.Request], str] = RouteKey()

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if self.cooldown < 0 or self.window <= 0:
            raise ValueError("cooldown must be >= 0 and window > 0")
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")


@dataclass(frozen=True)
class Ticket:
    """Permission to send one attempt. ``generation`` ties its outcome to the breaker period it
    started in, so a slow call begun before the breaker opened cannot close it."""

    generation: int
    probe: bool


@dataclass(frozen=True)
class OpenCircuit:
    """What the degradation callback is told about the refusal."""

    route: str
    state: BreakerState
    #: Seconds until the breaker lets a probe through (0 when a probe is already in flight).
    retry_in: float


class CircuitBreaker:
    """The breaker of one route. Times are readings of the transport's monotonic clock."""

    def __init__(self, route: str, policy: BreakerPolicy) -> None:
        self.route = route
        self.policy = policy
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._consecutive = 0
        self._events: deque[tuple[float, bool]] = deque()
        self._opened_at = 0.0
        self._probe_out = False

    def state(self, now: float) -> BreakerState:
        with self._lock:
            self._tick(now)
            return self._state

    def cooldown_left(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through; 0 unless open."""
        with self._lock:
            self._tick(now)
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(self._opened_at + self.policy.cooldown - now, 0.0)

    def _tick(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._opened_at + self.policy.cooldown:
            self._state = BreakerState.HALF_OPEN
            self._probe_out = False

    def acquire(self, now: float) -> Ticket | OpenCircuit:
        """A ticket to send, or the reason not to (open, or half-open with its probe out)."""
        with self._lock:
            self._tick(now)
            if self._state is BreakerState.CLOSED:
                return Ticket(self._generation, probe=False)
            if self._state is BreakerState.HALF_OPEN and not self._probe_out:
                self._probe_out = True
                return Ticket(self._generation, probe=True)
            retry_in = 0.0
            if self._state is BreakerState.OPEN:
                retry_in = self._opened_at + self.policy.cooldown - now
            return OpenCircuit(self.route, self._state, max(retry_in, 0.0))

    def record(self, ticket: Ticket, failed: bool, now: float) -> None:
        """The outcome of a ticketed attempt."""
        with self._lock:
            if ticket.generation != self._generation:
                return  # began in an earlier period: says nothing about the current one
            if ticket.probe:
                self._probe_out = False
                if failed:
                    self._open(now)
                else:
                    self._close()
                return
            if self._state is not BreakerState.CLOSED:
                return
            self._consecutive = self._consecutive + 1 if failed else 0
            if self._consecutive >= self.policy.failure_threshold or self._rate_trips(now, failed):
                self._open(now)

    def release(self, ticket: Ticket) -> None:
        """The attempt ended without a verdict (cancelled, or a non-counting error): free the
        probe slot so the next call may probe, instead of the route staying stuck half-open."""
        with self._lock:
            if ticket.probe and ticket.generation == self._generation:
                self._probe_out = False

    def _rate_trips(self, now: float, failed: bool) -> bool:
        rate = self.policy.failure_rate
        if rate is None:
            return False
        events = self._events
        events.append((now, failed))
        horizon = now - self.policy.window
        while events and events[0][0] < horizon:
            events.popleft()
        if len(events) < self.policy.min_calls:
            return False
        return sum(f for _, f in events) >= rate * len(events)

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._generation += 1
        self._consecutive = 0
        self._events.clear()

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._generation += 1
        self._consecutive = 0
        self._events.clear()


class BreakerRegistry:
    """One breaker per route key, created on first use."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def for_request(self, request: httpx.Request) -> CircuitBreaker:
        return self.get(self.policy.key(request))

    def get(self, route: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(route)
            if breaker is None:
                breaker = self._breakers[route] = CircuitBreaker(route, self.policy)
            return breaker

    def states(self, now: float) -> dict[str, BreakerState]:
        with self._lock:
            breakers = list(self._breakers.values())
        return {b.route: b.state(now) for b in breakers}
