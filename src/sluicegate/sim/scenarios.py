"""The seven agentic traffic scenarios. Each builder takes ``(seed, scale, duration)`` and
returns a :class:`~sluicegate.sim.model.Traffic`; ``scale`` multiplies the number of callers
(tenants, sessions, agents, containers), ``duration`` (seconds) overrides the default 120 s.

Token sizes are a reservation (prompt + reserved output, what the gateway estimates) and the
actual usage the upstream reports (prompt + the output really produced, at most the reserved
output), settled when the call finishes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from sluicegate.sim.clients import OPENAI_SDK
from sluicegate.sim.model import ActorSpec, Step, Traffic

DEFAULT_DURATION = 120.0
#: For scenarios about the provider's quota: long enough for its minute of burst capacity
#: (a full bucket at the start) to run out, so the quota binds.
LONG_DURATION = 300.0
Builder = Callable[[int, float, float | None], Traffic]


def _n(base: float, scale: float) -> int:
    return max(1, round(base * scale))


def _chat(rng: random.Random, prompt: tuple[float, float], out: float) -> tuple[float, float]:
    """(reservation, actual) of a chat call: a prompt, ``out`` reserved output tokens, and an
    actual output between 10 % and 80 % of the reservation."""
    p = round(rng.uniform(*prompt))
    return float(p + out), float(p + round(out * rng.uniform(0.1, 0.8)))


def _loop(
    klass: str,
    gap: tuple[float, float],
    prompt: tuple[float, float],
    out: float,
    service: tuple[float, float],
    first_gap: tuple[float, float] = (0.0, 0.0),
) -> Callable[[random.Random], Iterator[Step]]:
    """A caller that repeats one kind of call forever (the runner stops it at the duration)."""

    def steps(rng: random.Random) -> Iterator[Step]:
        wait = rng.uniform(*first_gap)
        while True:
            tokens, actual = _chat(rng, prompt, out)
            yield Step(wait, klass, tokens, actual, rng.uniform(*service))
            wait = rng.uniform(*gap)

    return steps


def one_key_many_sessions(seed: int, scale: float, duration: float | None) -> Traffic:
    """One API key (one agent identity of ``globex``, whose key has 600 calls/min in both
    example policies) fronts many user sessions; a few sessions are stuck in a tool loop and
    call as fast as answers come back."""
    actors: list[ActorSpec] = []
    normal = _loop("interactive", (4.0, 12.0), (300, 1000), 300, (0.8, 3.0), (0.0, 10.0))
    looping = _loop("interactive", (0.05, 0.2), (300, 1000), 300, (0.3, 1.0), (0.0, 2.0))
    for i in range(_n(60, scale)):
        actors.append(ActorSpec("sessions", "globex", "shared-key", f"s{i:04d}", 0.0, normal))
    for i in range(_n(5, scale)):
        actors.append(ActorSpec("looping", "globex", "shared-key", f"loop{i:03d}", 0.0, looping))
    return Traffic(
        "one-key-many-sessions",
        "one API key fronting many sessions, a few of them stuck in a tool loop",
        duration or DEFAULT_DURATION,
        tuple(actors),
    )


def think_then_act(seed: int, scale: float, duration: float | None) -> Traffic:
    """Agents that think (idle seconds), then act: 15-40 calls back to back (one task)."""

    def steps(rng: random.Random) -> Iterator[Step]:
        wait = rng.uniform(0.0, 30.0)
        while True:
            n = rng.randint(15, 40)
            for k in range(n):
                tokens, actual = _chat(rng, (1000, 3000), 500)
                yield Step(wait if k == 0 else rng.uniform(0.0, 0.2), "interactive", tokens,
                           actual, rng.uniform(0.3, 1.2), k == n - 1)  # fmt: skip
            wait = rng.uniform(THINK[0], THINK[1])

    actors = tuple(
        ActorSpec("acme", "acme", f"agent{i:04d}", f"task{i:04d}", 0.0, steps)
        for i in range(_n(AGENTS_TTA, scale))
    )
    return Traffic(
        "think-then-act",
        "agents idle for seconds, then make 15-40 calls back to back",
        duration or DEFAULT_DURATION,
        actors,
    )


THINK = (20.0, 60.0)
AGENTS_TTA = 26


def fanout(seed: int, scale: float, duration: float | None) -> Traffic:
    """Orchestrators fan out to 10-20 sub-agents at once, every 25-45 s; each sub-agent makes
    3-8 calls in sequence (its task) and retries like the OpenAI SDK."""
    layout = random.Random(f"{seed}:fanout:layout")
    length = duration or DEFAULT_DURATION
    actors: list[ActorSpec] = []
    for o in range(_n(4, scale)):
        t = layout.uniform(0.0, 5.0)
        wave = 0
        while t < length:
            for j in range(layout.randint(10, 20)):
                calls = layout.randint(3, 8)

                def steps(rng: random.Random, calls: int = calls) -> Iterator[Step]:
                    for k in range(calls):
                        tokens, actual = _chat(rng, (2000, 6000), 1000)
                        gap = rng.uniform(0.0, 0.05) if k == 0 else rng.uniform(0.1, 0.8)
                        yield Step(gap, "interactive", tokens, actual, rng.uniform(1.0, 4.0),
                                   k == calls - 1)  # fmt: skip

                trace = f"orch{o:02d}-w{wave:03d}"
                actors.append(
                    ActorSpec("acme", "acme", f"orch{o:02d}", f"{trace}-sub{j:02d}", t, steps,
                              OPENAI_SDK, trace=trace)
                )  # fmt: skip
            wave += 1
            t += layout.uniform(25.0, 45.0)
    return Traffic(
        "fanout",
        "orchestrators fan out to 10-20 sub-agents at once (SDK retries with backoff)",
        length,
        tuple(actors),
        notes=(
            (
                "retry_budget",
                "no retry budget or per-trace retry cap in this policy: synchronized sub-agent "
                "retries are limited only by the plane limits (see retry amplification)",
            ),
        ),
    )


def token_heavy(seed: int, scale: float, duration: float | None) -> Traffic:
    """128k-token contexts beside small calls, reserved on estimate and settled on usage."""
    heavy = _loop("interactive", (2.0, 8.0), (100_000, 128_000), 4000, (8.0, 25.0), (0.0, 5.0))
    small = _loop("interactive", (1.0, 5.0), (500, 3000), 1000, (0.5, 2.0), (0.0, 5.0))
    n = _n(20, scale)
    n_heavy = max(1, round(n * 0.4))
    actors = [
        ActorSpec(
            "long-context" if i < n_heavy else "small",
            "acme",
            f"agent{i:03d}",
            f"s{i:03d}",
            0.0,
            heavy if i < n_heavy else small,
        )  # fmt: skip
        for i in range(n)
    ]
    return Traffic(
        "token-heavy",
        "128k-token contexts beside small calls (reserved, then settled on actual usage)",
        duration or LONG_DURATION,
        tuple(actors),
        quota_tokens_per_min=2e6,
    )


def realtime_vs_batch(seed: int, scale: float, duration: float | None) -> Traffic:
    """Latency-critical realtime (voice) calls beside batch workers that never pause."""
    voice = _loop("realtime", (1.0, 3.0), (300, 800), 200, (0.2, 0.5), (0.0, 3.0))
    batch = _loop("batch", (0.0, 0.05), (2000, 6000), 1000, (1.0, 3.0), (0.0, 1.0))
    actors = [
        ActorSpec("realtime", "acme", f"voice{i:03d}", f"call{i:03d}", 0.0, voice)
        for i in range(_n(10, scale))
    ]
    actors += [
        ActorSpec("batch", "acme", f"batch{i:03d}", f"job{i:03d}", 0.0, batch)
        for i in range(_n(120, scale))
    ]
    return Traffic(
        "realtime-vs-batch",
        "realtime voice agents beside long-running batch workers of the same tenant",
        duration or DEFAULT_DURATION,
        tuple(actors),
    )


def runaway_tenant(seed: int, scale: float, duration: float | None) -> Traffic:
    """One big tenant (``globex``) whose agents call flat out beside many small tenants on the
    same provider pool: together they ask for more than the pool."""
    quiet = _loop("interactive", (4.0, 10.0), (500, 2000), 500, (0.5, 2.0), (0.0, 8.0))
    flood = _loop("interactive", (0.0, 0.05), (500, 2000), 500, (0.3, 1.0), (0.0, 1.0))
    actors: list[ActorSpec] = []
    for t in range(_n(QUIET_TENANTS, scale)):
        tenant = f"tenant-{t + 1:02d}"
        for a in range(3):
            actors.append(ActorSpec("quiet", tenant, f"agent{a}", f"s{a}", 0.0, quiet))
    for a in range(_n(40, scale)):
        actors.append(ActorSpec("runaway", "globex", f"agent{a:03d}", f"s{a:03d}", 0.0, flood))
    return Traffic(
        "runaway-tenant",
        "one tenant floods the shared provider pool beside many small tenants",
        duration or LONG_DURATION,
        tuple(actors),
        notes=(
            (
                "tenant_breaker",
                "no tenant breaker on the shared pool in this policy: only the tenant plane "
                "keeps one tenant from taking the pool",
            ),
        ),
    )


QUIET_TENANTS = 40


def fleet_cold_start(seed: int, scale: float, duration: float | None) -> Traffic:
    """50 containers of one agent start at once; each makes 20 init calls (its start-up task),
    then settles into steady use. Each presents a signed init token (the policy's init tier, if
    it has one, applies)."""

    def steps(rng: random.Random) -> Iterator[Step]:
        for k in range(20):
            tokens, actual = _chat(rng, (200, 800), 100)
            gap = rng.uniform(0.0, 2.0) if k == 0 else rng.uniform(0.0, 0.05)
            yield Step(gap, "interactive", tokens, actual, rng.uniform(0.1, 0.4), k == 19, "init")
        while True:
            tokens, actual = _chat(rng, (1000, 3000), 500)
            yield Step(rng.uniform(10.0, 20.0), "interactive", tokens, actual,
                       rng.uniform(0.5, 2.0))  # fmt: skip

    actors = tuple(
        ActorSpec(
            FLEET_TENANT, FLEET_TENANT, "worker", f"container{i:03d}", 0.0, steps, init_token=True
        )  # fmt: skip
        for i in range(_n(50, scale))
    )
    return Traffic(
        "fleet-cold-start",
        "50 containers of one agent start at once, each making 20 init calls",
        duration or DEFAULT_DURATION,
        actors,
        notes=(
            (
                "init_tier",
                "no init tier in this policy: the containers' init tokens are ignored and their "
                "start-up calls are held to the steady-state limits",
            ),
            (
                "+init_tier",
                "each container presents a signed init token (minted by the simulator with a "
                "secret of the run), so its start-up gets the policy's init tier",
            ),
        ),
    )


FLEET_TENANT = "acme"


SCENARIOS: dict[str, Builder] = {
    "one-key-many-sessions": one_key_many_sessions,
    "think-then-act": think_then_act,
    "fanout": fanout,
    "token-heavy": token_heavy,
    "realtime-vs-batch": realtime_vs_batch,
    "runaway-tenant": runaway_tenant,
    "fleet-cold-start": fleet_cold_start,
}


def build_scenario(
    name: str, *, seed: int = 0, scale: float = 1.0, duration: float | None = None
) -> Traffic:
    """Build a named scenario (``KeyError`` listing the names for an unknown one)."""
    try:
        builder = SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r} (scenarios: {', '.join(SCENARIOS)})") from None
    if scale <= 0:
        raise ValueError("scale must be positive")
    return builder(seed, scale, duration)
