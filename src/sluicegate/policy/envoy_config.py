"""envoyproxy/ratelimit descriptor configuration as a policy source.

Existing Envoy users can point Envoy at ``sluicegate rls --envoy-config FILE`` without rewriting
their configuration. The file format is envoyproxy/ratelimit's (one YAML document per domain)::

    domain: mongo_cps
    descriptors:
      - key: database
        value: users
        rate_limit: {unit: second, requests_per_unit: 500}
      - key: remote_address            # no value: every distinct value gets its own counter
        rate_limit: {unit: minute, requests_per_unit: 10}
        descriptors:
          - key: path
            value: /admin*             # a trailing ``*`` matches by prefix
            shadow_mode: true          # decide and report, never refuse
            rate_limit: {unit: hour, requests_per_unit: 20}
      - key: client_id
        value: internal
        rate_limit: {unlimited: true}  # always OK, never counted
      - key: tier
        value: premium
        rate_limit: {name: premium, unit: second, requests_per_unit: 100,
                     replaces: [{name: standard}]}

Matching follows that project's documented semantics (``GetLimit``): a request descriptor's
entries are walked in order through the tree; at each level an exact ``key_value`` node wins
over a wildcard-value (``value: foo*``) node, which wins over a key-only node; the limit that
applies is the one on the node reached by the *last* entry, so the most specific configured
descriptor wins and a request descriptor longer or shorter than any configured path has no
limit. ``unlimited`` limits answer OK and count nothing; ``shadow_mode`` limits are counted but
never refuse (reported as "would refuse"); when a matched limit ``replaces`` another by name,
the replaced limit is skipped for that request.

How it maps onto sluicegate: each configured ``rate_limit`` becomes one fixed-window bucket
(``Algorithm.FIXED_WINDOW``: ``requests_per_unit`` per ``unit``, as envoyproxy/ratelimit
counts), keyed by the domain and the request's descriptor values (so a key-only node counts
each distinct value separately). The hit count (``hits_addend``) is the bucket's cost. Unlike
envoyproxy/ratelimit, all enforced buckets of one request are checked and consumed atomically
in one store call: a refused request consumes nothing. These descriptor limits do not use the
identity planes; use a sluicegate policy (``--policy``) for tenant / agent / session limits.

This module is pure (no I/O beyond reading the file): it parses, validates and matches. The
RLS (:mod:`sluicegate.integrations.rls`) applies the matched buckets to a store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluicegate.errors import PolicyError, PolicyProblem
from sluicegate.stores.base import Algorithm, Limit

#: Seconds per envoyproxy/ratelimit unit.
UNIT_SECONDS: Mapping[str, float] = {
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "week": 7 * 86400.0,
    "month": 30 * 86400.0,
    "year": 365 * 86400.0,
}

UnitName = Literal["second", "minute", "hour", "day", "week", "month", "year"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplacesSpec(_Strict):
    name: str


class RateLimitSpec(_Strict):
    """``rate_limit:`` of one descriptor. Unit names are case-insensitive, as in Go."""

    unit: str | None = None
    requests_per_unit: int | None = Field(default=None, ge=0)
    unit_multiplier: int = Field(default=1, ge=1)
    unlimited: bool = False
    name: str | None = None
    replaces: list[ReplacesSpec] = Field(default_factory=list)


class DescriptorSpec(_Strict):
    key: str = Field(min_length=1)
    value: str | None = None
    rate_limit: RateLimitSpec | None = None
    descriptors: list[DescriptorSpec] = Field(default_factory=list)
    shadow_mode: bool = False
    detailed_metric: bool = False
    #: Some configs in the wild carry a free-form ``name`` on descriptors; it is ignored.
    name: str | None = None


class EnvoyConfigSpec(_Strict):
    domain: str = Field(min_length=1)
    descriptors: list[DescriptorSpec] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EnvoyLimit:
    """One configured ``rate_limit``, resolved. ``path`` is the configured descriptor path it
    sits at (``key`` or ``key_value`` per level), used for names, metrics and bucket keys."""

    path: tuple[str, ...]
    requests_per_unit: int
    unit: str
    unit_multiplier: int
    unlimited: bool
    shadow_mode: bool
    detailed_metric: bool
    name: str | None
    replaces: tuple[str, ...]

    @property
    def window(self) -> float:
        return UNIT_SECONDS[self.unit] * self.unit_multiplier

    @property
    def limit(self) -> Limit:
        """The store bucket: a fixed window of ``requests_per_unit`` per ``unit``."""
        return Limit(Algorithm.FIXED_WINDOW, self.window, float(self.requests_per_unit))

    @property
    def label(self) -> str:
        return self.name or ".".join(self.path)


@dataclass(slots=True)
class _Node:
    limit: EnvoyLimit | None = None
    children: dict[str, _Node] = field(default_factory=dict)
    #: ``(prefix, node)`` of wildcard-value children (``value: foo*``), longest prefix first.
    wildcards: list[tuple[str, str, _Node]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Match:
    """The limit matched by one request descriptor and the bucket key it counts in."""

    limit: EnvoyLimit
    key: str


@dataclass(frozen=True)
class EnvoyDomain:
    """The descriptor tree of one domain, ready for matching."""

    domain: str
    root: _Node
    source: str

    def match(self, entries: Sequence[tuple[str, str]]) -> EnvoyLimit | None:
        """The limit for one request descriptor (its ``(key, value)`` entries), or None."""
        children = self.root.children
        wildcards = self.root.wildcards
        found: EnvoyLimit | None = None
        last = len(entries) - 1
        for i, (key, value) in enumerate(entries):
            node = children.get(f"{key}_{value}")
            if node is None:
                for wkey, prefix, wnode in wildcards:
                    if wkey == key and value.startswith(prefix):
                        node = wnode
                        break
            if node is None:
                node = children.get(key)
            if node is None:
                return None
            if i == last:
                found = node.limit
            if not node.children and not node.wildcards:
                break
            children, wildcards = node.children, node.wildcards
        return found

    def bucket_key(self, entries: Sequence[tuple[str, str]]) -> str:
        """Counter key: domain and every entry of the request descriptor (hash-tagged by domain
        so all of one request's buckets share a Redis Cluster slot)."""
        from sluicegate.engine.core import safe_id  # engine has no dependency on this module

        parts = "|".join(f"{safe_id(k)}={safe_id(v)}" for k, v in entries)
        return f"sg:{{envoy:{safe_id(self.domain)}}}:{parts}"

    def select(self, descriptors: Sequence[Sequence[tuple[str, str]]]) -> list[Match | None]:
        """Matches for every request descriptor, in order, with ``replaces`` applied: a limit
        named in another matched limit's ``replaces`` is dropped (its descriptor gets None)."""
        matches: list[Match | None] = []
        for entries in descriptors:
            lim = self.match(entries)
            matches.append(None if lim is None else Match(lim, self.bucket_key(entries)))
        replaced = {r for m in matches if m is not None for r in m.limit.replaces}
        if replaced:
            matches = [None if m is not None and m.limit.name in replaced else m for m in matches]
        return matches


def _build(
    specs: Sequence[DescriptorSpec],
    node: _Node,
    path: tuple[str, ...],
    problems: list[str],
) -> None:
    for d in specs:
        here = f"{d.key}_{d.value}" if d.value else d.key
        child = _Node()
        full = (*path, here)
        if d.rate_limit is not None:
            rl = d.rate_limit
            if not rl.unlimited:
                if rl.unit is None or rl.unit.lower() not in UNIT_SECONDS:
                    problems.append(f"{'.'.join(full)}: rate_limit.unit {rl.unit!r} is not one of "
                                    f"{', '.join(UNIT_SECONDS)}")  # fmt: skip
                    continue
                if rl.requests_per_unit is None:
                    problems.append(f"{'.'.join(full)}: rate_limit.requests_per_unit is required")
                    continue
            child.limit = EnvoyLimit(
                path=full,
                requests_per_unit=rl.requests_per_unit or 0,
                unit=(rl.unit or "second").lower(),
                unit_multiplier=rl.unit_multiplier,
                unlimited=rl.unlimited,
                shadow_mode=d.shadow_mode,
                detailed_metric=d.detailed_metric,
                name=rl.name,
                replaces=tuple(r.name for r in rl.replaces),
            )
        _build(d.descriptors, child, full, problems)
        if d.value and d.value.endswith("*"):
            node.wildcards.append((d.key, d.value[:-1], child))
        else:
            if here in node.children:
                problems.append(f"{'.'.join(full)}: duplicate descriptor")
                continue
            node.children[here] = child
    node.wildcards.sort(key=lambda w: -len(w[1]))


def envoy_domain_from_data(data: Any, source: str = "<envoy config>") -> EnvoyDomain:
    """Validate one parsed YAML document and build its tree (raises ``PolicyError``)."""
    try:
        spec = EnvoyConfigSpec.model_validate(data)
    except ValidationError as exc:
        problems = [
            PolicyProblem(source, None, ".".join(str(p) for p in e["loc"]), e["msg"])
            for e in exc.errors()
        ]
        raise PolicyError(problems) from None
    root = _Node()
    msgs: list[str] = []
    _build(spec.descriptors, root, (), msgs)
    if msgs:
        raise PolicyError([PolicyProblem(source, None, "", m) for m in msgs])
    return EnvoyDomain(spec.domain, root, source)


def load_envoy_config(path: str | os.PathLike[str]) -> dict[str, EnvoyDomain]:
    """Read an envoyproxy/ratelimit config file or directory of ``*.yaml`` files (every YAML
    document is one domain) into ``{domain: EnvoyDomain}``; a domain defined twice is an error,
    as in envoyproxy/ratelimit."""
    p = Path(path)
    files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")]) if p.is_dir() else [p]
    domains: dict[str, EnvoyDomain] = {}
    for f in files:
        try:
            docs = list(yaml.safe_load_all(f.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError([PolicyProblem(str(f), None, "", str(exc))]) from None
        for doc in docs:
            if doc is None:
                continue
            dom = envoy_domain_from_data(doc, str(f))
            if dom.domain in domains:
                raise PolicyError(
                    [PolicyProblem(str(f), None, "domain", f"duplicate domain {dom.domain!r}")]
                )
            domains[dom.domain] = dom
    if not domains:
        raise PolicyError([PolicyProblem(str(p), None, "", "no domain defined")])
    return domains
