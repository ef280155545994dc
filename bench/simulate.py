"""Simulator throughput: a 10-minute virtual scenario, 1,000 agents, about a million calls.

50 tenants x 20 agents, each agent one session working in think-then-act cycles (15-40 calls
0-100 ms apart, 0.2-0.6 s upstream latency, then 1-5 s idle), with OpenAI-SDK retries, against a
policy with three planes x two axes, workload classes and a shared pool (10 buckets per
decision), on the real engine and memory store. Timing covers traffic generation, every
decision and settlement, and the final metrics (percentiles), not the report.

Run: ``.venv/bin/python bench/simulate.py [--agents 1000] [--duration 600] [--policy FILE]``.
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Iterator

from sluicegate.policy import load_policy, policy_from_text
from sluicegate.sim import ActorSpec, Step, Traffic, simulate

POLICY = """
version: 1
default_tier: team
tiers:
  team:
    tenant:  {requests: 3000/min, burst: 300, tokens: 10M/min}
    agent:   {requests: 100/min,  burst: 30,  tokens: 1M/min}
    session: {requests: 150/min,  burst: 40,  tokens: 1M/min}
classes:
  default: interactive
  realtime:    {priority: 0, max_wait: 0s,  sla_p95: 800ms}
  interactive: {priority: 1, max_wait: 2s,  sla_p95: 3s}
  batch:       {priority: 2, max_wait: 60s, sla_p95: 60s, scale: 0.5}
pools:
  openai: {requests: 200k/min, tokens: 500M/min}
"""


def steps(rng: random.Random) -> Iterator[Step]:
    wait = rng.uniform(0.0, 5.0)
    while True:
        for k in range(rng.randint(15, 40)):
            prompt = float(int(rng.uniform(500.0, 3000.0)))
            gap = wait if k == 0 else rng.uniform(0.0, 0.1)
            yield Step(gap, "interactive", prompt + 500.0, prompt + int(rng.uniform(50.0, 400.0)),
                       rng.uniform(0.2, 0.6))  # fmt: skip
        wait = rng.uniform(1.0, 5.0)


def traffic(agents: int, duration: float) -> Traffic:
    actors = tuple(
        ActorSpec(f"tenant-{i % 50:02d}", f"tenant-{i % 50:02d}", f"agent-{i:04d}", "s", 0.0, steps)
        for i in range(agents)
    )
    return Traffic("bench", "think-then-act fleet", duration, actors, quota_tokens_per_min=500e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=600.0, help="virtual seconds")
    parser.add_argument("--policy", help="a policy file (default: the built-in bench policy)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    policy = load_policy(args.policy) if args.policy else policy_from_text(POLICY, "bench")
    gc.collect()
    started = time.perf_counter()
    cpu_started = time.process_time()
    run = simulate(policy, traffic(args.agents, args.duration), seed=args.seed)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    print(
        f"{args.agents} agents, {args.duration:g}s virtual: {run.calls} calls, {run.attempts} "
        f"decisions ({run.refused} refused, {run.upstream_refused} provider 429s), "
        f"{sum(s.waited for s in run.stats)} deferred; {wall:.1f}s wall ({cpu:.1f}s CPU), "
        f"{run.calls / wall:,.0f} calls/s, {run.decisions / wall:,.0f} decisions/s, "
        f"{args.duration / wall:,.1f}x real time"
    )
    print(
        f"sim_calls={run.calls} sim_decisions={run.decisions} wall_s={wall:.2f} "
        f"cpu_s={cpu:.2f} calls_per_s={run.calls / wall:.0f}"
    )


if __name__ == "__main__":
    main()
