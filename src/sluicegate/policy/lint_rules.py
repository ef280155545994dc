"""The checks behind ``sluicegate lint`` (codes, rationale: :data:`sluicegate.policy.lint.RULES`).

Each check is a function ``(doc, options) -> list[Finding]``. Values come from the validated
spec and the resolved policy; locations and keys the schema does not know yet come from the raw
document. Where a fix is mechanical the finding carries patches; the numbers they suggest
(derived plane limits, bursts, token rates) are starting points, documented in ``docs/lint.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sluicegate.policy.lint import DELETE, Finding, LintDoc, LintOptions, Patch, supports
from sluicegate.policy.lint_yaml import Loc
from sluicegate.policy.located import value_at
from sluicegate.policy.resolve import Axis, Plane, Rule, plane_rules
from sluicegate.policy.schema import AXES, AXIS_BURST_KEYS, PLANES, PlaneLimits
from sluicegate.policy.units import Rate, format_count

BURST_KEY = dict(AXIS_BURST_KEYS)
#: Relative size of the planes when a fix derives missing planes from an existing one.
PLANE_SIZE = {"tenant": 1.0, "agent": 0.5, "session": 0.1}
RETRY_BUDGET_FIX: dict[str, Any] = {
    "percent": 10,
    "min_per_second": 1,
    "ttl": "10s",
    "max_per_trace": 10,
}
INIT_FIX: dict[str, Any] = {"window": "60s", "limits": {"requests": "200/min", "burst": 50}}
BREAKER_FIX: dict[str, Any] = {"share": 0.3, "window": "60s", "floor": "10/min", "cooldown": "120s"}


def raw(data: Any, loc: Loc) -> Any:
    """The raw value at ``loc`` (``None`` if absent)."""
    return value_at(data, loc)


def sig(x: float) -> float:
    """Three significant digits: derived limits stay readable."""
    return float(f"{x:.3g}")


def rate_text(count: float, period: float) -> str:
    return str(Rate(sig(count), period))


def suggest_capacity(axis: str, rate: Rate, opts: LintOptions) -> float:
    """A burst for a GCRA bucket: room for one agent burst (at least 20 calls, about ten seconds
    of rate); for tokens at least one max-size request; never above the rate's count unless a
    single call needs it."""
    if axis == "tokens":
        want = max(opts.max_request_tokens, math.ceil(rate.per_second * 60))
        return float(max(min(rate.count, want), opts.max_request_tokens))
    return float(max(1, min(rate.count, max(20, math.ceil(rate.per_second * 10)))))


def set_rate(doc: LintDoc, axis_loc: Loc, text: str) -> Patch:
    """Set an axis' rate whether it is written ``requests: 600/min`` or as a mapping."""
    if isinstance(raw(doc.data, axis_loc), dict):
        return Patch((*axis_loc, "rate"), text)
    return Patch(axis_loc, text)


@dataclass(frozen=True)
class Block:
    """One mapping of plane (or pool) limits in the document."""

    loc: Loc
    limits: PlaneLimits
    plane: str | None  # None for a pool
    group: str  # tiers, tenants, classes, pools


def blocks(doc: LintDoc) -> Iterator[Block]:
    spec = doc.spec
    for name, tier in spec.tiers.items():
        for p in PLANES:
            if getattr(tier, p) is not None:
                yield Block(("tiers", name, p), getattr(tier, p), p, "tiers")
    for name, tenant in spec.tenants.items():
        for p in PLANES:
            if getattr(tenant, p) is not None:
                yield Block(("tenants", name, p), getattr(tenant, p), p, "tenants")
    for name, cls in (spec.classes.model_extra or {}).items():
        limits = getattr(cls, "limits", None)
        for p in PLANES:
            if limits is not None and getattr(limits, p) is not None:
                yield Block(("classes", name, "limits", p), getattr(limits, p), p, "classes")
    for name, pool in spec.pools.items():
        yield Block(("pools", name), pool, None, "pools")


def _plane_of(block: Block) -> Plane:
    return Plane(block.plane) if block.plane else Plane.POOL


def is_llm(doc: LintDoc, opts: LintOptions) -> bool:
    if doc.llm is not None:
        return doc.llm
    routes = doc.data.get("routes")
    if isinstance(routes, list) and routes:
        return any(isinstance(r, dict) and r.get("llm", True) is not False for r in routes)
    return opts.assume_llm


def derived_plane(src: PlaneLimits, factor: float, opts: LintOptions) -> dict[str, Any]:
    """Limits for a missing plane, ``factor`` times ``src`` on every axis (GCRA, with bursts)."""
    out: dict[str, Any] = {}
    for axis in AXES:
        spec = getattr(src, axis)
        if spec is None:
            continue
        rate = Rate(sig(spec.rate.count * factor), spec.rate.period)
        out[axis] = str(rate)
        if axis == "requests":
            out["burst"] = _count(suggest_capacity(axis, rate, opts))
        elif axis == "tokens" and rate.count < opts.max_request_tokens:
            out["tokens_burst"] = format_count(opts.max_request_tokens)
    if src.concurrency is not None:
        out["concurrency"] = max(1, round(src.concurrency * factor))
    return out


# --- SG001 -------------------------------------------------------------------------------------


def check_one_plane(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    out: list[Finding] = []
    for name, tier in doc.spec.tiers.items():
        planes = [p for p in PLANES if getattr(tier, p) is not None]
        if len(planes) != 1:
            continue
        only = planes[0]
        src: PlaneLimits = getattr(tier, only)
        missing = [p for p in PLANES if p != only]
        patches = [
            Patch(("tiers", name, p), derived_plane(src, PLANE_SIZE[p] / PLANE_SIZE[only], opts))
            for p in missing
        ]
        who = {"tenant": "every agent and session of a tenant", "agent": "every session of an"}
        share = who.get(only, "a session's agents")
        out.append(
            doc.finding(
                "SG001",
                ("tiers", name),
                f"tier {name!r} limits only the {only} plane: {share}"
                + (" agent" if only == "agent" else "")
                + " shares one counter, so one runaway caller starves the rest",
                f"add {' and '.join(missing)} limits (e.g. agent at half the tenant's, session at "
                "a tenth), session tightest",
                patches,
            )
        )
    return out


# --- SG002 -------------------------------------------------------------------------------------


def check_windows(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    out: list[Finding] = []
    for block in blocks(doc):
        bad: list[str] = []
        patches: list[Patch] = []
        first_loc: Loc | None = None
        plane_algo = block.limits.algorithm
        for axis in AXES:
            spec = getattr(block.limits, axis)
            if spec is None:
                continue
            algo = spec.algorithm or plane_algo or "gcra"
            huge = algo == "sliding_window" and spec.rate.period >= opts.huge_window
            if algo != "fixed_window" and not huge:
                continue
            kind = "fixed window" if algo == "fixed_window" else "sliding window"
            bad.append(f"{axis} {spec.rate} ({kind})")
            axis_loc = (*block.loc, axis)
            algo_loc = (*axis_loc, "algorithm") if spec.algorithm else (*block.loc, "algorithm")
            first_loc = first_loc or algo_loc
            patches.append(Patch(algo_loc, DELETE))
        if not bad:
            continue
        for axis in AXES:  # every axis becomes GCRA: give each an explicit capacity
            spec = getattr(block.limits, axis)
            if spec is None or spec.burst is not None:
                continue
            if getattr(block.limits, BURST_KEY[axis]) is None:
                cap = suggest_capacity(axis, spec.rate, opts)
                patches.append(Patch((*block.loc, BURST_KEY[axis]), _count(cap)))
        where = ".".join(str(p) for p in block.loc)
        out.append(
            doc.finding(
                "SG002",
                first_loc or block.loc,
                f"{where} uses {', '.join(bad)}: "
                + (
                    "a think-then-act burst gets twice the limit at a window boundary, then a "
                    "lock-out until the window resets"
                    if any("fixed window" in b for b in bad)
                    else "one burst can spend the whole window's budget, then callers are locked "
                    "out for hours"
                ),
                "use GCRA (remove `algorithm`, gcra is the default) with an explicit burst sized "
                "for one agent burst",
                _dedupe(patches),
            )
        )
    return out


def _count(value: float) -> Any:
    return (
        int(value)
        if value >= 1 and float(value).is_integer() and value < 1e4
        else (format_count(value))
    )


def _dedupe(patches: list[Patch]) -> list[Patch]:
    seen: set[Loc] = set()
    out = []
    for p in patches:
        if p.loc not in seen:
            seen.add(p.loc)
            out.append(p)
    return out


# --- SG003 / SG007: keys the schema does not have yet ------------------------------------------


def check_retry_budget(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    budget = doc.data.get("retry_budget")
    patches = [Patch(("retry_budget",), RETRY_BUDGET_FIX)] if supports("retry_budget") else []
    fix = "add `retry_budget: {percent: 10, min_per_second: 1, ttl: 10s, max_per_trace: 10}`"
    if budget is None:
        return [
            doc.finding(
                "SG003",
                ("retry_budget",),
                "no retry budget: every SDK retry of a refused call competes again, and "
                "retries across a fan-out of sub-agents are not capped",
                fix,
                patches,
            )
        ]
    if isinstance(budget, dict) and budget.get("max_per_trace") is None:
        patch = [Patch(("retry_budget", "max_per_trace"), 10)] if patches else []
        return [
            doc.finding(
                "SG003",
                ("retry_budget",),
                "the retry budget does not cap retries per trace: one fan-out's retries can "
                "spend the whole budget",
                "add `max_per_trace: 10` to retry_budget",
                patch,
            )
        ]
    return []


def check_init_tier(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    if doc.data.get("init") is not None:
        return []
    patches = [Patch(("init",), INIT_FIX)] if supports("init") else []
    return [
        doc.finding(
            "SG007",
            ("init",),
            "no cold-start tier: a fleet of fresh instances starting at once gets full budgets "
            "immediately and stampedes the provider",
            "add `init: {window: 60s, limits: {requests: 200/min, burst: 50}}` and send the "
            "init token from starting instances",
            patches,
        )
    ]


# --- SG004 -------------------------------------------------------------------------------------


def check_tokens_axis(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    if not is_llm(doc, opts):
        return []
    spec = doc.spec
    weighted = bool(spec.costs) or spec.default_cost != 1
    out: list[Finding] = []
    for name, tier in spec.tiers.items():
        planes = [(p, getattr(tier, p)) for p in PLANES if getattr(tier, p) is not None]
        if any(lim.tokens is not None or (lim.cost is not None and weighted) for _, lim in planes):
            continue
        patches: list[Patch] = []
        for p, lim in planes:
            patches += _token_patches(("tiers", name, p), lim, opts)
        out.append(
            doc.finding(
                "SG004",
                ("tiers", name),
                f"tier {name!r} limits LLM calls by request count only: a 128k-token call "
                "costs the same as a 50-token one",
                "add a `tokens` limit on every plane (tokens per period sized to the provider "
                "quota), or a `cost` axis with `costs` rules",
                patches,
            )
        )
    for name, pool in spec.pools.items():
        if pool.tokens is None and not (pool.cost is not None and weighted):
            out.append(
                doc.finding(
                    "SG004",
                    ("pools", name),
                    f"pool {name!r} counts requests only, but an LLM provider's quota is in "
                    "tokens too (TPM)",
                    "add the provider's tokens-per-minute quota as `tokens`",
                    _token_patches(("pools", name), pool, opts),
                )
            )
    return out


def _token_patches(loc: Loc, lim: PlaneLimits, opts: LintOptions) -> list[Patch]:
    if lim.requests is None:
        return []
    rate = lim.requests.rate
    tokens = Rate(sig(rate.count * opts.typical_request_tokens), rate.period)
    patches = [Patch((*loc, "tokens"), str(tokens))]
    if tokens.count < opts.max_request_tokens:
        patches.append(Patch((*loc, "tokens_burst"), format_count(opts.max_request_tokens)))
    return patches


# --- SG005 -------------------------------------------------------------------------------------


def check_classes(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    classes = doc.policy.classes
    batch = classes["batch"]
    profiles = {(c.max_wait, c.scale, c.overrides) for c in classes.values()}
    unbounded = batch.scale >= 1.0 and not batch.overrides
    if not unbounded and len(profiles) > 1:
        return []
    raw_classes = doc.data.get("classes")
    declared = raw_classes if isinstance(raw_classes, dict) else {}
    patches: list[Patch] = []
    if "batch" in declared:
        patches.append(Patch(("classes", "batch", "scale"), 0.5))
        if batch.max_wait <= classes["interactive"].max_wait:
            patches.append(Patch(("classes", "batch", "max_wait"), "60s"))
    else:
        patches.append(
            Patch(
                ("classes", "batch"),
                {"priority": 2, "max_wait": "60s", "sla_p95": "60s", "scale": 0.5},
            )
        )
    if len(profiles) == 1:
        patches.append(Patch(("classes", "realtime"), {"priority": 0, "max_wait": "0s"}))
    why = (
        "every workload class has the same profile"
        if len(profiles) == 1
        else "batch has no scale or limits"
    )
    loc: Loc = ("classes", "batch") if "batch" in declared else ("classes",)
    return [
        doc.finding(
            "SG005",
            loc,
            f"{why}: batch jobs can take every budget and realtime calls wait behind them",
            "cap batch with `scale: 0.5` (max_wait 60s) and keep realtime at max_wait 0s, "
            "priority 0",
            patches,
        )
    ]


# --- SG006 -------------------------------------------------------------------------------------


def _reachable_tiers(doc: LintDoc) -> list[str]:
    used = {t.tier for t in doc.spec.tenants.values()}
    if doc.spec.default_tier:
        used.add(doc.spec.default_tier)
    return [t for t in doc.spec.tiers if t in used]


def _rule_map(rules: tuple[Rule, ...]) -> dict[tuple[Plane, Axis], Rule]:
    return {(r.plane, r.axis): r for r in rules if r.scope is None}


def _unguarded_pools(doc: LintDoc) -> list[tuple[str, list[tuple[str, Rate]]]]:
    """Pools without a tenant breaker, with their limited axes."""
    out = []
    for pname, pool in doc.spec.pools.items():
        if raw(doc.data, ("pools", pname, "breaker")) is not None:
            continue
        limits = [(a, getattr(pool, a)) for a in ("requests", "tokens", "cost")]
        out.append((pname, [(a, lim.rate) for a, lim in limits if lim is not None]))
    return out


def _share_text(share: float) -> str:
    if math.isinf(share):
        return "all"
    return f"{share:.0%}" if share <= 1 else f"{share:.1f}x"


def check_isolation(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    """SG006: a tenant may take most of an unguarded pool; tenants together far exceed it."""
    out: list[Finding] = []
    pools = _unguarded_pools(doc)
    breaker = supports("breaker")
    targets = [(("tiers", t), doc.policy.tier_rules[t]) for t in _reachable_tiers(doc)]
    targets += [
        (("tenants", n), doc.policy.tenant_rules[n])
        for n, t in doc.spec.tenants.items()
        if t.tenant is not None
    ]
    for base, rules_t in targets:
        name = str(base[1])
        override = doc.spec.tenants[name].tenant if base[0] == "tenants" else None
        rules = _rule_map(rules_t)
        bad: list[str] = []
        lowest: dict[str, Rate] = {}
        patches: list[Patch] = []
        for pname, axes in pools:
            for axis, prate in axes:
                if base[0] == "tenants" and getattr(override, axis, None) is None:
                    continue  # the tier's finding covers it
                rule = rules.get((Plane.TENANT, Axis(axis)))
                have = "no tenant limit" if rule is None or rule.rate is None else str(rule.rate)
                share = (
                    math.inf
                    if rule is None or rule.rate is None
                    else (rule.rate.per_second / prate.per_second)
                )
                if share <= opts.pool_share:
                    continue
                bad.append(
                    f"{_share_text(share)} of the {axis} of pool {pname!r} ({have} vs {prate})"
                )
                if breaker:
                    patches.append(Patch(("pools", pname, "breaker"), BREAKER_FIX))
                target = Rate(sig(prate.count * opts.pool_share / 2), prate.period)
                if axis not in lowest or target.per_second < lowest[axis].per_second:
                    lowest[axis] = target
        if not bad:
            continue
        if not breaker:
            patches = [set_rate(doc, (*base, "tenant", a), str(r)) for a, r in lowest.items()]
        who = f"one tenant of tier {name!r}" if base[0] == "tiers" else f"tenant {name!r}"
        out.append(
            doc.finding(
                "SG006",
                (*base, "tenant") if raw(doc.data, (*base, "tenant")) else base,
                f"{who} may take {'; '.join(bad)}, and no tenant breaker guards the pool",
                f"cap the tenant plane well below each shared pool (at most "
                f"{opts.pool_share:.0%}; the fix uses half that) and add a tenant breaker",
                _dedupe(patches),
            )
        )
    for pname, axes in pools:
        fix_breaker = [Patch(("pools", pname, "breaker"), BREAKER_FIX)] if breaker else []
        for axis, prate in axes:
            total = 0.0
            n = 0
            for rules_t in doc.policy.tenant_rules.values():
                rule = _rule_map(rules_t).get((Plane.TENANT, Axis(axis)))
                if rule is not None and rule.rate is not None:
                    total += rule.rate.per_second
                    n += 1
            if n and total > prate.per_second * opts.oversubscription:
                ratio = total / prate.per_second
                out.append(
                    doc.finding(
                        "SG006",
                        ("pools", pname, axis),
                        f"the {n} listed tenants may together take {ratio:.1f}x pool "
                        f"{pname!r} on {axis} ({prate}), and no tenant breaker guards the pool",
                        "add a tenant breaker to the pool, or lower tenant limits so they sum "
                        f"to at most {opts.oversubscription:g}x the pool",
                        fix_breaker,
                    )
                )
    return out


# --- SG1xx: plain mistakes ---------------------------------------------------------------------

_PAIRS = (("agent", "session"), ("tenant", "agent"))


def check_inverted(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    out: list[Finding] = []
    targets: list[tuple[Loc, tuple[Rule, ...], set[str] | None]] = [
        (("tiers", n), doc.policy.tier_rules[n], None) for n in doc.spec.tiers
    ]
    for n, tenant in doc.spec.tenants.items():
        planes = {p for p in PLANES if getattr(tenant, p) is not None}
        if planes:
            targets.append((("tenants", n), doc.policy.tenant_rules[n], planes))
    for base, rules_t, touched in targets:
        rules = _rule_map(rules_t)
        for outer, inner in _PAIRS:
            if touched is not None and not ({outer, inner} & touched):
                continue
            for axis in (Axis.REQUESTS, Axis.TOKENS, Axis.COST, Axis.CONCURRENCY):
                o = rules.get((Plane(outer), axis))
                i = rules.get((Plane(inner), axis))
                if o is None or i is None:
                    continue
                if axis is Axis.CONCURRENCY:
                    above = i.capacity > o.capacity
                    i_text, o_text = f"{i.capacity:g}", f"{o.capacity:g}"
                else:
                    assert i.rate is not None and o.rate is not None
                    above = i.rate.per_second > o.rate.per_second * (1 + 1e-9)
                    i_text, o_text = str(i.rate), str(o.rate)
                if not above:
                    continue
                loc = (*base, inner, axis.value)
                if touched is not None and inner not in touched:
                    loc = (*base, outer, axis.value)
                if axis is Axis.CONCURRENCY:
                    patch = Patch((*base, inner, "concurrency"), int(o.capacity))
                else:
                    assert o.rate is not None
                    patch = set_rate(doc, (*base, inner, axis.value), str(o.rate))
                out.append(
                    doc.finding(
                        "SG101",
                        loc,
                        f"{inner} {axis.value} limit {i_text} is above the {outer} limit "
                        f"{o_text}: it can never bind",
                        f"lower the {inner} limit below the {outer} limit",
                        [patch] if touched is None or inner in touched else [],
                    )
                )
    return out


def _max_call_cost(doc: LintDoc) -> float:
    return max([doc.spec.default_cost, *(c.units for c in doc.spec.costs)])


def check_capacities(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    """SG102 (a bucket below one call) and SG103 (a token bucket below one max-size call)."""
    out: list[Finding] = []
    llm = is_llm(doc, opts)
    max_cost = _max_call_cost(doc)
    for block in blocks(doc):
        for rule in plane_rules(_plane_of(block), block.limits):
            if rule.axis is Axis.CONCURRENCY:
                continue
            axis = rule.axis.value
            spec = getattr(block.limits, axis)
            if spec.burst is not None:
                burst_loc: Loc = (*block.loc, axis, "burst")
            elif getattr(block.limits, BURST_KEY[axis]) is not None:
                burst_loc = (*block.loc, BURST_KEY[axis])
            else:
                burst_loc = (*block.loc, axis)
            fix_loc = burst_loc if burst_loc[-1] != axis else (*block.loc, BURST_KEY[axis])
            cap = rule.capacity
            where = ".".join(str(p) for p in block.loc)
            need: float | None = None
            if axis == "requests" and cap < 1:
                need, what = 1.0, "one call"
            elif axis == "cost" and cap < max_cost:
                need, what = max_cost, f"the costliest call ({max_cost:g} units)"
            elif axis == "tokens" and llm and cap < opts.typical_request_tokens:
                need = opts.max_request_tokens
                what = f"a typical request ({format_count(opts.typical_request_tokens)} tokens)"
            if need is not None:
                out.append(
                    doc.finding(
                        "SG102",
                        burst_loc,
                        f"{where} {axis} capacity {format_count(cap)} is below {what}: such "
                        "calls are refused forever",
                        f"raise the capacity ({BURST_KEY[axis]}) to at least {format_count(need)}",
                        [Patch(fix_loc, _count(need))],
                    )
                )
            elif axis == "tokens" and llm and cap < opts.max_request_tokens:
                big = format_count(opts.max_request_tokens)
                out.append(
                    doc.finding(
                        "SG103",
                        burst_loc,
                        f"{where} tokens capacity {format_count(cap)} is below one max-size "
                        f"request ({big} tokens): such requests are refused forever",
                        f"set `tokens_burst: {big}` (the rate can stay), or lower the max "
                        "request size with --max-request-tokens if yours are smaller",
                        [Patch(fix_loc, big)],
                    )
                )
    return out


def check_unreachable(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    reachable = set(_reachable_tiers(doc))
    out: list[Finding] = []
    for name in doc.spec.tiers:
        if name in reachable:
            continue
        patches = [Patch(("tiers", name), DELETE)] if len(doc.spec.tiers) > 1 else []
        out.append(
            doc.finding(
                "SG104",
                ("tiers", name),
                f"tier {name!r} is used by no tenant and is not the default_tier",
                "assign it to a tenant, make it the default_tier, or remove it",
                patches,
            )
        )
    return out


def check_init_held(doc: LintDoc, opts: LintOptions) -> list[Finding]:
    """SG105: without ``init.tenant``, init calls pass the tenant plane, so an aggregate burst
    above a tier's tenant burst is out of reach for that tier's fleets."""
    init = doc.policy.init
    if init is None or init.tenant_rules is not None:
        return []
    aggregate = {r.axis: r for r in init.aggregate_rules}
    agg = aggregate.get(Axis.REQUESTS)
    if agg is None or agg.rate is None:
        return []
    held = []
    for tier in _reachable_tiers(doc):
        tenant = _rule_map(doc.policy.tier_rules[tier]).get((Plane.TENANT, Axis.REQUESTS))
        if tenant is not None and tenant.capacity < agg.capacity:
            held.append((tier, tenant.capacity))
    if not held:
        return []
    tiers = ", ".join(f"{t!r} ({format_count(c)})" for t, c in held)
    allowance = {
        "requests": rate_text(agg.rate.count, agg.rate.period),
        "burst": _count(agg.capacity),
    }
    patches = [Patch(("init", "tenant"), allowance)]
    return [
        doc.finding(
            "SG105",
            ("init", "aggregate"),
            f"the init aggregate holds {format_count(agg.capacity)} calls, but init calls also "
            f"pass the tenant plane, whose burst is smaller in tier {tiers}: a fleet start is "
            "held to the tenant's steady-state burst",
            f"give starting instances a tenant allowance of their own: `init: {{tenant: "
            f"{{requests: {allowance['requests']}, burst: {allowance['burst']}}}}}`",
            patches,
        )
    ]


Check = Callable[[LintDoc, LintOptions], list[Finding]]
CHECKS: tuple[Check, ...] = (
    check_one_plane,
    check_windows,
    check_retry_budget,
    check_tokens_axis,
    check_classes,
    check_isolation,
    check_init_tier,
    check_inverted,
    check_capacities,
    check_unreachable,
    check_init_held,
)
