"""What a scenario hands the runner: actors, each a script of calls on its own random stream.

An *actor* is one sequential caller (a session, a sub-agent, a container): it makes a call,
waits for it to finish (admitted and answered, or given up after the client's retries), thinks
for ``gap`` seconds and makes the next. Steps are produced lazily by a generator, so a million
calls never sit in memory at once, and each actor draws from its own ``random.Random`` seeded
from ``(seed, scenario, actor index)``: the traffic is the same for a seed whatever the policy
does to it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from sluicegate.sim.clients import OPENAI_SDK, RetryPolicy


class Step(NamedTuple):
    """One call of an actor's script.

    ``gap``: seconds after the previous call finished (for the first step: after the actor's
    start); ``tokens``: the reservation the gateway sees (estimated prompt + reserved output);
    ``actual``: the usage the upstream reports (settled); ``service``: the upstream's own latency;
    ``end``: whether this step ends a *task* (the unit of work reports count as done when every
    one of its steps succeeded: a think-then-act burst, a sub-agent's job, a container's start-up;
    by default every call is a task of its own); ``phase``: reported as a group of its own
    (``group/phase``), e.g. a container's ``init`` calls apart from its steady ones.
    """

    gap: float
    workload_class: str
    tokens: float
    actual: float
    service: float
    end: bool = True
    phase: str | None = None


StepsFactory = Callable[[random.Random], Iterator[Step]]


@dataclass(frozen=True, slots=True)
class ActorSpec:
    """A sequential caller. ``group`` labels it in reports (a tenant, or a tenant's kind of
    caller such as ``acme:looping``); ``tenant``/``agent``/``session`` are what the engine sees."""

    group: str
    tenant: str
    agent: str
    session: str | None
    start: float
    steps: StepsFactory
    retry: RetryPolicy = OPENAI_SDK
    path: str = "/v1/chat/completions"
    #: Pipeline (trace) id sent with every call, for per-trace retry caps across a fan-out.
    trace: str | None = None
    #: A starting instance: when the policy has an init tier, the simulator mints it a signed
    #: init token (``sluicegate.engine.init_tokens.issue_token``, with a secret of the run) and
    #: sends it with every call, as an orchestrator-launched container would.
    init_token: bool = False


@dataclass(frozen=True, slots=True)
class Traffic:
    """A built scenario. ``quota_*`` describe the upstream provider's quota (used when neither
    policy declares the pool); ``notes`` are ``(feature, text)``: the text is shown for a policy
    without that feature (see :func:`sluicegate.sim.runner.has_feature`; ``""``: always), or,
    for ``"+feature"``, for a policy *with* it."""

    scenario: str
    description: str
    duration: float
    actors: tuple[ActorSpec, ...]
    pool: str | None = "openai"
    quota_tokens_per_min: float = 30e6
    quota_requests_per_min: float = 10e3
    notes: tuple[tuple[str, str], ...] = ()
