"""LiteLLM proxy ``config.yaml`` -> sluicegate policy.

Read: ``model_list[]`` (``model_name``, ``litellm_params.rpm`` / ``tpm``), ``litellm_settings``
(``default_key_generate_params`` and ``upperbound_key_generate_params`` with ``rpm_limit``,
``tpm_limit``, ``max_parallel_requests``, ``max_budget``, ``budget_duration``;
``default_team_settings[]`` with ``team_id`` and the same limits; ``num_retries``),
``general_settings`` (``max_parallel_requests``, per deployment, and
``global_max_parallel_requests``) and
``router_settings`` (``num_retries``, ``routing_strategy``). Keys, teams and users created through
LiteLLM's API live in its database, not in this file: list them as ``default_team_settings`` (or
lint the sluicegate policy you convert to) to have them checked.

Mapping:

* a model's deployments (``rpm`` / ``tpm`` in ``litellm_params``, summed over deployments of one
  ``model_name``, as the router spreads calls across them) -> pool ``<model_name>``; the
  per-deployment ``max_parallel_requests`` (``litellm_params`` or ``general_settings``) -> the
  pool's ``concurrency``, summed likewise;
* a team (``default_team_settings``) -> tenant ``<team_id>``, its ``rpm_limit`` / ``tpm_limit`` /
  ``max_parallel_requests`` on the **tenant** plane;
* the default key limits -> the **agent** plane of tier ``default`` when teams exist (a key per
  agent inside a team), else the **tenant** plane (the key is the only identity);
* windows: LiteLLM counts rpm / tpm in the current minute -> ``N/min`` fixed windows.

Lost (noted): money budgets (``max_budget``, ``budget_duration``: sluicegate limits rates, not
spend), ``upperbound_key_generate_params`` (a cap on what admins may grant, not a limit),
``global_max_parallel_requests``, per-user limits, and the proxy's own retries (``num_retries``:
each failed call is retried with no budget, which SG003 is about).
"""

from __future__ import annotations

import re
from typing import Any

from sluicegate.policy.importers._build import DEFAULT_TIER, Builder, Imported
from sluicegate.policy.lint_yaml import Loc
from sluicegate.policy.units import Rate

_MINUTE = 60.0


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "model"


def _identity_limits(b: Builder, base: Loc, params: dict[str, Any], src: Loc, label: str) -> None:
    for key, axis in (("rpm_limit", "requests"), ("tpm_limit", "tokens")):
        value = _num(params.get(key))
        if value is not None:
            b.limit(
                base,
                axis,
                Rate(value, _MINUTE),
                "fixed_window",
                (*src, key),
                f"{label} {key}: {value:g}",
            )
    parallel = params.get("max_parallel_requests")
    if isinstance(parallel, int) and not isinstance(parallel, bool) and parallel > 0:
        b.set((*base, "concurrency"), parallel, (*src, "max_parallel_requests"))
    if params.get("max_budget") is not None:
        b.note(
            f"{label}: max_budget {params['max_budget']} (per "
            f"{params.get('budget_duration', 'lifetime')}) not carried over: sluicegate limits "
            "rates, not spend"
        )


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def import_litellm(data: dict[str, Any], lines: dict[Loc, int], source: str) -> Imported:
    b = Builder("litellm", source, lines)
    b.llm = True
    settings = _section(data, "litellm_settings")
    general = _section(data, "general_settings")
    router = _section(data, "router_settings")
    _models(b, data, general, lines)

    teams = [t for t in settings.get("default_team_settings") or [] if isinstance(t, dict)]
    for t, team in enumerate(teams):
        tid = str(team.get("team_id") or f"team{t}")
        src: Loc = ("litellm_settings", "default_team_settings", t)
        b.tenant(tid, src)
        _identity_limits(b, ("tenants", tid, "tenant"), team, src, f"team {tid}")
    key_plane = "agent" if teams else "tenant"
    defaults = settings.get("default_key_generate_params")
    if isinstance(defaults, dict):
        src = ("litellm_settings", "default_key_generate_params")
        _identity_limits(b, ("tiers", DEFAULT_TIER, key_plane), defaults, src, "default key")
    if isinstance(settings.get("upperbound_key_generate_params"), dict):
        b.note("upperbound_key_generate_params caps what admins may grant; not a limit, not kept")
    if general.get("global_max_parallel_requests") is not None:
        b.note("general_settings.global_max_parallel_requests (proxy-wide in-flight cap) not kept")
    for where, section in (("router_settings", router), ("litellm_settings", settings)):
        retries = section.get("num_retries")
        if isinstance(retries, int) and retries > 0:
            b.note(
                f"{where}.num_retries: {retries}: the proxy retries failed calls with no "
                "retry budget (see SG003)"
            )
    root = min((line for loc, line in lines.items() if loc), default=1)
    return b.build(root_line=root)


def _models(
    b: Builder, data: dict[str, Any], general: dict[str, Any], lines: dict[Loc, int]
) -> None:
    """Deployments -> pools: rpm / tpm and per-deployment max_parallel_requests, summed."""
    per_deployment = _num(general.get("max_parallel_requests"))
    models: dict[str, dict[str, float]] = {}
    model_src: dict[str, Loc] = {}
    for i, entry in enumerate(data.get("model_list") or []):
        if not isinstance(entry, dict):
            continue
        name = _safe(str(entry.get("model_name") or f"model{i}"))
        params = entry.get("litellm_params")
        params = params if isinstance(params, dict) else {}
        totals = models.setdefault(name, {})
        values = (
            ("rpm", _num(params.get("rpm"))),
            ("tpm", _num(params.get("tpm"))),
            ("max_parallel_requests", _num(params.get("max_parallel_requests")) or per_deployment),
        )
        for key, number in values:
            if number is not None:
                totals[key] = totals.get(key, 0.0) + number
                here: Loc = ("model_list", i, "litellm_params", key)
                if here not in lines:
                    here = ("general_settings", key)
                model_src.setdefault(f"{name}.{key}", here)
    for name, totals in models.items():
        for key, axis in (("rpm", "requests"), ("tpm", "tokens")):
            if key in totals:
                label = f"model {name} {key} (all deployments)"
                rate = Rate(totals[key], _MINUTE)
                b.limit(
                    ("pools", name), axis, rate, "fixed_window", model_src[f"{name}.{key}"], label
                )
        parallel = totals.get("max_parallel_requests")
        if parallel is not None and ("rpm" in totals or "tpm" in totals):
            src = model_src[f"{name}.max_parallel_requests"]
            b.set(("pools", name, "concurrency"), int(parallel), src)
        elif parallel is not None:
            b.note(f"model {name}: max_parallel_requests without rpm / tpm not kept")
