"""Policies: YAML -> validated spec -> frozen :class:`Policy`."""

from __future__ import annotations

import os

from sluicegate.policy.loader import load_policy_file, load_policy_text
from sluicegate.policy.resolve import Axis, ClassProfile, Plane, Policy, Rule, resolve
from sluicegate.policy.schema import PolicySpec
from sluicegate.policy.units import Rate, parse_duration, parse_rate


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read, validate and resolve a policy file (raises ``PolicyError`` listing every problem)."""
    return resolve(load_policy_file(path), str(path))


def policy_from_text(text: str, source: str = "<policy>") -> Policy:
    """Validate and resolve policy YAML given as a string."""
    return resolve(load_policy_text(text, source), source)


__all__ = [
    "Axis",
    "ClassProfile",
    "Plane",
    "Policy",
    "PolicySpec",
    "Rate",
    "Rule",
    "load_policy",
    "load_policy_file",
    "load_policy_text",
    "parse_duration",
    "parse_rate",
    "policy_from_text",
    "resolve",
]
