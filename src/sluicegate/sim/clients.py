"""Clients that retry like the official OpenAI Python SDK.

From ``openai/_base_client.py`` (``_should_retry`` / ``_calculate_retry_timeout``) and
``openai/_constants.py`` of the SDK installed with this project:

* ``max_retries`` defaults to 2 (three attempts in all); 408, 409, 429 and 5xx are retried;
* a ``retry-after-ms`` header (else ``retry-after``) is honoured exactly, without jitter, when
  ``0 < value <= MAX_RETRY_AFTER_DELAY`` (120 s in current releases; 60 s in older ones, where
  a longer value fell back to backoff instead of giving up: ``RetryPolicy(max_retry_after=60,
  give_up_above_max=False)``);
* otherwise exponential backoff ``min(0.5 * 2**n, 8.0)`` seconds reduced by a 0-25 % jitter,
  ``n`` being the number of retries already made;
* ``x-should-retry: false`` stops retrying. The simulator decides from the decision's reason
  (:func:`should_retry`): a call refused for good (a cost above a bucket's capacity, an unknown
  tenant or class) or for an exhausted retry budget (where sluicegate sends that header) is
  not retried.

The gateway's ``Retry-After``/``retry-after-ms`` values are those of :mod:`sluicegate.headers`:
``retry-after-ms = max(1, ceil(retry_after * 1000))``, no header when waiting never helps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from sluicegate.engine.decision import Reason


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """An SDK's retry behaviour on a refused call."""

    max_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 120.0
    give_up_above_max: bool = True
    honour_retry_after: bool = True

    def delay(
        self, retries_done: int, retry_after: float | None, rng: random.Random
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up. ``retry_after`` is the
        header value the client saw (seconds), None when there was none."""
        if retries_done >= self.max_retries:
            return None
        if retry_after is not None and self.honour_retry_after:
            if retry_after > self.max_retry_after:
                if self.give_up_above_max:
                    return None
            elif retry_after > 0:
                return retry_after
        sleep = min(self.initial_delay * 2.0 ** min(retries_done, 1000), self.max_delay)
        return sleep * (1.0 - 0.25 * rng.random())


#: The official OpenAI Python SDK's defaults.
OPENAI_SDK = RetryPolicy()

#: Reasons after which a retry is pointless, or the gateway sends ``x-should-retry: false``
#: (a retry budget exhausted). Compared by value, so engines without budgets work too.
_FINAL = frozenset(
    {"cost_exceeds_capacity", "unknown_tenant", "unknown_class", "retry_budget_exhausted"}
)


def should_retry(reason: Reason | str) -> bool:
    """Whether an SDK retries a refusal with this reason (stand-in for ``x-should-retry``)."""
    return str(reason) not in _FINAL


def retry_after_header(retry_after: float | None) -> float | None:
    """The delay a client reads from the gateway's ``retry-after-ms`` header, in seconds."""
    if retry_after is None or not math.isfinite(retry_after):
        return None
    return max(1, math.ceil(retry_after * 1000)) / 1000.0
