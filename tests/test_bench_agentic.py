"""``bench/agentic.py`` on a reduced instance: the retry budget lowers retry amplification."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, Reason, RequestContext
from sluicegate.headers import render_headers
from sluicegate.sim import should_retry
from sluicegate.stores.memory import MemoryStore

BENCH = Path(__file__).resolve().parent.parent / "bench" / "agentic.py"


@pytest.fixture(scope="module")
def agentic() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_agentic", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_budget_lowers_amplification(agentic: ModuleType) -> None:
    rows = agentic.measure(waves=3, seed=1)
    by = {(r.subagents, r.budget): r for r in rows}
    assert set(by) == {(10, False), (10, True), (20, False), (20, True)}
    for n in (10, 20):
        off, on = by[(n, False)], by[(n, True)]
        assert off.run.calls == on.run.calls == 3 * n * 4  # same traffic, originals only
        assert off.budget_refusals == 0 and on.budget_refusals > 0
        assert 1.0 <= on.amplification < off.amplification <= 4.0  # at most 3 retries a call
        assert off.run.refused > 0  # saturated: the limit refuses first attempts
    # Wider fan-out, more retries per call without the budget.
    assert by[(20, False)].amplification > by[(10, False)].amplification
    line = agentic.summary(rows)
    assert line.startswith("amplification_off_10=") and "amplification_on_20=" in line
    assert "victim" not in line


def test_deterministic(agentic: ModuleType) -> None:
    first = agentic.summary(agentic.measure(subagents=(10,), waves=2, seed=3))
    assert agentic.summary(agentic.measure(subagents=(10,), waves=2, seed=3)) == first


async def test_simulated_client_stops_where_the_sdk_does(agentic: ModuleType) -> None:
    """The simulator's clients stop on the reasons for which the gateway sends
    ``x-should-retry: false``; a plain rate-limit refusal is retried (and has no such header)."""
    _, on = agentic.policies()
    engine = Engine(on, MemoryStore(), VirtualClock(1000.0))

    def ctx(retry: int, trace: str) -> RequestContext:
        return RequestContext(
            "acme", "orchestrator", "s", workload_class="interactive", retry_attempt=retry,
            trace_id=trace,
        )  # fmt: skip

    limited = None
    for _ in range(50):
        d = await engine.decide(ctx(0, "t0"))
        if not d.allowed:
            limited = d
            break
    assert limited is not None and limited.reason is Reason.RATE_LIMITED
    assert should_retry(limited.reason)
    assert "x-should-retry" not in dict(render_headers(limited))
    engine = Engine(on, MemoryStore(), VirtualClock(1000.0))
    refused = None
    for _ in range(20):  # max_per_trace = 10 admitted retries, the key's burst is 10
        d = await engine.decide(ctx(1, "t1"))
        if not d.allowed:
            refused = d
            break
    assert refused is not None and refused.reason is Reason.RETRY_BUDGET_EXHAUSTED
    assert dict(render_headers(refused))["x-should-retry"] == "false"
    assert not should_retry(refused.reason)


async def test_the_other_controls_help_in_the_direction_they_promise(agentic: ModuleType) -> None:
    figures = await agentic.controls()
    assert figures["victim_success"] == 1.0 and figures["victim_success_off"] < 0.5
    assert figures["runaway_rps_held"] < figures["runaway_rps_off"] / 4
    assert figures["think_act_admitted_adaptive"] > 0.95 > 0.5 > figures["think_act_admitted_fixed"]
    assert figures["fleet_admitted_scale_event"] == 1.0 and figures["fleet_admitted"] < 0.3
