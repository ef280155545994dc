"""``sluicegate convert``: apply the linter's mechanical fixes and write sluicegate policy YAML.

Fixes are applied in rounds, re-linting between them, because some fixes feed others:

1. tenant caps below shared pools (SG006) and unreachable tiers (SG104);
2. windows -> GCRA with bursts sized for the fixed rates (SG002), capacities (SG102, SG103);
3. missing planes derived from the fixed limits (SG001);
4. token axes derived from the request limits (SG004);
5. classes and the agentic keys (SG005, SG003, SG007);
6. any inversion or capacity problem the earlier rounds produced (SG101, SG102, SG103).

Each applied fix is marked in the output with a ``# fixed SG00x: ...`` comment above the key it
changed. A fix whose result would not validate is skipped (never written); findings without a
mechanical fix (today SG003 and SG007, whose keys the schema does
not have yet, and SG006 oversubscription, which needs a breaker) are listed at the top as
``# todo SG00x: ...``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from sluicegate.errors import PolicyError
from sluicegate.policy.lint import (
    DELETE,
    Finding,
    LintDoc,
    LintOptions,
    Patch,
    build_doc,
    lint_doc,
)
from sluicegate.policy.lint_yaml import Loc, dump_yaml
from sluicegate.policy.located import exists

ROUNDS: tuple[frozenset[str], ...] = (
    frozenset({"SG006", "SG104"}),
    frozenset({"SG002", "SG102", "SG103"}),
    frozenset({"SG001"}),
    frozenset({"SG004"}),
    frozenset({"SG005", "SG003", "SG007"}),
    frozenset({"SG101", "SG102", "SG103", "SG105"}),
)


@dataclass
class Converted:
    """The converted policy: its YAML text, the findings fixed and those left to do."""

    text: str
    data: dict[str, Any]
    fixed: list[Finding] = field(default_factory=list)
    remaining: list[Finding] = field(default_factory=list)


def apply_patch(data: dict[str, Any], patch: Patch) -> None:
    *parents, last = patch.loc
    cur: Any = data
    for part in parents:
        if isinstance(cur, dict):
            nxt = cur.get(part)
            if not isinstance(nxt, dict | list):
                nxt = {}
                cur[part] = nxt
            cur = nxt
        elif isinstance(cur, list) and isinstance(part, int):
            cur = cur[part]
    if isinstance(cur, dict):
        if patch.value is DELETE:
            cur.pop(last, None)
        elif isinstance(cur.get(last), dict) and isinstance(patch.value, dict):
            cur[last].update(copy.deepcopy(patch.value))
        elif isinstance(cur.get(last), str) and isinstance(patch.value, dict):
            cur[last] = {"rate": cur[last], **patch.value}
        else:
            cur[last] = copy.deepcopy(patch.value)


def _anchor(data: dict[str, Any], loc: Loc) -> Loc:
    while loc and not exists(data, loc):
        loc = loc[:-1]
    return loc


def _rebuild(doc: LintDoc, data: dict[str, Any]) -> LintDoc:
    return build_doc(
        dump_yaml(data),
        doc.source,
        origin=doc.origin,
        lines=doc.lines,
        llm=doc.llm,
        root_line=doc.root_line,
    )


def convert(
    doc: LintDoc,
    options: LintOptions | None = None,
    *,
    comments: dict[Loc, list[str]] | None = None,
    header: list[str] | None = None,
) -> Converted:
    """Fix ``doc`` and render it. ``comments`` (an importer's provenance notes, keyed by
    location in the policy document) and ``header`` lines are kept in the output."""
    data = copy.deepcopy(doc.data)
    notes: dict[Loc, list[str]] = {k: list(v) for k, v in (comments or {}).items()}
    fixed: list[Finding] = []
    current = doc
    for codes in ROUNDS:
        round_fixed = [f for f in lint_doc(current, options) if f.code in codes and f.patches]
        for finding in round_fixed:
            trial = copy.deepcopy(data)
            for patch in finding.patches:
                apply_patch(trial, patch)
            try:
                rebuilt = _rebuild(doc, trial)
            except PolicyError:
                continue  # the fix does not validate (e.g. a key's shape changed): a todo
            data, current = trial, rebuilt
            target = next((p.loc for p in finding.patches if p.value is not DELETE), None)
            if target is None:
                target = finding.patches[0].loc[:-1]
            text = f"fixed {finding.code}: {finding.fix}"
            if text not in notes.setdefault(target, []):
                notes[target].append(text)
            fixed.append(finding)
    remaining = lint_doc(current, options)
    anchored: dict[Loc, list[str]] = {}
    for loc, lines in notes.items():
        anchored.setdefault(_anchor(data, loc), []).extend(lines)
    top = list(header or [])
    top += anchored.pop((), [])
    for f in remaining:
        top.append(f"todo {f.code}: {f.message}; fix: {f.fix}")
    text = dump_yaml(data, anchored, top)
    return Converted(text=text, data=data, fixed=fixed, remaining=remaining)
