"""Kong declarative config (``_format_version`` 2.x / 3.x, ``kong.yaml``) -> sluicegate policy.

Read: ``plugins`` at the top level, under ``services[]``, ``services[].routes[]``, ``routes[]``
and ``consumers[]`` (and a plugin's ``service`` / ``route`` / ``consumer`` reference), for
``rate-limiting``, ``rate-limiting-advanced`` and ``ai-rate-limiting-advanced``.

Mapping:

* ``limit_by`` / ``identifier`` picks the plane. ``consumer``, ``credential``, ``consumer-group``
  and ``ip`` -> **tenant** plane (the key, or the address, is the only identity Kong knows);
  ``header`` -> session / agent / tenant by the header's name (``X-Agent-Session`` -> session,
  ``*agent*`` -> agent, else tenant); ``service`` and ``path`` -> a shared **pool** (one counter
  for every caller).
* A plugin on a consumer becomes that consumer's tenant override (``tenants.<username>``);
  consumers become tenants of tier ``default``; global / service / route plugins form tier
  ``default`` (per-route limits are merged, the tightest kept: sluicegate limits identities,
  not routes).
* ``rate-limiting``: ``second`` ... ``year`` -> ``requests`` at ``N/s`` ... ``N/365d``, fixed
  windows (that plugin counts fixed windows). ``rate-limiting-advanced``: ``limit[i]`` per
  ``window_size[i]`` seconds, ``window_type`` fixed or sliding. ``ai-rate-limiting-advanced``:
  each ``llm_providers[]`` ``limit`` / ``window_size`` -> ``tokens`` (``cost`` when
  ``tokens_count_strategy: cost``), tightest provider kept.
* Several windows on one plane (``second`` + ``hour``): the lowest sustained rate is kept.

Lost (noted): per-route scoping, the other windows, ``policy: local`` (counters per Kong node:
``n`` nodes admit ``n`` x the limit), ``fault_tolerant``, header hiding, Redis settings, error
messages and codes, ``sync_rate``.
"""

from __future__ import annotations

import re
from typing import Any

from sluicegate.policy.importers._build import DEFAULT_TIER, Builder, Imported
from sluicegate.policy.lint_yaml import Loc
from sluicegate.policy.units import Rate

_PERIODS = {
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "month": 30 * 86400.0,
    "year": 365 * 86400.0,
}
_LLM = re.compile(r"openai|anthropic|llm|chat|completion|/v1/messages|bedrock|gemini|model|\bai\b")
_PLUGINS = ("rate-limiting", "rate-limiting-advanced", "ai-rate-limiting-advanced")


def _plane(ident: str, conf: dict[str, Any], b: Builder, where: str) -> str:
    if ident == "header":
        header = str(conf.get("header_name") or "")
        if re.search("session", header, re.I):
            return "session"
        if re.search("agent", header, re.I):
            return "agent"
        b.note(f"{where}: limit by header {header!r} mapped to the tenant plane")
        return "tenant"
    if ident == "ip":
        b.note(f"{where}: limit by client IP mapped to the tenant plane (one IP, one identity)")
    if ident in ("service", "path"):
        return "pool"
    return "tenant"


def _plugins(data: dict[str, Any]) -> list[tuple[Loc, dict[str, Any], str | None, str]]:
    """Every plugin with its location, the consumer it is scoped to, and its scope text."""
    out: list[tuple[Loc, dict[str, Any], str | None, str]] = []
    consumers = {
        i: str(c.get("username") or c.get("custom_id") or f"consumer{i}")
        for i, c in enumerate(data.get("consumers") or [])
        if isinstance(c, dict)
    }

    def add(plugins: Any, base: Loc, consumer: str | None, scope: str) -> None:
        for i, p in enumerate(plugins or []):
            if isinstance(p, dict):
                ref = p.get("consumer")
                name = consumer
                if isinstance(ref, str):
                    name = ref
                elif isinstance(ref, dict):
                    name = str(ref.get("username") or ref.get("id") or "consumer")
                out.append(((*base, i), p, name, scope))

    add(data.get("plugins"), ("plugins",), None, "global")
    for s, svc in enumerate(data.get("services") or []):
        if not isinstance(svc, dict):
            continue
        sname = str(svc.get("name") or f"service{s}")
        add(svc.get("plugins"), ("services", s, "plugins"), None, f"service {sname}")
        for r, route in enumerate(svc.get("routes") or []):
            if isinstance(route, dict):
                rname = str(route.get("name") or f"route{r}")
                add(
                    route.get("plugins"),
                    ("services", s, "routes", r, "plugins"),
                    None,
                    f"route {rname}",
                )
    for r, route in enumerate(data.get("routes") or []):
        if isinstance(route, dict):
            add(route.get("plugins"), ("routes", r, "plugins"), None, f"route {route.get('name')}")
    for c, name in consumers.items():
        add(
            data["consumers"][c].get("plugins"),
            ("consumers", c, "plugins"),
            name,
            f"consumer {name}",
        )
    return out


def _looks_llm(data: dict[str, Any]) -> bool:
    text = repr(
        [
            (s.get("url"), s.get("host"), s.get("path"), s.get("name"), s.get("routes"))
            for s in data.get("services") or []
            if isinstance(s, dict)
        ]
    ).lower()
    return bool(_LLM.search(text))


def import_kong(data: dict[str, Any], lines: dict[Loc, int], source: str) -> Imported:
    b = Builder("kong", source, lines)
    b.llm = _looks_llm(data)
    for c, consumer in enumerate(data.get("consumers") or []):
        if isinstance(consumer, dict):
            name = str(consumer.get("username") or consumer.get("custom_id") or f"consumer{c}")
            b.tenant(name, ("consumers", c))
    found = 0
    for loc, plugin, consumer, scope in _plugins(data):
        pname = plugin.get("name")
        if not isinstance(pname, str):
            continue
        name = pname
        if name.startswith("ai-"):
            b.llm = True
        if name not in _PLUGINS or plugin.get("enabled", True) is False:
            continue
        found += 1
        conf = plugin.get("config") if isinstance(plugin.get("config"), dict) else {}
        assert isinstance(conf, dict)
        label = f"{name} on {scope}"
        where = f"{b.where(loc)} {label}"
        ident = str(conf.get("limit_by") or conf.get("identifier") or "consumer")
        plane = _plane(ident, conf, b, where)
        if plane == "pool":
            pool = re.sub(r"[^A-Za-z0-9_-]+", "-", scope.split(" ", 1)[-1]).strip("-") or "kong"
            base: Loc = ("pools", pool)
        elif consumer is not None:
            base = ("tenants", consumer, plane)
            b.tenant(consumer, loc)
        else:
            base = ("tiers", DEFAULT_TIER, plane)
        if scope.startswith(("route", "service")) and plane != "pool":
            b.note(
                f"{where}: scoped to one {scope.split()[0]}; the sluicegate limit applies "
                "to every route"
            )
        strategy = conf.get("policy") or conf.get("strategy") or "local"
        if strategy == "local":
            b.note(
                f"{where}: policy local keeps counters per Kong node (n nodes admit n x the "
                "limit); sluicegate counts in one store"
            )
        if name == "rate-limiting":
            _classic(b, base, conf, (*loc, "config"), label)
        elif name == "rate-limiting-advanced":
            _advanced(b, base, conf, (*loc, "config"), label, "requests")
        else:
            _ai(b, base, conf, (*loc, "config"), label)
    if not found:
        b.note("no rate-limiting plugin found")
        b.limit(
            ("tiers", DEFAULT_TIER, "tenant"),
            "requests",
            Rate(1e9, 60.0),
            None,
            (),
            "no limit in the source (unlimited)",
        )
    root = lines.get(("_format_version",), 1)
    return b.build(root_line=root)


def _classic(b: Builder, base: Loc, conf: dict[str, Any], src: Loc, label: str) -> None:
    for key, period in _PERIODS.items():
        value = conf.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            b.limit(
                base,
                "requests",
                Rate(float(value), period),
                "fixed_window",
                (*src, key),
                f"{label} {key}: {value:g}",
            )


def _windows(conf: dict[str, Any]) -> list[tuple[int, float, float]]:
    limits = conf.get("limit") or []
    sizes = conf.get("window_size") or []
    out = []
    for i, (lim, size) in enumerate(zip(limits, sizes, strict=False)):
        if isinstance(lim, int | float) and isinstance(size, int | float) and lim > 0 and size > 0:
            out.append((i, float(lim), float(size)))
    return out


def _advanced(b: Builder, base: Loc, conf: dict[str, Any], src: Loc, label: str, axis: str) -> None:
    algo = "sliding_window" if conf.get("window_type", "sliding") == "sliding" else "fixed_window"
    for i, lim, size in _windows(conf):
        b.limit(
            base,
            axis,
            Rate(lim, size),
            algo,
            (*src, "limit", i),
            f"{label} limit[{i}]: {lim:g}/{size:g}s",
        )


def _ai(b: Builder, base: Loc, conf: dict[str, Any], src: Loc, label: str) -> None:
    strategy = conf.get("tokens_count_strategy", "total_tokens")
    axis = "cost" if strategy == "cost" else "tokens"
    if strategy in ("prompt_tokens", "completion_tokens"):
        b.note(f"{label}: counts {strategy} only; sluicegate's tokens axis counts prompt + output")
    algo = "sliding_window" if conf.get("window_type", "sliding") == "sliding" else "fixed_window"
    for p, provider in enumerate(conf.get("llm_providers") or []):
        if not isinstance(provider, dict):
            continue
        pname = provider.get("name", f"provider{p}")
        for i, lim, size in _windows(provider):
            b.limit(
                base,
                axis,
                Rate(lim, size),
                algo,
                (*src, "llm_providers", p, "limit", i),
                f"{label} {pname} limit[{i}]: {lim:g}/{size:g}s",
            )
