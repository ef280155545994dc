"""The admin API, a separate ASGI app on its own port (never reachable through the proxy port).

* ``GET /healthz``: the process is up (no token needed: liveness probes carry none).
* ``GET /readyz``: the store answers (``ping`` when the store has one); no token needed.
* ``GET /status``: policy summary, store, upstreams, admission-queue depth per class.
* ``GET /metrics``: Prometheus text format.
* ``POST /admin/reload``: re-read the policy file; an invalid policy is refused with 400 and its
  problems, and the old policy keeps serving.

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
from typing import Any

from sluicegate.gateway.responses import Receive, Scope, Send, send_bytes, serve_lifespan

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
    ) -> None:
        self._token_env = token_env
        self._status = status
        self._reload = reload
        self._ready = ready
        self._metrics = metrics

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
        else:
            await _json(send, 404, {"error": f"no admin endpoint {method} {path}"})

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


async def _json(send: Send, status: int, doc: dict[str, Any]) -> None:
    await send_bytes(send, status, json.dumps(doc, default=str).encode(), [])
