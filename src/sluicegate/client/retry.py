"""Retry decisions for the client transport: when to retry, and how long to wait first.

Why a separate, pure module: every rule here (which statuses, how ``Retry-After`` is read, the
jittered backoff, the retry-budget stop) is a function of a response and a few numbers, so it is
tested without any network and shared verbatim by the sync and async transports.
"""

from __future__ import annotations

import email.utils
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

#: Statuses a gateway or provider uses to say "not now, come back later".
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({429, 503})
#: Transport errors that are safe to retry: the request never reached the server.
DEFAULT_RETRY_EXCEPTIONS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """How the transport retries.

    ``max_retries`` counts retries, not attempts (3 means up to 4 calls). A server-given wait
    (``retry-after-ms``, then ``retry-after`` in seconds or as an HTTP date) is honoured but
    capped at ``max_retry_after``: a wait longer than that is the gateway saying "much later",
    and one capped wait then a retry is cheaper for an agent than blocking for minutes. Without a
    server hint the wait is full-jitter exponential backoff, ``uniform(0, min(max_backoff,
    base_delay * 2**retry))``, which spreads a fan-out of sub-agents instead of synchronising it.
    """

    max_retries: int = 3
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES
    retry_exceptions: tuple[type[Exception], ...] = DEFAULT_RETRY_EXCEPTIONS
    base_delay: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    #: Stop when the gateway says ``x-should-retry: false`` (``true`` forces a retry).
    honour_should_retry: bool = True
    #: Stop when the last ``x-ratelimit-retry-budget`` seen from that host was 0.
    honour_retry_budget: bool = True
    #: How long a budget reading from *another* call stays valid (the gateway refills its budget
    #: over its ``ttl``, 10 s by default); the reading on the response being retried always counts.
    budget_memory: float = 10.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.base_delay < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("delays must be >= 0")

    def backoff(self, retry: int, rng: Callable[[], float]) -> float:
        """Full-jitter backoff before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_backoff, self.base_delay * 2.0 ** max(retry - 1, 0))
        return rng() * ceiling


def parse_retry_after(headers: httpx.Headers, wall_now: float) -> float | None:
    """The server's requested wait in seconds, or None when it gave none (or an unreadable one).

    ``retry-after-ms`` wins (finer, and what the OpenAI SDK reads first); ``retry-after`` may be
    delta-seconds or an HTTP date, the latter read against ``wall_now`` (Unix seconds)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(value, 0.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            return None
        return max(when.timestamp() - wall_now, 0.0)
    return max(value, 0.0) if math.isfinite(value) else None


def should_retry_header(headers: httpx.Headers) -> bool | None:
    """``x-should-retry`` as a tri-state: True, False, or None when absent or unreadable."""
    value = headers.get("x-should-retry")
    if value is None:
        return None
    value = value.strip().lower()
    return True if value == "true" else False if value == "false" else None


def retry_budget_header(headers: httpx.Headers) -> int | None:
    """``x-ratelimit-retry-budget`` (retries the gateway still allows), None if absent/invalid."""
    value = headers.get("x-ratelimit-retry-budget")
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


@dataclass
class RetryBudgetTracker:
    """The last retry budget each host reported.

    Why per host, shared by all requests of a transport: the gateway keeps the budget per agent
    (one transport is normally one agent), and a 2xx from a parallel call is as good a reading as
    the refusal being retried. The budget on the refusal itself, when present, is fresher and is
    used first (see :func:`retry_verdict`)."""

    memory: float = 10.0
    _last: dict[str, tuple[int, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, host: str, headers: httpx.Headers, now: float) -> int | None:
        """Record the budget a response reports (if any) and return it."""
        budget = retry_budget_header(headers)
        if budget is not None:
            with self._lock:
                self._last[host] = (budget, now)
        return budget

    def last(self, host: str, now: float) -> int | None:
        """The last reading for ``host`` unless older than ``memory`` seconds (it has refilled
        since, and a stale 0 must not block retries of a host that only gives connect errors)."""
        with self._lock:
            seen = self._last.get(host)
        if seen is None or now - seen[1] > self.memory:
            return None
        return seen[0]


@dataclass(frozen=True)
class Verdict:
    """Whether to retry, after how long, and why (the reason is for logs and tests)."""

    retry: bool
    delay: float = 0.0
    reason: str = ""


def retry_verdict(
    policy: RetryPolicy,
    response: httpx.Response,
    retries_done: int,
    budget: int | None,
    wall_now: float,
    rng: Callable[[], float],
) -> Verdict:
    """Decide about one response. ``budget`` is the freshest retry budget known for the host."""
    forced = should_retry_header(response.headers) if policy.honour_should_retry else None
    if forced is False:
        return Verdict(False, reason="x-should-retry: false")
    if forced is None and response.status_code not in policy.retry_statuses:
        return Verdict(False, reason="status not retryable")
    if retries_done >= policy.max_retries:
        return Verdict(False, reason="max retries reached")
    if policy.honour_retry_budget and budget is not None and budget <= 0:
        return Verdict(False, reason="retry budget exhausted")
    hinted = parse_retry_after(response.headers, wall_now)
    if hinted is not None:
        return Verdict(True, min(hinted, policy.max_retry_after), "retry-after")
    return Verdict(True, policy.backoff(retries_done + 1, rng), "backoff")


def error_verdict(
    policy: RetryPolicy,
    exc: Exception,
    retries_done: int,
    budget: int | None,
    rng: Callable[[], float],
) -> Verdict:
    """Decide about a transport error (no response)."""
    if not isinstance(exc, policy.retry_exceptions):
        return Verdict(False, reason="error not retryable")
    if retries_done >= policy.max_retries:
        return Verdict(False, reason="max retries reached")
    if policy.honour_retry_budget and budget is not None and budget <= 0:
        return Verdict(False, reason="retry budget exhausted")
    return Verdict(True, policy.backoff(retries_done + 1, rng), "backoff")
