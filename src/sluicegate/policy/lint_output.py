"""Rendering lint findings: ``text`` (coloured only on a TTY), ``json`` and SARIF 2.1.0.

SARIF follows the OASIS SARIF 2.1.0 schema as GitHub code scanning reads it: one run whose
``tool.driver.rules`` lists every rule (id, name, shortDescription, fullDescription, help,
defaultConfiguration.level), and one result per finding with ``ruleId``, ``ruleIndex``, ``level``
(``error`` / ``warning`` / ``note``), ``message.text`` (the finding and its fix), a physical
location (``artifactLocation.uri``, relative to the working directory when possible, and
``region.startLine``) and a logical location naming the dotted policy path.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sluicegate.policy.lint import RULES, Finding, Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
_COLOUR = {Severity.ERROR: "\033[31m", Severity.WARNING: "\033[33m", Severity.INFO: "\033[36m"}
_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"


def summary(findings: Sequence[Finding]) -> str:
    counts = Counter(f.severity for f in findings)
    if not findings:
        return "no findings"
    parts = [f"{counts[s]} {s.value}{'s' if counts[s] != 1 else ''}" for s in reversed(Severity)]
    n = len(findings)
    return f"{n} finding{'s' if n != 1 else ''} ({', '.join(parts)})"


def render_text(findings: Sequence[Finding], *, colour: bool = False) -> str:
    """``file:line: severity CODE path: message`` and an indented ``fix:`` line per finding."""
    lines = []
    for f in findings:
        where = f"{f.source}:{f.line}" if f.line is not None else f.source
        sev = f.severity.value
        code = f.code
        if colour:
            sev = f"{_COLOUR[f.severity]}{sev}{_RESET}"
            code = f"{_BOLD}{code}{_RESET}"
            where = f"{_BOLD}{where}{_RESET}"
        at = f" {f.path}:" if f.path else ""
        lines.append(f"{where}: {sev} {code}{at} {f.message}")
        fix = f"  fix: {f.fix}"
        lines.append(f"{_DIM}{fix}{_RESET}" if colour else fix)
    lines.append(summary(findings))
    return "\n".join(lines) + "\n"


def render_json(findings: Sequence[Finding]) -> str:
    counts = Counter(f.severity.value for f in findings)
    doc = {
        "findings": [f.as_dict() for f in findings],
        "summary": {s.value: counts.get(s.value, 0) for s in Severity} | {"total": len(findings)},
    }
    return json.dumps(doc, indent=2) + "\n"


def _uri(source: str) -> str:
    """A relative URI for files under the working directory (code scanning's convention)."""
    if source.startswith("<"):
        return source.strip("<>")
    path = Path(source)
    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
        return rel.as_posix()
    except ValueError:
        return path.resolve().as_uri() if path.is_absolute() else source.replace(os.sep, "/")


def sarif(findings: Sequence[Finding], *, version: str = "0.1.0") -> dict[str, Any]:
    """The SARIF 2.1.0 log as a dict (see the module docstring)."""
    rule_ids = list(RULES)
    rules = [
        {
            "id": r.code,
            "name": r.name,
            "shortDescription": {"text": r.title},
            "fullDescription": {"text": r.help},
            "help": {
                "text": f"{r.help} See docs/lint.md.",
                "markdown": f"**{r.code} {r.title}**\n\n{r.help}\n\nSee `docs/lint.md`.",
            },
            "defaultConfiguration": {"level": _LEVEL[r.severity]},
        }
        for r in RULES.values()
    ]
    results = []
    for f in findings:
        physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(f.source)}}
        if f.line is not None and f.line >= 1:
            physical["region"] = {"startLine": f.line}
        location: dict[str, Any] = {"physicalLocation": physical}
        if f.path:
            location["logicalLocations"] = [{"fullyQualifiedName": f.path, "kind": "member"}]
        results.append(
            {
                "ruleId": f.code,
                "ruleIndex": rule_ids.index(f.code),
                "level": _LEVEL[f.severity],
                "message": {"text": f"{f.message}. Fix: {f.fix}"},
                "locations": [location],
            }
        )
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "sluicegate",
                        "version": version,
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }


def render_sarif(findings: Sequence[Finding]) -> str:
    return json.dumps(sarif(findings), indent=2) + "\n"


def render(findings: Sequence[Finding], fmt: str, *, colour: bool = False) -> str:
    if fmt == "json":
        return render_json(findings)
    if fmt == "sarif":
        return render_sarif(findings)
    return render_text(findings, colour=colour)
