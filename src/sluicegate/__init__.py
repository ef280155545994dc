"""sluicegate: an agent-aware API gateway and rate-limiting engine.

The core (``policy``, ``algorithms``, ``stores``, ``cost``, ``engine``) imports no web framework.
"""

from sluicegate.clock import Clock, MonotonicClock, VirtualClock
from sluicegate.engine import Decision, Engine, Outcome, Reason, RequestContext
from sluicegate.policy import Policy, load_policy, policy_from_text
from sluicegate.stores import MemoryStore, Store

__version__ = "0.1.0"

__all__ = [
    "Clock",
    "Decision",
    "Engine",
    "MemoryStore",
    "MonotonicClock",
    "Outcome",
    "Policy",
    "Reason",
    "RequestContext",
    "Store",
    "VirtualClock",
    "__version__",
    "load_policy",
    "policy_from_text",
]
