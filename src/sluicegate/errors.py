"""Every exception sluicegate raises, in one tree.

``SluicegateError``
  ``PolicyError``            the policy is invalid (carries every problem found, with locations)
  ``StoreError``             a state backend failed; ``transient`` says whether retrying may help,
    ``StoreUnavailable``     the backend cannot be reached or timed out (transient)
    ``StoreProtocolError``   the backend answered something we cannot use (not transient)
  ``ConfigurationError``     a programming or wiring mistake (e.g. an unsupported store URL)

Backend errors are converted to ``StoreError`` at the store boundary, so the engine's
fail-open / fail-closed logic can act on ``transient`` without knowing which client library failed.
"""

from __future__ import annotations

from dataclasses import dataclass


class SluicegateError(Exception):
    """Base class of all sluicegate errors."""


@dataclass(frozen=True)
class PolicyProblem:
    """One problem in a policy file, rendered as ``file:line: dotted.path: message``."""

    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(SluicegateError):
    """A policy failed to parse or validate. ``problems`` lists every error found, in file order."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StoreError(SluicegateError):
    """A state backend failed. ``transient`` is True when a retry may succeed."""

    transient: bool = False


class StoreUnavailable(StoreError):
    """The backend is unreachable, timed out or is failing over."""

    transient = True


class StoreProtocolError(StoreError):
    """The backend answered with something the store cannot interpret."""

    transient = False


class ConfigurationError(SluicegateError):
    """Wiring error: an unsupported store URL, an impossible combination of settings."""
