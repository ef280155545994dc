"""The gateway's view of a policy: routes, upstreams and server settings, plus the core policy.

The ``routes:`` / ``upstreams:`` / ``gateway:`` sections are part of the policy schema
(:mod:`sluicegate.policy.gateway_schema`, validated with file:line like the rest);
:func:`load_gateway_policy` adds what serving needs on top: upstreams supplied by
``--mock-upstream`` or ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``, and cross-checks of routes
against upstreams and pools. A policy without routes still serves: the default OpenAI and
Anthropic routes are used (see :func:`default_routes`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluicegate.errors import PolicyError, PolicyProblem
from sluicegate.policy import Policy, load_policy
from sluicegate.policy.gateway_schema import GatewaySettings, RouteSpec, UpstreamSpec


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the proxy needs, resolved once per (re)load and swapped as a whole."""

    policy: Policy
    routes: tuple[RouteSpec, ...]
    upstreams: Mapping[str, UpstreamSpec]
    settings: GatewaySettings
    source: str

    def route_for(self, path: str) -> RouteSpec | None:
        """The route with the longest matching prefix (routes are kept sorted that way)."""
        for route in self.routes:
            if path.startswith(route.path_prefix):
                return route
        return None


def default_routes(pools: Mapping[str, Any]) -> list[RouteSpec]:
    """OpenAI-style paths to upstream ``openai`` and Anthropic ``/v1/messages`` to
    ``anthropic``, charged to pools of the same names when the policy declares them."""
    openai_pool = "openai" if "openai" in pools else None
    anthropic_pool = "anthropic" if "anthropic" in pools else None
    paths = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
    routes = [RouteSpec(path_prefix=p, upstream="openai", pool=openai_pool) for p in paths]
    routes.append(
        RouteSpec(
            path_prefix="/v1/messages",
            upstream="anthropic",
            pool=anthropic_pool,
            dialect="anthropic",
        )
    )
    return routes


def load_gateway_policy(
    path: str | os.PathLike[str], *, upstream_override: str | None = None
) -> GatewayConfig:
    """Load a policy file for serving. ``upstream_override`` points every upstream (and the
    default ``openai`` / ``anthropic`` ones) at one URL: the built-in mock upstream."""
    p = Path(path)
    policy = load_policy(p)
    spec = policy.spec
    routes: list[RouteSpec] = list(spec.routes) or default_routes(policy.pools)
    upstreams: dict[str, UpstreamSpec] = dict(spec.upstreams)
    settings: GatewaySettings = spec.gateway
    problems: list[PolicyProblem] = []
    for name in {r.upstream for r in routes} - set(upstreams):
        if upstream_override:
            upstreams[name] = UpstreamSpec(url=upstream_override)
        elif name == "openai" and os.environ.get("OPENAI_BASE_URL"):
            upstreams[name] = UpstreamSpec(url=os.environ["OPENAI_BASE_URL"])
        elif name == "anthropic" and os.environ.get("ANTHROPIC_BASE_URL"):
            upstreams[name] = UpstreamSpec(url=os.environ["ANTHROPIC_BASE_URL"])
        else:
            where = [r.path_prefix for r in routes if r.upstream == name]
            problems.append(
                PolicyProblem(
                    str(p), None, "routes", f"upstream {name!r} (for {', '.join(where)}) is not "
                    "declared under upstreams: (or run with --mock-upstream)"
                )
            )  # fmt: skip
    if upstream_override:
        upstreams = {
            k: u.model_copy(update={"url": upstream_override}) for k, u in upstreams.items()
        }
    for r in routes:
        if r.pool is not None and r.pool not in policy.pools:
            problems.append(
                PolicyProblem(
                    str(p), None, "routes", f"route {r.path_prefix}: unknown pool {r.pool!r}"
                )
            )
    if problems:
        raise PolicyError(problems)
    ordered = tuple(sorted(routes, key=lambda r: len(r.path_prefix), reverse=True))
    return GatewayConfig(policy, ordered, upstreams, settings, str(p))
