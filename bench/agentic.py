"""Retry amplification of an agent fan-out against a saturated limit, with and without a budget.

An orchestrator (one API key: agent ``orchestrator`` of tenant ``acme``) launches a wave of
``N`` parallel sub-agents every ``--period`` seconds (N = 10, then 20; ``--waves`` waves). Each
sub-agent is one session of that key and makes ``--calls`` calls in sequence (0.1-0.8 s apart,
1-4 s upstream latency, as in the simulator's ``fanout`` scenario); every call of a wave carries
the wave's trace id (its W3C ``traceparent``). Each sub-agent's client retries like the official
OpenAI SDK (:mod:`sluicegate.sim.clients`) with ``max_retries=3``: it honours
``retry-after-ms``, backs off ``min(0.5 s * 2^n, 8 s)`` minus 0-25 % jitter without one, and
stops on ``x-should-retry: false``, which :func:`sluicegate.headers.render_headers` sends with
every ``retry_budget_exhausted`` refusal.

The limit is saturated: the key may make ``AGENT_RPM`` requests/min (burst: 10 s worth; the
tenant twice that, which a single orchestrator never reaches) while a wave asks for about
N/3 calls/s. The same seeded traffic runs against that policy without and with
``retry_budget: {percent: 10, min_per_second: 1, ttl: 10s, max_per_trace: 10}``. How much the
budget helps depends on how deep the saturation is (see "Reading the figures" below), so the
table also has rows for a tighter and a looser key limit; the last line is the headline limit.

Runs on the simulator (:func:`sluicegate.sim.simulate`): the real engine and memory store on a
virtual clock, nothing sleeps. The provider's own quota is off (``provider=False``), so every
refusal counted is the engine's; the gateway's admission queue is off too
(``admission_queue=False``): every refusal goes back to the SDK client, which is what the
budget is about. ``amplification = attempts / original calls``; ``success``:
calls that finished; ``429 budget``: refusals in which a retry-budget bucket took part.

Reading the figures: a retry spends the budget whether or not the limits admit it (Finagle
withdraws per retry attempted, and a refused retry was still sent), so behind a saturated key
the per-agent budget (10 retries per 10 s plus 10 % of the originals) runs out within seconds
and every further retry is refused with ``retry_budget_exhausted`` and ``x-should-retry:
false``, which the SDK obeys: the client stops instead of retrying three times. In these rows
it is that per-agent budget that refuses (``429 budget``); the per-trace cap (10 retries per
pipeline) is rarely reached first. The budget costs successes: a call refused for the budget
gives up at once, where without it a later retry might have been admitted. That is the trade:
fewer attempts hammering a saturated limit (and the upstream behind it) for a few more calls
failing fast.

The other controls, on the engine directly (virtual clock, memory store, open-loop callers:
every refusal counts as a failure, nothing is retried):

* tenant breaker: one runaway tenant (30 calls/s) beside three quiet ones (2 calls/s each) on a
  pool of 20 calls/s, for 120 s, without and with ``breaker: {share: 0.5, window: 30s,
  floor: 60/min, cooldown: 60s}``: the quiet tenants' success rate, and the runaway's admitted
  rate while held;
* adaptive burst: a think-then-act agent (idle 5 s, then 30 calls 10 ms apart) against an
  agent limit of 600/min with a fixed ``burst: 10`` and with ``adaptive_burst: {window: 60s,
  factor: 8, min: 10, max: 60}``: the share of calls admitted over the last 20 of 30 cycles;
* scale event: 50 instances with init tokens making 20 calls each at once, against an init
  aggregate that holds ten instances' worth (``burst: 200``), without and with a scale event
  of 50 instances: the share admitted.

Run: ``.venv/bin/python bench/agentic.py [--seed 1] [--waves 10] [--calls 4] [--period 30]``.
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, RequestContext
from sluicegate.engine.init_tokens import issue_token
from sluicegate.policy import policy_from_text
from sluicegate.policy.resolve import Policy
from sluicegate.sim import ActorSpec, RetryPolicy, RunResult, Step, Traffic, simulate
from sluicegate.stores.memory import MemoryStore

#: The orchestrator's key (agent plane) is the bucket all its sub-agents share.
POLICY = """
version: 1
default_tier: team
tiers:
  team:
    tenant: {{requests: {tenant_rpm}/min, burst: {tenant_burst}}}
    agent:  {{requests: {rpm}/min, burst: {burst}}}
"""
BUDGET = "retry_budget: {percent: 10, min_per_second: 1, ttl: 10s, max_per_trace: 10}\n"
#: The key's limit (requests/min) of the headline figures, and of the sensitivity rows.
AGENT_RPM = 60
SENSITIVITY_RPM = (30, 120)
SUBAGENTS = (10, 20)
#: The official SDK's client with three retries (four attempts in all) instead of two.
SDK_3_RETRIES = RetryPolicy(max_retries=3)
#: Names of the retry-budget buckets, as the simulator reports the buckets that refused.
BUDGET_RULES = ("agent-retry-budget", "tenant-retry-budget", "trace-retries")


def policies(rpm: int = AGENT_RPM) -> tuple[Policy, Policy]:
    """The policy without and with the retry budget (otherwise identical)."""
    text = POLICY.format(
        rpm=rpm, burst=max(1, rpm // 6), tenant_rpm=2 * rpm, tenant_burst=max(1, rpm // 3)
    )
    return (
        policy_from_text(text, f"agent {rpm}/min"),
        policy_from_text(text + BUDGET, f"agent {rpm}/min + retry budget"),
    )


def fanout(subagents: int, *, seed: int, waves: int, calls: int, period: float) -> Traffic:
    """``waves`` fan-outs of ``subagents`` sub-agents each, one every ``period`` seconds."""
    layout = random.Random(f"{seed}:agentic:{subagents}")

    def steps(rng: random.Random) -> Iterator[Step]:
        for k in range(calls):
            gap = rng.uniform(0.0, 0.05) if k == 0 else rng.uniform(0.1, 0.8)
            prompt = float(round(rng.uniform(2000.0, 6000.0)))
            actual = prompt + round(1000 * rng.uniform(0.1, 0.8))
            yield Step(gap, "interactive", prompt + 1000, actual, rng.uniform(1.0, 4.0))

    actors: list[ActorSpec] = []
    for wave in range(waves):
        trace = f"orchestrator-w{wave:03d}"
        start = wave * period + layout.uniform(0.0, 1.0)
        actors += [
            ActorSpec("orchestrator", "acme", "orchestrator", f"{trace}-sub{j:02d}", start,
                      steps, SDK_3_RETRIES, trace=trace)
            for j in range(subagents)
        ]  # fmt: skip
    return Traffic(
        f"agentic-fanout-{subagents}",
        f"an orchestrator fans out to {subagents} sub-agents every {period:g}s",
        waves * period,
        tuple(actors),
        pool=None,
    )


@dataclass(frozen=True, slots=True)
class Row:
    """One run: a fan-out width against one policy."""

    rpm: int
    subagents: int
    budget: bool
    run: RunResult

    @property
    def amplification(self) -> float:
        return self.run.attempts / self.run.calls

    @property
    def admitted(self) -> int:
        return sum(s.admitted for s in self.run.stats)

    @property
    def succeeded(self) -> int:
        return sum(s.succeeded for s in self.run.stats)

    @property
    def gave_up(self) -> int:
        return sum(s.gave_up for s in self.run.stats)

    @property
    def budget_refusals(self) -> int:
        return sum(self.run.refused_by.get(name, 0) for name in BUDGET_RULES)

    @property
    def p95(self) -> float:
        return self.run.by_class()["interactive"].p95


def measure(
    rpm: int = AGENT_RPM,
    subagents: Sequence[int] = SUBAGENTS,
    *,
    seed: int = 1,
    waves: int = 10,
    calls: int = 4,
    period: float = 30.0,
) -> list[Row]:
    """Each fan-out width against the key limit ``rpm``, without and then with the budget."""
    off, on = policies(rpm)
    rows = []
    for n in subagents:
        traffic = fanout(n, seed=seed, waves=waves, calls=calls, period=period)
        for budget, policy in ((False, off), (True, on)):
            rows.append(
                Row(
                    rpm,
                    n,
                    budget,
                    simulate(policy, traffic, seed=seed, provider=False, admission_queue=False),
                )
            )
    return rows


def table(rows: Sequence[Row]) -> str:
    lines = [
        f"{'agent limit':>11} {'sub-agents':>10} {'budget':>6} {'calls':>6} {'attempts':>8} "
        f"{'admitted':>8} {'429':>5} {'429 budget':>10} {'gave up':>7} {'success':>7} "
        f"{'p95 added':>9} {'ampl':>5}"
    ]
    for r in rows:
        lines.append(
            f"{f'{r.rpm}/min':>11} {r.subagents:>10} {'on' if r.budget else 'off':>6} "
            f"{r.run.calls:>6} {r.run.attempts:>8} {r.admitted:>8} {r.run.refused:>5} "
            f"{r.budget_refusals:>10} {r.gave_up:>7} {r.succeeded / r.run.calls:>7.1%} "
            f"{r.p95:>8.1f}s {r.amplification:>5.2f}"
        )
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> str:
    """The machine-readable line (the rows of one key limit)."""
    return " ".join(
        f"amplification_{'on' if r.budget else 'off'}_{r.subagents}={r.amplification:.2f}"
        for r in rows
    )


BREAKER_POLICY = """
version: 1
default_tier: t
tiers:
  t:
    tenant: {requests: 1200/min, burst: 100}
pools:
  openai:
    requests: 1200/min
    burst: 200
"""
BREAKER = "    breaker: {share: 0.5, window: 30s, floor: 60/min, cooldown: 60s}\n"


async def breaker_figures(breaker: bool) -> tuple[float, float]:
    """(quiet tenants' success rate, runaway's admitted calls/s from 30 s on)."""
    policy = policy_from_text(BREAKER_POLICY + (BREAKER if breaker else ""))
    clock = VirtualClock(0.0)
    engine = Engine(policy, MemoryStore(), clock, on_alert=lambda _: None)
    quiet_sent = quiet_ok = runaway_late = 0
    for step in range(120 * 30):  # 120 s in steps of 1/30 s
        clock.advance(1 / 30)
        ctx = RequestContext("runaway", "a", workload_class="realtime", pool="openai")
        ok = (await engine.decide(ctx)).allowed
        runaway_late += ok and step >= 30 * 30
        if step % 15 == 0:  # each quiet tenant: 2 calls/s
            for tenant in ("q1", "q2", "q3"):
                quiet_sent += 1
                ctx = RequestContext(tenant, "a", workload_class="realtime", pool="openai")
                quiet_ok += (await engine.decide(ctx)).allowed
    return quiet_ok / quiet_sent, runaway_late / 90.0


ADAPTIVE_POLICY = """
version: 1
default_tier: t
tiers:
  t:
    agent:
      requests: 600/min
      {burst}
"""


async def burst_figures(adaptive: bool) -> float:
    """Share of a think-then-act agent's calls admitted over its last 20 of 30 cycles."""
    burst = (
        "adaptive_burst: {window: 60s, factor: 8, min: 10, max: 60}" if adaptive else "burst: 10"
    )
    policy = policy_from_text(ADAPTIVE_POLICY.format(burst=burst))
    clock = VirtualClock(0.0)
    engine = Engine(policy, MemoryStore(), clock)
    ctx = RequestContext("acme", "planner", workload_class="realtime")
    admitted = 0
    for cycle in range(30):
        clock.advance(5.0)
        for _ in range(30):
            clock.advance(0.01)
            ok = (await engine.decide(ctx)).allowed
            admitted += ok and cycle >= 10
    return admitted / (20 * 30)


SECRET = "bench-init-secret-" + "x" * 20
FLEET_POLICY = f"""
version: 1
default_tier: t
init:
  window: 60s
  limits: {{requests: 120/min, burst: 20}}
  aggregate: {{requests: 600/min, burst: 200}}
  secret: {SECRET}
tiers:
  t:
    agent: {{requests: 60/min, burst: 20}}
"""


async def fleet_figures(scale_event: bool) -> float:
    """Share of 50 instances x 20 init calls admitted."""
    clock = VirtualClock(0.0)
    wall = 1_800_000_000.0
    engine = Engine(
        policy_from_text(FLEET_POLICY), MemoryStore(), clock,
        wall_clock=lambda: wall + clock.now(), on_alert=lambda _: None,
    )  # fmt: skip
    if scale_event:
        await engine.add_scale_event("acme", "worker", 50, 90)
    admitted = 0
    for i in range(50):
        tok = issue_token(
            SECRET, tenant="acme", agent="worker", instance=f"c{i}", ttl=600, now=wall
        )
        ctx = RequestContext("acme", "worker", workload_class="realtime", init_token=tok)
        for _ in range(20):
            admitted += (await engine.decide(ctx)).allowed
    return admitted / 1000


async def controls() -> dict[str, float]:
    """The breaker, adaptive-burst and scale-event figures (see the module docstring)."""
    victim_off, runaway_off = await breaker_figures(False)
    victim_on, runaway_on = await breaker_figures(True)
    return {
        "victim_success_off": victim_off,
        "victim_success": victim_on,
        "runaway_rps_off": runaway_off,
        "runaway_rps_held": runaway_on,
        "think_act_admitted_fixed": await burst_figures(False),
        "think_act_admitted_adaptive": await burst_figures(True),
        "fleet_admitted": await fleet_figures(False),
        "fleet_admitted_scale_event": await fleet_figures(True),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--waves", type=int, default=10, help="fan-outs per run")
    parser.add_argument("--calls", type=int, default=4, help="calls per sub-agent")
    parser.add_argument("--period", type=float, default=30.0, help="seconds between fan-outs")
    args = parser.parse_args(argv)
    shape = {"seed": args.seed, "waves": args.waves, "calls": args.calls, "period": args.period}
    started = time.perf_counter()
    headline = measure(AGENT_RPM, **shape)
    others = [row for rpm in SENSITIVITY_RPM for row in measure(rpm, **shape)]
    wall = time.perf_counter() - started
    print(
        f"orchestrator fan-out: {args.waves} waves {args.period:g}s apart, {args.calls} calls "
        f"per sub-agent, SDK client with 3 retries; tenant limit 2x the agent's; "
        f"budget {BUDGET.strip()}; seed {args.seed}; {wall:.2f}s wall"
    )
    print(table(headline))
    print(f"sensitivity (agent limit {' and '.join(f'{r}/min' for r in SENSITIVITY_RPM)}):")
    print(table(others))
    figures = asyncio.run(controls())
    print(
        "tenant breaker (pool 20/s; runaway 30/s, 3 quiet tenants 2/s each, 120 s): quiet "
        f"success {figures['victim_success_off']:.1%} without, {figures['victim_success']:.1%} "
        f"with; runaway admitted {figures['runaway_rps_off']:.1f}/s without, "
        f"{figures['runaway_rps_held']:.1f}/s with (floor 1/s, averaged over 30-120 s: it is "
        "released after each 60 s cooldown and trips again)"
    )
    print(
        "think-then-act (idle 5 s, 30 calls; 600/min): admitted "
        f"{figures['think_act_admitted_fixed']:.1%} with burst 10, "
        f"{figures['think_act_admitted_adaptive']:.1%} with adaptive_burst (min 10, max 60)"
    )
    print(
        "fleet of 50 x 20 init calls (aggregate holds 10 instances): admitted "
        f"{figures['fleet_admitted']:.1%} without, {figures['fleet_admitted_scale_event']:.1%} "
        "with a scale event of 50"
    )
    print(summary(headline) + " " + " ".join(f"{k}={v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
