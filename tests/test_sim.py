"""The simulator: SDK retry logic, the runner's invariants, determinism, every scenario, and the
expected direction of difference between a naive and a fixed policy (small, fast instances)."""

from __future__ import annotations

import random
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from sluicegate.engine import Reason
from sluicegate.policy import Policy, load_policy
from sluicegate.sim import (
    OPENAI_SDK,
    SCENARIOS,
    RetryPolicy,
    RunResult,
    build_scenario,
    compare,
    retry_after_header,
    should_retry,
    simulate,
)
from sluicegate.sim.runner import EngineSuspended, _drive

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sim"


@pytest.fixture(scope="module")
def naive() -> Policy:
    return load_policy(FIXTURES / "naive.yaml")


@pytest.fixture(scope="module")
def fixed() -> Policy:
    return load_policy(FIXTURES / "fixed.yaml")


def _pair(naive: Policy, fixed: Policy, name: str, **kw: Any) -> tuple[RunResult, RunResult]:
    traffic = build_scenario(name, seed=3, **kw)
    return compare(naive, fixed, traffic, seed=3, labels=("naive", "fixed"))


def _stat(run: RunResult, group: str, klass: str = "interactive") -> Any:
    return next(s for s in run.stats if s.group == group and s.workload_class == klass)


# -- clients ---------------------------------------------------------------------------------


def test_sdk_honours_retry_after_exactly() -> None:
    rng = random.Random(0)
    assert OPENAI_SDK.delay(0, 1.25, rng) == 1.25
    assert OPENAI_SDK.delay(1, 120.0, rng) == 120.0


def test_sdk_gives_up_on_long_retry_after_and_after_max_retries() -> None:
    rng = random.Random(0)
    assert OPENAI_SDK.delay(0, 121.0, rng) is None
    assert OPENAI_SDK.delay(2, 1.0, rng) is None
    legacy = RetryPolicy(max_retry_after=60.0, give_up_above_max=False)
    delay = legacy.delay(0, 90.0, rng)
    assert delay is not None and 0.375 <= delay <= 0.5


def test_sdk_backoff_is_exponential_with_jitter_and_capped() -> None:
    rng = random.Random(1)
    policy = RetryPolicy(max_retries=10)
    for n, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (7, 8.0)]:
        for _ in range(50):
            delay = policy.delay(n, None, rng)
            assert delay is not None and 0.75 * base <= delay <= base


def test_retry_after_header_and_should_retry() -> None:
    assert retry_after_header(None) is None
    assert retry_after_header(float("inf")) is None
    assert retry_after_header(0.0) == 0.001
    assert retry_after_header(1.2341) == 1.235
    assert should_retry(Reason.RATE_LIMITED)
    assert should_retry(Reason.STORE_UNAVAILABLE)
    assert not should_retry(Reason.COST_EXCEEDS_CAPACITY)
    assert not should_retry(Reason.UNKNOWN_TENANT)


# -- runner ----------------------------------------------------------------------------------


def test_drive_refuses_a_suspending_coroutine() -> None:
    class Suspend:
        def __await__(self) -> Any:
            yield None

    async def suspends() -> int:
        await Suspend()
        return 1

    async def returns() -> int:
        return 2

    assert _drive(returns()) == 2
    coro: Coroutine[Any, Any, int] = suspends()
    with pytest.raises(EngineSuspended):
        _drive(coro)


def test_only_the_memory_store_is_accepted(fixed: Policy) -> None:
    traffic = build_scenario("fanout", seed=1, scale=0.1, duration=5.0)
    with pytest.raises(TypeError):
        simulate(fixed, traffic, store=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_runs(name: str, naive: Policy, fixed: Policy) -> None:
    traffic = build_scenario(name, seed=2, scale=0.3, duration=30.0)
    for run in compare(naive, fixed, traffic, seed=2):
        assert run.calls > 0 and run.scenario == name
        assert run.decisions >= run.attempts >= run.calls  # + re-decisions of queued calls
        for s in run.stats:
            assert s.admitted + s.refused == s.attempts
            assert s.succeeded + s.gave_up <= s.calls
            assert s.retry_amplification <= 1 + OPENAI_SDK.max_retries
            assert 0.0 <= s.within_sla <= 1.0
        assert run.tokens <= sum(run.tokens_series) + 1e-6


def test_unknown_scenario_and_bad_scale() -> None:
    with pytest.raises(KeyError, match="fanout"):
        build_scenario("nope")
    with pytest.raises(ValueError):
        build_scenario("fanout", scale=0)


def test_deterministic_for_a_seed(naive: Policy, fixed: Policy) -> None:
    def run(seed: int) -> list[dict[str, Any]]:
        out = []
        for name in ("fanout", "realtime-vs-batch"):
            traffic = build_scenario(name, seed=seed, scale=0.3, duration=30.0)
            out += [r.to_dict() for r in compare(naive, fixed, traffic, seed=seed)]
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_provider_quota_answers_429s_above_it(naive: Policy) -> None:
    traffic = build_scenario("think-then-act", seed=1, duration=60.0)
    with_provider = simulate(naive, traffic, seed=1, quota=(1e6, 10e3))
    without = simulate(naive, traffic, seed=1, quota=(1e6, 10e3), provider=False)
    assert with_provider.upstream_refused > 0
    assert without.upstream_refused == 0
    assert with_provider.peak_tokens_per_min < without.peak_tokens_per_min


def test_unknown_tenant_is_noted(fixed: Policy) -> None:
    from sluicegate.policy import policy_from_text

    strict = policy_from_text(
        "version: 1\ntiers: {t: {tenant: {requests: 10/s}}}\ntenants: {other: {tier: t}}\n"
    )
    traffic = build_scenario("fleet-cold-start", seed=1, scale=0.1, duration=5.0)
    run = simulate(strict, traffic, seed=1)
    assert run.refused == run.attempts == run.calls  # refused for good: never retried
    assert any("unknown" in note for note in run.notes)


# -- the demand: the same for every policy ------------------------------------------------------


def test_demand_is_the_same_for_both_policies(naive: Policy, fixed: Policy) -> None:
    for name in SCENARIOS:
        a, b = compare(naive, fixed, build_scenario(name, seed=4, scale=0.3, duration=30.0))
        da = {(s.group, s.workload_class): (s.demand, s.tasks) for s in a.stats}
        db = {(s.group, s.workload_class): (s.demand, s.tasks) for s in b.stats}
        assert da == db and a.demand > 0
        for s in a.stats + b.stats:
            assert s.done <= s.demand and s.tasks_done <= s.tasks


def test_unlimited_policy_does_all_the_demand() -> None:
    from sluicegate.policy import policy_from_text

    free = policy_from_text("version: 1\ndefault_tier: t\ntiers: {t: {tenant: {requests: 1M/s}}}\n")
    traffic = build_scenario("think-then-act", seed=1, scale=0.3, duration=60.0)
    run = simulate(free, traffic, seed=1, provider=False)
    (s,) = run.stats
    assert s.done == s.demand == s.calls and s.tasks_done == s.tasks > 0
    assert s.within_sla == 1.0


def test_init_tokens_are_minted_and_verified() -> None:
    """Fleet containers present real signed init tokens: with an init tier roomier than the
    agent plane their start-up mostly succeeds; the same policy without the tier refuses most."""
    from sluicegate.policy import policy_from_text

    base = (
        "version: 1\ndefault_tier: t\n"
        "tiers: {t: {tenant: {requests: 6000/min, burst: 2000}, agent: {requests: 120/min, "
        "burst: 30}}}\n"
    )
    init = base + "init: {window: 60s, limits: {requests: 120/min, burst: 40}}\n"
    traffic = build_scenario("fleet-cold-start", seed=1, duration=60.0)
    without, with_tier = compare(
        policy_from_text(base), policy_from_text(init), traffic, seed=1, provider=False
    )
    w, wo = _stat(with_tier, "acme/init"), _stat(without, "acme/init")
    assert w.demand == wo.demand == 1000
    assert w.goodput > 0.9 > 0.5 > wo.goodput
    assert any("init token" in n for n in with_tier.notes)
    assert any("no init tier" in n for n in without.notes)


def test_retry_budget_lowers_amplification(fixed: Policy) -> None:
    from sluicegate.policy import policy_from_text

    text = (FIXTURES / "fixed.yaml").read_text()
    budget = policy_from_text(text + "retry_budget: {percent: 10, max_per_trace: 10}\n")
    traffic = build_scenario("fanout", seed=1, scale=2.0, duration=60.0)
    a, b = compare(fixed, budget, traffic, seed=1)
    assert b.attempts / b.calls < a.attempts / a.calls  # fewer retries per call
    assert any("retry budget" in n for n in a.notes)
    assert not any("retry budget" in n for n in b.notes)
