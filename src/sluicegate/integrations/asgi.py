"""``RateLimitMiddleware``: the engine in-process, for any ASGI app (Starlette, FastAPI).

::

    app = Starlette(routes=...)
    app.add_middleware(RateLimitMiddleware, engine=engine, identify=api_key_identity(keys))

``identify(scope)`` (plain or async) returns an :class:`Identity` or None. Identify from verified
credentials (an API key, a checked JWT), never from headers a caller can forge;
:func:`api_key_identity` looks keys up by their SHA-256 and takes the session and class from
``X-Agent-Session`` / ``X-Agent-Workload-Class`` (the engine scopes sessions under the agent).

A refused call gets the same status, headers and JSON body as every other sluicegate adapter
(429 OpenAI style by default, see :mod:`sluicegate.integrations.common`); an allowed one is
forwarded, after ``Decision.delay`` if its class queues, and its response gets the rate-limit
headers. When the call ends its token reservation is settled: with the actual usage if the app
stored it as ``request.state.sluicegate_actual_tokens`` (``scope["state"]``), else as reserved;
its concurrency slots are released. The decision is at ``request.state.sluicegate_decision``.
Non-HTTP scopes (lifespan, websocket) pass through untouched.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, NamedTuple

from sluicegate.engine import Decision, Engine, Outcome, RequestContext
from sluicegate.errors import StoreError
from sluicegate.headers import render_headers
from sluicegate.integrations.common import (
    BodyStyle,
    KeyIdentity,
    Metrics,
    key_digest,
    presented_key,
    refusal_body,
    refusal_status,
    store_unavailable,
)
from sluicegate.policy.resolve import Axis

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ACTUAL_TOKENS_KEY = "sluicegate_actual_tokens"
DECISION_KEY = "sluicegate_decision"


class Identity(NamedTuple):
    tenant: str
    agent: str
    session: str | None = None
    workload_class: str | None = None
    tokens: float = 0.0


IdentityExtractor = Callable[[Scope], "Identity | None | Awaitable[Identity | None]"]


def scope_headers(scope: Scope) -> dict[str, str]:
    """Lower-case request headers of an ASGI scope (last one wins)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}


def api_key_identity(
    keys: Mapping[str, KeyIdentity],
    *,
    session_header: str = "x-agent-session",
    class_header: str = "x-agent-workload-class",
    tokens_header: str = "x-estimated-tokens",
) -> Callable[[Scope], Identity | None]:
    """An extractor: ``Authorization: Bearer KEY`` / ``x-api-key`` looked up by SHA-256."""
    table = {k.lower(): v for k, v in keys.items()}

    def identify(scope: Scope) -> Identity | None:
        headers = scope_headers(scope)
        key = presented_key(headers)
        ident = table.get(key_digest(key)) if key is not None else None
        if ident is None:
            return None
        try:
            tokens = float(headers.get(tokens_header, "0") or 0)
        except ValueError:
            tokens = 0.0
        if not math.isfinite(tokens) or tokens < 0:
            tokens = 0.0
        return Identity(
            ident.tenant,
            ident.agent,
            headers.get(session_header) or None,
            headers.get(class_header) or None,
            tokens,
        )

    return identify


def _encode(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _send_json(send: Send, status: int, body: Any, headers: list[tuple[str, str]]) -> None:
    raw = json.dumps(body).encode()
    out = [
        ("content-type", "application/json"),
        ("content-length", str(len(raw))),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": _encode(out)})
    await send({"type": "http.response.body", "body": raw})


class RateLimitMiddleware:
    """Pure ASGI middleware deciding every HTTP call with the engine before the app sees it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: Engine,
        identify: IdentityExtractor,
        unidentified: str = "reject",
        body_style: BodyStyle = "openai",
        exclude_paths: Iterable[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        if unidentified not in ("reject", "pass"):
            raise ValueError("unidentified must be 'reject' or 'pass'")
        self.app = app
        self.engine = engine
        self.identify = identify
        self.unidentified = unidentified
        self.body_style: BodyStyle = body_style
        self.exclude = tuple(exclude_paths)
        self.metrics = metrics or Metrics()

    async def _identity(self, scope: Scope) -> Identity | None:
        got = self.identify(scope)
        if inspect.isawaitable(got):
            got = await got
        return got

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            self.exclude and str(scope.get("path", "")).startswith(self.exclude)
        ):
            await self.app(scope, receive, send)
            return
        ident = await self._identity(scope)
        if ident is None:
            if self.unidentified == "pass":
                await self.app(scope, receive, send)
                return
            body = {
                "error": {
                    "message": "missing or unknown API key",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
            await _send_json(send, 401, body, [("www-authenticate", "Bearer")])
            return
        ctx = RequestContext(
            tenant=ident.tenant,
            agent=ident.agent,
            session=ident.session,
            workload_class=ident.workload_class,
            tokens=ident.tokens,
            method=str(scope.get("method", "GET")).upper(),
            path=str(scope.get("path", "/")),
        )
        try:
            decision = await self.engine.decide(ctx)
        except StoreError:
            decision = None
        if decision is None or store_unavailable(decision):
            self.metrics.counts["store_unavailable"] += 1
            body = {
                "error": {
                    "message": "rate-limit store unavailable",
                    "type": "overloaded_error",
                    "param": None,
                    "code": "store_unavailable",
                }
            }
            await _send_json(send, 503, body, [("retry-after", "1")])
            return
        self.metrics.record(decision, where="asgi")
        headers = render_headers(decision)
        if decision.outcome is Outcome.REFUSE:
            status = refusal_status(decision)
            await _send_json(send, status, refusal_body(decision, self.body_style), headers)
            return
        if decision.outcome is Outcome.WAIT and decision.delay > 0:
            await asyncio.sleep(decision.delay)
        state = scope.setdefault("state", {})
        state[DECISION_KEY] = decision
        extra = _encode(headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            await self._settle(decision, state)

    async def _settle(self, decision: Decision, state: MutableMapping[str, Any]) -> None:
        holds = decision.reserved_tokens > 0 or any(
            r.axis is Axis.CONCURRENCY for r in decision.rules
        )
        if not holds:
            return
        actual = state.get(ACTUAL_TOKENS_KEY, decision.reserved_tokens)
        try:
            actual = float(actual)
        except (TypeError, ValueError):
            actual = decision.reserved_tokens
        if not math.isfinite(actual) or actual < 0:
            actual = decision.reserved_tokens
        try:
            await self.engine.settle(decision.id, actual)
        except StoreError:
            self.metrics.counts["settle_failed"] += 1
