"""What every adapter renders the same way from a :class:`~sluicegate.engine.Decision`.

Headers come from :func:`sluicegate.headers.render_headers` (the one place they are rendered);
this module adds the HTTP status and JSON body of a refusal, shadow-mode reporting and the
store-failure test, so the decision API, the Lambda authorizer and the ASGI middleware answer
alike.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from sluicegate.engine import Decision, Outcome

log = logging.getLogger("sluicegate.integrations")

BodyStyle = Literal["openai", "anthropic"]

#: ``Decision.reason`` value the engine uses when a fail-closed store is down.
STORE_UNAVAILABLE = "store_unavailable"


def shadow_refused(decision: Decision) -> bool:
    """True when a shadow limit would have refused this (allowed) decision."""
    return bool(getattr(decision, "shadow_refused", False))


def shadow_buckets(decision: Decision) -> list[str]:
    return list(getattr(decision, "shadow_buckets", None) or [])


def store_unavailable(decision: Decision) -> bool:
    """True when the engine answered for a store it could not reach (fail closed)."""
    return decision.reason == STORE_UNAVAILABLE


class Metrics:
    """In-process counters shared by the adapters (``decisions``, ``refused``,
    ``would_refuse``, ``store_unavailable``, ``errors``), exposed as a plain dict."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def record(self, decision: Decision, *, where: str) -> None:
        counts = self.counts
        counts["decisions"] += 1
        if store_unavailable(decision):
            counts["store_unavailable"] += 1
        elif decision.outcome is Outcome.REFUSE:
            counts["refused"] += 1
        elif shadow_refused(decision):
            counts["would_refuse"] += 1
            log.info(
                "%s: shadow: would refuse decision %s (%s; buckets %s)",
                where,
                decision.id,
                decision.reason,
                ",".join(shadow_buckets(decision)) or "-",
            )

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


def refusal_status(decision: Decision) -> int:
    """HTTP status of a refused decision: 429 rate limited, 403 unknown tenant, 400 unknown
    class, 401 invalid init token (strict init tier), 503 store unavailable."""
    reason = str(decision.reason)
    if reason == STORE_UNAVAILABLE:
        return 503
    if reason == "invalid_init_token":
        return 401
    if reason == "unknown_tenant":
        return 403
    if reason == "unknown_class":
        return 400
    return 429


def refusal_body(decision: Decision, style: BodyStyle = "openai") -> dict[str, Any]:
    """The JSON body of a refusal. OpenAI style by default (what the openai SDK parses):
    ``{"error": {"message", "type", "param", "code"}}``; Anthropic style:
    ``{"type": "error", "error": {"type": "rate_limit_error", "message"}}``."""
    status = refusal_status(decision)
    message = decision.explain()
    if status == 429:
        axis = "requests"
        refusing = decision.refusing
        if refusing:
            axis = refusing[0].axis.value
        if style == "anthropic":
            return {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
        return {
            "error": {
                "message": message,
                "type": axis,
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    kind = {403: "permission_error", 400: "invalid_request_error", 503: "overloaded_error"}
    code = {403: "unknown_tenant", 400: "unknown_workload_class", 503: "store_unavailable"}
    if style == "anthropic":
        return {"type": "error", "error": {"type": kind[status], "message": message}}
    return {
        "error": {"message": message, "type": kind[status], "param": None, "code": code[status]}
    }


def retry_after_value(decision: Decision) -> float | None:
    """Seconds until retry, None when allowed or when retrying can never help."""
    r = decision.retry_after
    if r is None or not math.isfinite(r):
        return None
    return float(r)


# -- API keys (stored as SHA-256 digests, never in clear) ---------------------------------------
@dataclass(frozen=True, slots=True)
class KeyIdentity:
    tenant: str
    agent: str


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()


def load_keys(path: str | os.PathLike[str]) -> dict[str, KeyIdentity]:
    """``{sha256hex: {tenant, agent}}`` from a YAML or JSON file."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sha256 digests to {{tenant, agent}}")
    out = {}
    for digest, ident in data.items():
        if not isinstance(ident, dict) or not ident.get("tenant") or not ident.get("agent"):
            raise ValueError(f"{path}: {digest}: needs tenant and agent")
        out[str(digest).lower()] = KeyIdentity(str(ident["tenant"]), str(ident["agent"]))
    return out


def presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    key = headers.get("x-api-key", "").strip()
    return key or None
