"""envoyproxy/ratelimit descriptor config (``domain`` + ``descriptors``) -> sluicegate policy.

Read: ``domain``; ``descriptors[]`` with ``key``, optional ``value``, ``rate_limit`` (``unit``:
second / minute / hour / day / week / month / year, ``requests_per_unit``, ``unlimited``,
``name``, ``replaces``), ``shadow_mode`` and nested ``descriptors``.

Mapping: each ``rate_limit`` is one fixed-window limit (envoyproxy/ratelimit counts fixed
windows) ``requests_per_unit/unit``. The descriptor path decides where it goes:

* the last entry is a key **without** a value (a counter per distinct value): the plane is
  chosen by the key's name: ``*session*`` -> session, ``*agent*`` -> agent, anything else
  (``tenant``, ``org``, ``api_key``, ``client_id``, ``user``, ``remote_address``, ...) -> tenant;
  it lands in tier ``default``;
* the last entry has a **value** and an identity-like key (``tenant_id: acme``): that tenant's
  override (``tenants.acme.tenant``);
* otherwise (``generic_key: global``, ``database: users``, ``path: /v1/chat``): one counter
  shared by every caller -> a **pool**.

Axis: ``tokens`` when the key, value or limit name mentions tokens (a descriptor whose
``hits_addend`` carries token counts, as LLM gateways on Envoy do), else ``requests``.
``shadow_mode`` -> ``shadow: true``. Keys with values earlier in the path narrow a limit to some
routes; that scoping is lost (noted), as are ``unlimited`` entries (nothing to limit),
``replaces`` and ``detailed_metric``.
"""

from __future__ import annotations

import re
from typing import Any

from sluicegate.policy.importers._build import DEFAULT_TIER, Builder, Imported
from sluicegate.policy.lint_yaml import Loc
from sluicegate.policy.units import Rate

_UNITS = {
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "week": 7 * 86400.0,
    "month": 30 * 86400.0,
    "year": 365 * 86400.0,
}
_IDENTITY = re.compile(r"tenant|org|team|account|customer|client|api_?key|user|consumer|project")
_LLM = re.compile(r"token|llm|openai|anthropic|model|chat|completion|\bai\b", re.I)


def _plane_for_key(key: str) -> str:
    low = key.lower()
    if "session" in low:
        return "session"
    if "agent" in low:
        return "agent"
    return "tenant"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "shared"


def import_envoy(data: dict[str, Any], lines: dict[Loc, int], source: str) -> Imported:
    b = Builder("envoy", source, lines)
    domain = str(data.get("domain") or "default")
    b.llm = bool(_LLM.search(domain))

    def walk(nodes: Any, base: Loc, path: list[tuple[str, str | None]]) -> None:
        for i, node in enumerate(nodes or []):
            if not isinstance(node, dict) or not isinstance(node.get("key"), str):
                continue
            loc = (*base, i)
            value = node.get("value")
            entry = (node["key"], str(value) if value is not None else None)
            here = [*path, entry]
            if any(_LLM.search(str(x)) for x in entry if x):
                b.llm = True
            limit = node.get("rate_limit")
            if isinstance(limit, dict):
                _limit(b, domain, here, limit, node, loc)
            walk(node.get("descriptors"), (*loc, "descriptors"), here)

    walk(data.get("descriptors"), ("descriptors",), [])
    return b.build(root_line=lines.get(("domain",), 1))


def _limit(
    b: Builder,
    domain: str,
    path: list[tuple[str, str | None]],
    limit: dict[str, Any],
    node: dict[str, Any],
    loc: Loc,
) -> None:
    text = " > ".join(f"{k}={v}" if v is not None else k for k, v in path)
    where = f"{b.where(loc)} ({text})"
    if limit.get("unlimited"):
        b.note(f"{where}: unlimited, nothing to limit")
        return
    unit = str(limit.get("unit", "")).lower()
    count = limit.get("requests_per_unit")
    if unit not in _UNITS or not isinstance(count, int | float) or count <= 0:
        b.note(f"{where}: no usable unit / requests_per_unit, skipped")
        return
    if limit.get("replaces"):
        b.note(f"{where}: `replaces` is not carried over (sluicegate applies every plane)")
    key, value = path[-1]
    name = str(limit.get("name") or "")
    tokens = any("token" in s.lower() for s in (key, value or "", name))
    axis = "tokens" if tokens else "requests"
    if any(v is not None for _, v in path[:-1]) or (value is not None and len(path) > 1):
        b.note(f"{where}: scoped by {text}; the sluicegate limit applies to every route")
    keyed = [k for k, v in path if v is None]  # counters per distinct value of these keys
    if keyed:
        base: Loc = ("tiers", DEFAULT_TIER, _plane_for_key(keyed[-1]))
    elif value is not None and _IDENTITY.search(key.lower()) and _plane_for_key(key) == "tenant":
        base = ("tenants", value, "tenant")
        b.tenant(value, loc)
    else:
        base = ("pools", _safe(f"{domain}-{value}"))
    shadow = bool(node.get("shadow_mode"))
    b.limit(
        base,
        axis,
        Rate(float(count), _UNITS[unit]),
        "fixed_window",
        (*loc, "rate_limit"),
        f"{domain}: {text} {count:g}/{unit}",
        shadow=shadow,
    )
