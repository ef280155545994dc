"""Simulation: traffic models and a discrete-event runner that drive the real engine on virtual
time, SDK-like clients, metrics and reports (see ``docs/simulate.md``).

Nothing here sleeps: events sit in a heap ordered by virtual time, the engine's clock is a
:class:`~sluicegate.clock.VirtualClock` moved to each event, and the engine's coroutines are
driven without an event loop (the memory store never suspends; the runner asserts it).
"""

from sluicegate.sim.clients import OPENAI_SDK, RetryPolicy, retry_after_header, should_retry
from sluicegate.sim.metrics import ClassStats, RunResult
from sluicegate.sim.model import ActorSpec, Step, Traffic
from sluicegate.sim.runner import compare, simulate, sla_targets
from sluicegate.sim.scenarios import SCENARIOS, build_scenario

__all__ = [
    "OPENAI_SDK",
    "SCENARIOS",
    "ActorSpec",
    "ClassStats",
    "RetryPolicy",
    "RunResult",
    "Step",
    "Traffic",
    "build_scenario",
    "compare",
    "retry_after_header",
    "should_retry",
    "simulate",
    "sla_targets",
]
