"""AWS API Gateway Lambda REQUEST authorizer that asks the engine.

The event is API Gateway's REQUEST authorizer input (REST APIs, payload 1.0: ``type``,
``methodArn``, ``resource``, ``path``, ``httpMethod``, ``headers``, ``queryStringParameters``,
``requestContext``; HTTP APIs, payload 2.0: ``version: "2.0"``, ``routeArn``, ``headers``,
``requestContext.http``). The caller's API key (``Authorization: Bearer KEY`` or ``x-api-key``)
is looked up by its SHA-256 (keys are never stored in clear) to a tenant and agent; the session
comes from ``X-Agent-Session`` (scoped under that agent by the engine), the class from
``X-Agent-Workload-Class``, the token reservation from ``X-Estimated-Tokens``.

Answers (payload 1.0):

* unknown / missing key: ``raise Unauthorized`` ("Unauthorized"), which API Gateway turns into
  401, as AWS documents;
* allowed: an ``Allow`` policy for ``methodArn``, ``principalId`` ``tenant/agent``,
  ``usageIdentifierKey`` (the presented API key, for usage plans with key source
  ``AUTHORIZER``) and ``context`` with ``tenant``, ``agent``, ``session``, ``decision_id``,
  ``workload_class``, ``reason``, ``shadow_refused`` and ``ratelimit_headers`` (JSON text);
* refused (or store down, fail closed): a ``Deny`` policy with the same context plus
  ``retry_after`` (seconds). API Gateway answers a Deny with 403 ``ACCESS_DENIED``; map that
  gateway response to 429 with ``Retry-After: context.authorizer.retry_after`` (see
  docs/integrations.md). Disable authorizer result caching (TTL 0): every call is a decision.

Payload 2.0 with simple responses: ``{"isAuthorized": bool, "context": {...}}``.

``handler`` is the Lambda entry point; it builds one :class:`LambdaAuthorizer` per container
from ``SLUICEGATE_POLICY``, ``SLUICEGATE_API_KEYS`` (a YAML/JSON file ``{sha256hex: {tenant,
agent}}``) and optionally ``SLUICEGATE_STORE`` (e.g. a Redis URL shared by all containers).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from sluicegate.engine import Decision, Engine, Outcome, RequestContext
from sluicegate.errors import StoreError
from sluicegate.headers import render_headers
from sluicegate.integrations.common import (
    KeyIdentity,
    Metrics,
    key_digest,
    load_keys,
    presented_key,
    shadow_refused,
    store_unavailable,
)

__all__ = ["KeyIdentity", "LambdaAuthorizer", "Unauthorized", "handler", "key_digest", "load_keys"]


class Unauthorized(Exception):
    """Raised for a missing or unknown key: API Gateway answers 401 for exactly this message."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


def _headers(event: Mapping[str, Any]) -> dict[str, str]:
    raw = event.get("headers") or {}
    if not isinstance(raw, dict):
        return {}
    return {str(k).lower(): str(v) for k, v in raw.items() if v is not None}


def _policy(principal: str, effect: str, resource: str) -> dict[str, Any]:
    return {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
    }


class LambdaAuthorizer:
    """A REQUEST authorizer around one engine (keep one per Lambda container)."""

    def __init__(
        self,
        engine: Engine,
        keys: Mapping[str, KeyIdentity],
        *,
        session_header: str = "x-agent-session",
        class_header: str = "x-agent-workload-class",
        tokens_header: str = "x-estimated-tokens",
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.keys = {k.lower(): v for k, v in keys.items()}
        self.session_header = session_header.lower()
        self.class_header = class_header.lower()
        self.tokens_header = tokens_header.lower()
        self.metrics = metrics or Metrics()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def authorize(self, event: Mapping[str, Any]) -> dict[str, Any]:
        headers = _headers(event)
        key = presented_key(headers)
        ident = self.keys.get(key_digest(key)) if key is not None else None
        if key is None or ident is None:
            raise Unauthorized()
        v2 = event.get("version") == "2.0"
        http = (event.get("requestContext") or {}).get("http") or {}
        method = str((http.get("method") if v2 else event.get("httpMethod")) or "GET")
        path = str((http.get("path") if v2 else event.get("path")) or "/")
        resource = str(event.get("routeArn") if v2 else event.get("methodArn") or "*")
        try:
            tokens = float(headers.get(self.tokens_header, "0") or 0)
        except ValueError:
            tokens = 0.0
        if not math.isfinite(tokens) or tokens < 0:
            tokens = 0.0
        session = headers.get(self.session_header) or None
        ctx = RequestContext(
            tenant=ident.tenant,
            agent=ident.agent,
            session=session,
            workload_class=headers.get(self.class_header) or None,
            tokens=tokens,
            method=method.upper(),
            path=path,
            max_wait=0.0,
        )
        context: dict[str, Any] = {
            "tenant": ident.tenant,
            "agent": ident.agent,
            "session": session or "",
        }
        decision: Decision | None
        try:
            decision = await self.engine.decide(ctx)
        except StoreError:
            decision = None
        if decision is None or store_unavailable(decision):
            self.metrics.counts["store_unavailable"] += 1
            allowed = False
            context.update(reason="store_unavailable", retry_after=1, decision_id="")
        else:
            self.metrics.record(decision, where="lambda")
            allowed = decision.outcome is not Outcome.REFUSE
            context.update(
                decision_id=decision.id,
                workload_class=decision.workload_class,
                reason=str(decision.reason),
                shadow_refused=shadow_refused(decision),
                ratelimit_headers=json.dumps(dict(render_headers(decision))),
            )
            if not allowed:
                retry = decision.retry_after
                if retry is not None and math.isfinite(retry):
                    context["retry_after"] = max(1, math.ceil(retry))
                else:
                    context["retry_after"] = -1
        if v2:
            return {"isAuthorized": allowed, "context": context}
        out = _policy(f"{ident.tenant}/{ident.agent}", "Allow" if allowed else "Deny", resource)
        out["context"] = context
        out["usageIdentifierKey"] = key
        return out

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        """The synchronous Lambda entry point; one event loop is kept across invocations."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.authorize(event))

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run_until_complete(self.engine.store.aclose())
            self._loop.close()
            self._loop = None


_default: LambdaAuthorizer | None = None


def _build_from_env() -> LambdaAuthorizer:
    from sluicegate.policy import load_policy
    from sluicegate.stores import MemoryStore

    policy = load_policy(os.environ["SLUICEGATE_POLICY"])
    keys = load_keys(os.environ["SLUICEGATE_API_KEYS"])
    url = os.environ.get("SLUICEGATE_STORE", policy.store_url)
    auth = LambdaAuthorizer(Engine(policy, MemoryStore()), keys)
    if url != "memory":
        from sluicegate.stores.url import open_store

        auth._loop = asyncio.new_event_loop()
        auth.engine.store = auth._loop.run_until_complete(open_store(url))
    return auth


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point (``sluicegate.integrations.aws_lambda.handler``)."""
    global _default
    if _default is None:
        _default = _build_from_env()
    return _default(event, context)
