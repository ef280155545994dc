"""The admin API, a separate ASGI app on its own port (never reachable through the proxy port).

* ``GET /healthz``: the process is up (no token needed: liveness probes carry none).
* ``GET /readyz``: the store answers (``ping`` when the store has one); no token needed.
* ``GET /status``: policy summary, store, upstreams, admission-queue depth per class.
* ``GET /metrics``: Prometheus text format.
* ``POST /admin/reload``: re-read the policy file; an invalid policy is refused with 400 and its
  problems, and the old policy keeps serving.
* ``POST /admin/scale-events`` ``{"tenant", "agent", "instances", "window"}``: announce a fleet
  start; pre-warms the agent's init aggregate budget for that many instances until ``window``
  (seconds, or a duration like ``"90s"``; default the init tier's window) is over, in the store
  (every replica applies it), and alerts. 201 with the event; 400 with the problem otherwise.
* ``GET /admin/scale-events``: the active ones.
* ``DELETE /admin/scale-events`` ``{"tenant", "agent"}``: end one early (200), 404 if none is
  active.

Everything but the probes needs ``Authorization: Bearer <token>``, compared in constant time
(``hmac.compare_digest``). The token comes from the environment variable named by
``gateway.admin_token_env`` (default ``SLUICEGATE_ADMIN_TOKEN``). When that variable is unset or
empty the admin API is *disabled* except for the probes (403 with an explanation): an admin
endpoint that can reload policy must never be open by accident, and probes must keep working.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError

from sluicegate.engine import Engine, ScaleEvent
from sluicegate.errors import StoreError
from sluicegate.gateway.responses import Receive, Scope, Send, send_bytes, serve_lifespan
from sluicegate.policy.units import parse_duration

#: Admin request bodies are small JSON documents.
MAX_ADMIN_BODY = 64 * 1024


class ScaleEventRequest(BaseModel):
    """``POST /admin/scale-events``: what the engine needs, strictly typed (a clear 400)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: Annotated[str, Field(min_length=1, max_length=256)]
    agent: Annotated[str, Field(min_length=1, max_length=256)]
    instances: StrictInt
    window: Annotated[float, BeforeValidator(parse_duration)] | None = None


class ScaleEventEnd(BaseModel):
    """``DELETE /admin/scale-events``: which event to end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: Annotated[str, Field(min_length=1, max_length=256)]
    agent: Annotated[str, Field(min_length=1, max_length=256)]


def _event_doc(event: ScaleEvent, now: float) -> dict[str, Any]:
    return {
        "tenant": event.tenant,
        "agent": event.agent,
        "instances": event.instances,
        "window": event.window,
        "created": event.created,
        "until": event.until,
        "expires_in": round(max(0.0, event.until - now), 3),
    }


Reloader = Callable[[], Awaitable[list[str]]]
StatusFn = Callable[[], Awaitable[dict[str, Any]]]
ReadyFn = Callable[[], Awaitable[bool]]
MetricsFn = Callable[[], bytes]


class AdminApp:
    def __init__(
        self,
        *,
        token_env: Callable[[], str | None],
        status: StatusFn,
        reload: Reloader,
        ready: ReadyFn,
        metrics: MetricsFn,
        engine: Callable[[], Engine] | None = None,
    ) -> None:
        self._token_env = token_env
        self._status = status
        self._reload = reload
        self._ready = ready
        self._metrics = metrics
        self._engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/healthz":
            await _json(send, 200, {"status": "ok"})
            return
        if path == "/readyz":
            ok = await self._ready()
            await _json(send, 200 if ok else 503, {"ready": ok})
            return
        denied = self._check_token(scope)
        if denied is not None:
            status, text = denied
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await send_bytes(send, status, json.dumps({"error": text}).encode(), extra)
            return
        if path == "/metrics" and method == "GET":
            body = self._metrics()
            await send_bytes(send, 200, body, [], b"text/plain; version=0.0.4; charset=utf-8")
        elif path == "/status" and method == "GET":
            await _json(send, 200, await self._status())
        elif path == "/admin/reload" and method == "POST":
            problems = await self._reload()
            if problems:
                await _json(send, 400, {"reloaded": False, "problems": problems})
            else:
                await _json(send, 200, {"reloaded": True})
        elif path == "/admin/scale-events" and self._engine is not None:
            await self._scale_events(method, receive, send, self._engine())
        else:
            await _json(send, 404, {"error": f"no admin endpoint {method} {path}"})

    async def _scale_events(
        self, method: str, receive: Receive, send: Send, engine: Engine
    ) -> None:
        try:
            if method == "GET":
                events = await engine.scale_events()
                now = engine.wall_clock()
                await _json(send, 200, {"scale_events": [_event_doc(e, now) for e in events]})
            elif method == "POST":
                req = await _parse(ScaleEventRequest, receive, send)
                if req is None:
                    return
                try:
                    event = await engine.add_scale_event(
                        req.tenant, req.agent, req.instances, req.window
                    )
                except ValueError as exc:
                    await _json(send, 400, {"error": str(exc)})
                    return
                doc: dict[str, Any] = {"scale_event": _event_doc(event, engine.wall_clock())}
                policy = engine.policy
                if event.tenant not in policy.tenant_rules:  # a typo, or a default-tier tenant
                    doc["note"] = (
                        f"tenant {event.tenant[:64]!r} is not listed in the policy: it is served "
                        f"by the default tier {policy.default_tier!r}"
                    )
                await _json(send, 201, doc)
            elif method == "DELETE":
                end = await _parse(ScaleEventEnd, receive, send)
                if end is None:
                    return
                ended = await engine.end_scale_event(end.tenant, end.agent)
                if ended is None:
                    where = f"{end.tenant[:64]}/{end.agent[:64]}"
                    await _json(send, 404, {"error": f"no active scale event for {where}"})
                    return
                await _json(send, 200, {"ended": _event_doc(ended, engine.wall_clock())})
            else:
                await _json(send, 405, {"error": f"{method} not allowed; use GET, POST or DELETE"})
        except StoreError as exc:
            await _json(send, 503, {"error": f"store unavailable: {exc}"})

    def _check_token(self, scope: Scope) -> tuple[int, str] | None:
        name = self._token_env()
        expected = os.environ.get(name) if name else None
        if not expected:
            where = f"${name}" if name else "gateway.admin_token_env"
            return 403, f"admin API disabled: set {where} to enable it"
        given = b""
        for key, value in scope["headers"]:
            if key == b"authorization":
                given = value
                break
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return 401, "missing bearer token"
        if not hmac.compare_digest(token.strip(), expected.encode()):
            return 401, "invalid bearer token"
        return None


_Model = TypeVar("_Model", bound=BaseModel)


async def _parse(model: type[_Model], receive: Receive, send: Send) -> _Model | None:
    """The request body as ``model``; on a bad body, answers 413 / 400 and returns None."""
    body = await _read_body(receive)
    if body is None:
        await _json(send, 413, {"error": f"body above {MAX_ADMIN_BODY} bytes"})
        return None
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        await _json(send, 400, {"error": "invalid request body", "problems": problems})
        return None


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when it is larger than ``MAX_ADMIN_BODY``."""
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > MAX_ADMIN_BODY:
            return None
        more = message.get("more_body", False)
    return body


async def _json(send: Send, status: int, doc: dict[str, Any]) -> None:
    await send_bytes(send, status, json.dumps(doc, default=str).encode(), [])
