"""What importers produce (:class:`Imported`) and the builder they share.

An importer reports limits as *candidates*: ``(where in the policy, axis, rate, algorithm, source
line, label)``. Several candidates for the same plane and axis (Kong's ``second`` + ``minute`` +
``hour``, or the same limit on several routes) are merged by keeping the one with the lowest
sustained rate (the one that binds in the long run); the others are recorded as notes, because a
sluicegate plane has one rate per axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sluicegate.policy.lint import LintDoc, build_doc
from sluicegate.policy.lint_yaml import Loc, dump_yaml, load_located
from sluicegate.policy.units import Rate

DEFAULT_TIER = "default"


@dataclass
class Imported:
    """A config mapped to a sluicegate policy document, with lines into the original file."""

    kind: str
    source: str
    data: dict[str, Any]
    lines: dict[Loc, int]
    comments: dict[Loc, list[str]] = field(default_factory=dict)
    #: What the mapping could not carry over, or approximated (written at the top on convert).
    notes: list[str] = field(default_factory=list)
    llm: bool | None = None
    root_line: int | None = 1
    text: str | None = None  # the original text, for native sluicegate policies

    @classmethod
    def native(cls, text: str, source: str) -> Imported:
        """A sluicegate policy as it is (lint checks it directly)."""
        try:
            data, lines = load_located(text)
        except ValueError:
            data, lines = {}, {}
        return cls("sluicegate", source, data if isinstance(data, dict) else {}, lines, text=text)

    def lint_doc(self) -> LintDoc:
        """Validate the document for linting (raises ``PolicyError`` if it is invalid)."""
        text = self.text if self.text is not None else dump_yaml(self.data)
        return build_doc(
            text,
            self.source,
            origin=self.kind,
            lines=None if self.text is not None else self.lines,
            llm=self.llm,
            root_line=self.root_line,
        )

    def header(self) -> list[str]:
        if self.kind == "sluicegate":
            return [f"Rewritten by `sluicegate convert` from {self.source} (comments not kept)."]
        out = [
            f"Converted by `sluicegate convert --from {self.kind}` from {self.source}.",
            "Equivalent limits first; every lint fix applied is marked `# fixed SGxxx`.",
        ]
        out += [f"note: {n}" for n in self.notes]
        return out


@dataclass
class _Candidate:
    rate: Rate
    algorithm: str | None
    line: int | None
    label: str
    shadow: bool = False


class Builder:
    """Collects candidates and writes the policy document and its line map."""

    def __init__(self, kind: str, source: str, src_lines: dict[Loc, int]) -> None:
        self.kind = kind
        self.source = source
        self.src_lines = src_lines
        self.notes: list[str] = []
        self.comments: dict[Loc, list[str]] = {}
        self.lines: dict[Loc, int] = {}
        self._limits: dict[tuple[Loc, str], list[_Candidate]] = {}
        self._extra: dict[Loc, tuple[Any, int | None]] = {}
        self.tenants: dict[str, int | None] = {}
        self.llm = False

    def line(self, loc: Loc) -> int | None:
        return self.src_lines.get(loc)

    def where(self, loc: Loc) -> str:
        from sluicegate.policy.lint_yaml import dotted

        line = self.line(loc)
        return f"{dotted(loc)} (line {line})" if line else dotted(loc)

    def limit(
        self,
        base: Loc,
        axis: str,
        rate: Rate,
        algorithm: str | None,
        src: Loc,
        label: str,
        shadow: bool = False,
    ) -> None:
        """A candidate limit for the plane (or pool) at ``base`` on ``axis``."""
        line = self.line(src)
        self._limits.setdefault((base, axis), []).append(
            _Candidate(rate, algorithm, line, label, shadow)
        )
        self.lines.setdefault(base, line or 1)

    def set(self, loc: Loc, value: Any, src: Loc | None = None) -> None:
        """A plain key (``concurrency``, ``default_tier``, ...)."""
        self._extra[loc] = (value, self.line(src) if src else None)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def tenant(self, name: str, src: Loc) -> None:
        self.tenants.setdefault(name, self.line(src))

    def has(self, base: Loc) -> bool:
        return any(b == base for b, _ in self._limits)

    def pool_total(self, axis: str) -> Rate | None:
        """Sum of every pool's rate on ``axis`` (per minute), or ``None`` if no pool has it."""
        total = 0.0
        for (base, ax), cands in self._limits.items():
            if base[0] == "pools" and ax == axis:
                total += min(c.rate.per_second for c in cands)
        return Rate(round(total * 60, 3), 60.0) if total else None

    def build(self, root_line: int | None = 1) -> Imported:
        data: dict[str, Any] = {"version": 1}
        lines: dict[Loc, int] = {(): root_line or 1}
        for (base, axis), cands in self._limits.items():
            best = min(cands, key=lambda c: c.rate.per_second)
            entry: dict[str, Any] = {"rate": str(best.rate)}
            if best.algorithm and best.algorithm != "gcra":
                entry["algorithm"] = best.algorithm
            if best.shadow:
                entry["shadow"] = True
            cur = data
            for part in base:
                cur = cur.setdefault(str(part), {})
            cur[axis] = entry if len(entry) > 1 else entry["rate"]
            if best.line:
                lines[(*base, axis)] = best.line
            self.comments.setdefault((*base, axis), []).append(
                f"from {best.label}" + (f" (line {best.line})" if best.line else "")
            )
            for other in cands:
                if other is not best:
                    self.note(
                        f"{other.label} (line {other.line}) = {other.rate} not kept: "
                        f"{'.'.join(map(str, base))}.{axis} keeps the tighter {best.rate}"
                    )
        for loc, (value, line) in self._extra.items():
            cur = data
            for part in loc[:-1]:
                cur = cur.setdefault(str(part), {})
            cur[str(loc[-1])] = value
            if line:
                lines[loc] = line
        for base, line in self.lines.items():
            lines.setdefault(base, line)
        tiers = data.setdefault("tiers", {})
        if not tiers:
            self._shared_only_tier(data, lines)
        if "default_tier" not in data and DEFAULT_TIER in data["tiers"]:
            data["default_tier"] = DEFAULT_TIER
        tenants = data.get("tenants", {})
        for name, line in self.tenants.items():
            tenants.setdefault(name, {})
            if line:
                lines.setdefault(("tenants", name), line)
        for name, entry in list(tenants.items()):
            tenants[name] = {"tier": entry.get("tier", DEFAULT_TIER)} | entry
        if tenants:
            data["tenants"] = tenants
        order = ["version", "tiers", "default_tier", "tenants", "pools"]
        data = {k: data[k] for k in order if k in data} | {
            k: v for k, v in data.items() if k not in order
        }
        return Imported(
            kind=self.kind,
            source=self.source,
            data=data,
            lines=lines,
            comments=self.comments,
            notes=self.notes,
            llm=self.llm,
            root_line=root_line,
        )

    def _shared_only_tier(self, data: dict[str, Any], lines: dict[Loc, int]) -> None:
        """No per-caller limit at all: every caller shares the pools. A sluicegate tier needs a
        plane, so the tenant plane gets the pools' combined rate, which never binds before the
        pools do (equivalent)."""
        plane: dict[str, Any] = {}
        for axis in ("requests", "tokens"):
            total = self.pool_total(axis)
            if total is not None:
                plane[axis] = str(total)
        if not plane:
            plane = {"requests": "1G/min"}
        data["tiers"] = {DEFAULT_TIER: {"tenant": plane}}
        first = min((v for k, v in lines.items() if k and k[0] == "pools"), default=1)
        lines[("tiers", DEFAULT_TIER)] = first
        self.comments[("tiers", DEFAULT_TIER)] = [
            "no per-caller limit in the source: every caller shares the pools (this tenant "
            "limit is their sum, so it never binds first)"
        ]
        self.note("the source limits no caller identity: all counters are shared by every caller")
