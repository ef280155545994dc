"""``sluicegate lint``: find the agentic misconfigurations in a rate-limiting policy.

Findings have stable codes. ``SG001``-``SG007`` are the seven ways a copy-pasted microservice
policy fails agent traffic (warnings); ``SG1xx`` are plain mistakes (``SG102`` is an error: some
calls can never pass); ``SG000`` is an invalid policy (error). Each finding carries a one-line
message, a location (``file:line`` and dotted path), a concrete fix in words and, where the fix
is mechanical, :class:`Patch` es that ``sluicegate convert`` applies (:mod:`.lint_fix`).

The linter works on two views of one policy: the raw document with line numbers (so checks can
see keys the schema does not have yet, such as ``retry_budget`` and ``init``) and the validated,
resolved :class:`~sluicegate.policy.resolve.Policy` (so limits are compared as the engine sees
them, tenant overrides merged). Imported configs (:mod:`sluicegate.policy.importers`) arrive as
a sluicegate policy document whose line map points into the original file, so their findings name
lines of the Kong / envoy / LiteLLM file.

Keys the core schema may not know yet (``routes``, ``upstreams``, ``gateway``, ``identity``,
``retry_budget``, ``init``, ``alerts``; a pool's ``breaker``) are
accepted here: those the schema lacks (checked at run time, :func:`supports`) are set aside for
validation and read from the raw document. So SG003 and SG007 fire on any policy without
``retry_budget`` / ``init``, whether or not the schema has them yet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from sluicegate.errors import PolicyError, PolicyProblem
from sluicegate.policy.lint_yaml import Loc, LocatedError, dotted, line_for, load_located
from sluicegate.policy.loader import load_policy_text
from sluicegate.policy.resolve import Policy, resolve
from sluicegate.policy.schema import PolicySpec, PoolSpec


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


#: A :class:`Patch` value that removes the key.
DELETE: Any = _Delete()


@dataclass(frozen=True)
class Patch:
    """Set the key at ``loc`` of the policy document to ``value`` (or remove it: ``DELETE``)."""

    loc: Loc
    value: Any


@dataclass(frozen=True)
class Finding:
    """One problem: ``code`` (e.g. ``SG002``), where it is, what is wrong and how to fix it."""

    code: str
    severity: Severity
    message: str
    source: str
    line: int | None
    path: str
    fix: str
    patches: tuple[Patch, ...] = field(default=(), compare=False)

    @property
    def title(self) -> str:
        return RULES[self.code].title

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        at = f" {self.path}:" if self.path else ""
        return f"{where}: {self.severity.value} {self.code}{at} {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "title": self.title,
            "message": self.message,
            "file": self.source,
            "line": self.line,
            "path": self.path,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class RuleInfo:
    code: str
    name: str
    severity: Severity
    title: str
    help: str


def _rule(code: str, name: str, severity: Severity, title: str, help: str) -> RuleInfo:
    return RuleInfo(code, name, severity, title, help)


W, E = Severity.WARNING, Severity.ERROR
#: Every finding code, its default severity and its documentation (``docs/lint.md``).
RULES: dict[str, RuleInfo] = {
    r.code: r
    for r in (
        _rule(
            "SG000",
            "invalid-policy",
            E,
            "The policy does not validate",
            "Fix the problem reported; `sluicegate validate` shows the same messages.",
        ),
        _rule(
            "SG001",
            "identity-one-plane",
            W,
            "Identity collapsed to one plane",
            "Limits on a single plane (one API key or tenant counter) let one agent or one "
            "runaway session take the whole budget of every other agent behind the same key. "
            "Limit the tenant, agent and session planes, session tightest.",
        ),
        _rule(
            "SG002",
            "fixed-window",
            W,
            "Fixed windows for bursty agent consumers",
            "Agents think, then fire 15-40 calls at once. A fixed window admits twice its "
            "limit across a window boundary and then locks callers out until the window "
            "resets; a huge window locks them out for hours. Use GCRA (the default) with an "
            "explicit burst.",
        ),
        _rule(
            "SG003",
            "no-retry-budget",
            W,
            "No retry budget, no cap on retries in a fan-out",
            "SDKs retry every 429 (the openai SDK twice by default), so a refused fan-out of "
            "20 sub-agents becomes 60 calls. Add `retry_budget` with `max_per_trace`.",
        ),
        _rule(
            "SG004",
            "requests-only-llm",
            W,
            "Request-only limits on LLM routes",
            "One 128k-token call and one 50-token call count the same. Limit the `tokens` "
            "axis (or weighted `cost` with `costs` rules) next to requests.",
        ),
        _rule(
            "SG005",
            "one-class-profile",
            W,
            "One profile for every workload class",
            "Realtime calls queue behind batch jobs, and batch can take every budget. Give "
            "classes different max_wait and priority, and cap batch with `scale`.",
        ),
        _rule(
            "SG006",
            "no-tenant-isolation",
            W,
            "Missing tenant isolation on a shared pool",
            "A shared upstream pool without a tenant breaker, where one tenant may take most "
            "of the pool or tenants together far exceed it, lets a runaway tenant starve "
            "every other tenant. Cap each tenant below the pool and add a breaker.",
        ),
        _rule(
            "SG007",
            "no-cold-start-tier",
            W,
            "No cold-start tier or scale-event handling",
            "A fleet of fresh containers starting at once stampedes the provider. Add an "
            "`init` tier for instances still starting up.",
        ),
        _rule(
            "SG101",
            "inverted-planes",
            W,
            "Inner plane limit above the outer plane's",
            "A session limit above its agent's (or an agent's above its tenant's) on the same "
            "axis never binds. Make inner planes tighter.",
        ),
        _rule(
            "SG102",
            "burst-below-one-call",
            E,
            "Burst below one call",
            "A bucket whose capacity is below the cost of one call refuses that call forever.",
        ),
        _rule(
            "SG103",
            "tokens-below-max-request",
            W,
            "Token limit below one max-size request",
            "A token bucket smaller than one max-size request (128k tokens by default) refuses "
            "such requests forever. Raise `tokens_burst` to at least the largest request.",
        ),
        _rule(
            "SG104",
            "unreachable-tier",
            W,
            "Unreachable tier",
            "A tier that no tenant uses and that is not the default_tier is dead config.",
        ),
        _rule(
            "SG105",
            "init-held-by-tenant",
            W,
            "Init aggregate above the tenant plane",
            "Init calls still pass the tenant plane unless init.tenant gives them an allowance "
            "of their own, so an init aggregate larger than a tenant's burst can never be used: "
            "the fleet start is held to the tenant's steady-state burst.",
        ),
    )
}
del W, E


@dataclass(frozen=True)
class LintOptions:
    """Thresholds of the checks (all documented in ``docs/lint.md``)."""

    #: The largest single LLM request expected (SG103): a 128k context.
    max_request_tokens: float = 128_000
    #: A typical LLM request (SG102 on token buckets, SG004 token suggestions).
    typical_request_tokens: float = 4096
    #: Windowed limits at least this long count as huge windows (SG002), in seconds.
    huge_window: float = 3600.0
    #: One tenant may take at most this share of a pool without a breaker (SG006).
    pool_share: float = 0.5
    #: Listed tenants together may take at most this multiple of a pool (SG006).
    oversubscription: float = 2.0
    #: Treat the policy as fronting LLM routes when it declares no ``routes`` (SG004/SG103).
    assume_llm: bool = True


#: Top-level keys accepted by the linter though the core schema may not have them yet.
FUTURE_TOP_KEYS = ("routes", "upstreams", "gateway", "identity", "retry_budget", "init", "alerts")
_FUTURE_NESTED = ((re.compile(r"^pools\.[^.\[]+\.breaker(\.|\[|$)"), "pools", "breaker", PoolSpec),)


def supports(key: str) -> bool:
    """Whether the core schema already accepts ``key`` (top level, or ``breaker``); fixes that
    need an unsupported key are left as to-do comments."""
    if key == "breaker":
        return "breaker" in PoolSpec.model_fields
    return key in PolicySpec.model_fields


@dataclass
class LintDoc:
    """One policy as the checks see it."""

    source: str
    data: dict[str, Any]
    lines: dict[Loc, int]
    spec: PolicySpec
    policy: Policy
    #: ``sluicegate`` or the importer's name (``kong``, ``envoy``, ``litellm``).
    origin: str = "sluicegate"
    #: Whether the policy fronts LLM routes (``None``: decide from ``routes`` / options).
    llm: bool | None = None
    #: Where findings about the whole document point (an importer's best line).
    root_line: int | None = 1

    def line(self, loc: Loc) -> int | None:
        found = line_for(loc, self.lines)
        return found if found is not None else self.root_line

    def finding(
        self,
        code: str,
        loc: Loc,
        message: str,
        fix: str,
        patches: Iterable[Patch] = (),
        severity: Severity | None = None,
    ) -> Finding:
        return Finding(
            code,
            severity or RULES[code].severity,
            message,
            self.source,
            self.line(loc),
            dotted(loc),
            fix,
            tuple(patches),
        )


def _is_future_problem(path: str) -> bool:
    head = re.split(r"[.\[]", path, maxsplit=1)[0]
    if head in FUTURE_TOP_KEYS and not supports(head):
        return True
    return any(rx.match(path) and not supports(key) for rx, _, key, _m in _FUTURE_NESTED)


def strip_future(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` without the keys the core schema does not accept yet."""
    out = {k: v for k, v in data.items() if not (k in FUTURE_TOP_KEYS and not supports(k))}
    for _rx, group, key, _model in _FUTURE_NESTED:
        entries = out.get(group)
        if isinstance(entries, dict) and not supports(key):
            out[group] = {
                n: ({k: v for k, v in e.items() if k != key} if isinstance(e, dict) else e)
                for n, e in entries.items()
            }
    return out


def build_doc(
    text: str,
    source: str,
    *,
    origin: str = "sluicegate",
    lines: dict[Loc, int] | None = None,
    llm: bool | None = None,
    root_line: int | None = 1,
) -> LintDoc:
    """Validate policy YAML for linting. ``lines`` (an importer's map into the original file)
    replaces the YAML's own lines. Raises :class:`PolicyError` when the policy is invalid."""
    try:
        data, own_lines = load_located(text)
    except LocatedError as exc:
        raise PolicyError([PolicyProblem(source, exc.line, "", str(exc))]) from None
    if not isinstance(data, dict):
        load_policy_text(text, source)  # raises the loader's own message (empty, not a mapping)
        raise PolicyError([PolicyProblem(source, 1, "", "a policy must be a mapping of keys")])
    try:
        spec = load_policy_text(text, source)
    except PolicyError as exc:
        real = [p for p in exc.problems if not _is_future_problem(p.path)]
        if real:
            raise PolicyError(real) from None
        stripped = yaml.safe_dump(strip_future(data), sort_keys=False)
        spec = load_policy_text(stripped, source)
    return LintDoc(
        source=source,
        data=data,
        lines=lines if lines is not None else own_lines,
        spec=spec,
        policy=resolve(spec, source),
        origin=origin,
        llm=llm,
        root_line=root_line,
    )


def invalid_findings(exc: PolicyError) -> list[Finding]:
    """SG000 findings, one per validation problem."""
    return [
        Finding("SG000", Severity.ERROR, p.message, p.source, p.line, p.path, RULES["SG000"].help)
        for p in exc.problems
    ]


def lint_doc(doc: LintDoc, options: LintOptions | None = None) -> list[Finding]:
    """Every finding of every check, in file order (ties by code)."""
    from sluicegate.policy.lint_rules import CHECKS

    opts = options or LintOptions()
    found: list[Finding] = []
    for check in CHECKS:
        found += check(doc, opts)
    return sort_findings(found)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.source, f.line or 0, f.code, f.path))


def lint_text(
    text: str, source: str = "<policy>", options: LintOptions | None = None
) -> list[Finding]:
    """Lint sluicegate policy YAML; an invalid policy gives SG000 findings (nothing else)."""
    try:
        doc = build_doc(text, source)
    except PolicyError as exc:
        return invalid_findings(exc)
    return lint_doc(doc, options)


def lint_file(path: str | Path, options: LintOptions | None = None) -> list[Finding]:
    """Lint a sluicegate policy file (see :func:`lint_text`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        problem = PolicyProblem(str(p), None, "", f"cannot read: {exc.strerror}")
        return invalid_findings(PolicyError([problem]))
    except UnicodeDecodeError:
        return invalid_findings(PolicyError([PolicyProblem(str(p), None, "", "not UTF-8 text")]))
    return lint_text(text, str(p), options)


def reaches(findings: Sequence[Finding], fail_on: Severity) -> bool:
    """Whether any finding is at least as severe as ``fail_on`` (the CLI's exit 1)."""
    return any(f.severity.rank >= fail_on.rank for f in findings)


__all__ = [
    "DELETE",
    "RULES",
    "Finding",
    "LintDoc",
    "LintOptions",
    "Patch",
    "RuleInfo",
    "Severity",
    "build_doc",
    "lint_doc",
    "lint_file",
    "lint_text",
    "reaches",
]
