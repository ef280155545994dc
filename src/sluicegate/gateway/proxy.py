"""The reverse proxy as a plain ASGI application.

One request: route by path prefix -> verified identity -> workload class -> body (bounded,
parsed and token-estimated on LLM routes) -> ``Engine.decide`` (always with ``max_wait=0``; the
priority admission queue of :mod:`sluicegate.gateway.admission` does the waiting) -> forward to
the route's upstream through a :class:`~sluicegate.gateway.transport.Transport`, streaming the
response back chunk by chunk -> settle the token reservation with the usage the upstream reported
(or the streamed text counted when it reported none).

Settlement rules (every admitted call is settled exactly once, so no reservation leaks):

* upstream answered 2xx/3xx/4xx with usage: charge the reported ``total_tokens`` (a stream that
  ran past its reserved output is charged the excess);
* 2xx without usage: streamed / returned text is counted locally plus the prompt estimate;
* 4xx without usage and every 5xx: 0 (providers do not bill failed calls);
* connection failure before anything was sent: 0; a timeout after the request was sent: the
  prompt estimate (the upstream may have processed it);
* client disconnected mid-stream: what was streamed so far (counted) plus the prompt estimate.

Gateway credentials (``identity.credential_headers()``) and hop-by-hop headers (RFC 9110 7.6.1:
``Connection`` and every header it names, ``Keep-Alive``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``) are never forwarded; the upstream's own
rate-limit headers are replaced by the gateway's, rendered by :func:`sluicegate.headers.
render_headers` only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from sluicegate.cost import SSEUsageTracker, Usage, estimate_request, parse_usage_json
from sluicegate.cost.encodings import encoding_for_model
from sluicegate.cost.estimate import TokenCounter
from sluicegate.cost.usage import response_text
from sluicegate.engine import Decision, Engine, Outcome, Reason, RequestContext
from sluicegate.errors import SluicegateError
from sluicegate.gateway.admission import AdmissionQueue
from sluicegate.gateway.config import GatewayConfig
from sluicegate.gateway.metrics import Metrics
from sluicegate.gateway.responses import Receive, Scope, Send, send_error, serve_lifespan
from sluicegate.gateway.transport import (
    FastTransport,
    Headers,
    HttpxTransport,
    Transport,
    UpstreamError,
)
from sluicegate.headers import render_headers
from sluicegate.policy.gateway_schema import RouteSpec, UpstreamSpec

access_log = logging.getLogger("sluicegate.access")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
_RATE_HEADERS = (b"x-ratelimit-", b"ratelimit", b"retry-after", b"anthropic-ratelimit-")
_JSON_CAP = 16 * 1024 * 1024  # response bytes kept for usage parsing (beyond: settle by estimate)


class IdentityLike(Protocol):
    @property
    def tenant(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def session(self) -> str | None: ...
    @property
    def init_token(self) -> str | None: ...


class Resolver(Protocol):
    """What the gateway needs of ``sluicegate.engine.identity.IdentityResolver``."""

    def resolve(self, headers: Mapping[str, str]) -> IdentityLike: ...
    def credential_headers(self) -> frozenset[str]: ...


class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


def make_transport(spec: UpstreamSpec) -> Transport:
    if spec.transport == "httpx":
        return HttpxTransport(
            spec.url, connect_timeout=spec.connect_timeout, read_timeout=spec.read_timeout
        )
    return FastTransport(
        spec.url,
        connect_timeout=spec.connect_timeout,
        read_timeout=spec.read_timeout,
        max_idle=spec.max_connections,
    )


class _UpstreamState:
    """A configured upstream: its transport, pre-encoded extra headers and admission queue."""

    def __init__(self, name: str, spec: UpstreamSpec, transport: Transport, engine: Engine):
        self.name = name
        self.spec = spec
        self.transport = transport
        self.extra: Headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in spec.headers.items()
        ]
        self.extra_names = frozenset(k for k, _ in self.extra)
        self.queue = AdmissionQueue(engine, name)


class Gateway:
    """The proxy ASGI app. ``config`` may be replaced at run time (``gateway.reconfigure``)."""

    def __init__(
        self,
        config: GatewayConfig,
        engine: Engine,
        resolver: Resolver,
        *,
        metrics: Metrics | None = None,
        transports: Mapping[str, Transport] | None = None,
        use_tiktoken: bool = True,
    ) -> None:
        self.engine = engine
        self.resolver = resolver
        self.metrics = metrics or Metrics()
        self.use_tiktoken = use_tiktoken
        self._given_transports = dict(transports or {})
        self._upstreams: dict[str, _UpstreamState] = {}
        self.config = config
        self.reconfigure(config)

    # -- configuration -----------------------------------------------------------------------
    def reconfigure(self, config: GatewayConfig, resolver: Resolver | None = None) -> None:
        """Swap policy, routes and upstreams atomically for all later requests. Upstreams whose
        spec did not change keep their transport (and warm connections) and queue."""
        old = self._upstreams
        new: dict[str, _UpstreamState] = {}
        for name, spec in config.upstreams.items():
            prev = old.get(name)
            if prev is not None and prev.spec == spec:
                new[name] = prev
            else:
                transport = self._given_transports.get(name) or make_transport(spec)
                new[name] = _UpstreamState(name, spec, transport, self.engine)
        if resolver is not None:
            self.resolver = resolver
        self._drop = _REQUEST_DROP | {
            h.encode("latin-1") for h in self.resolver.credential_headers()
        }
        self.engine.policy = config.policy
        self._upstreams = new
        self.config = config
        policy = config.policy
        self.metrics.set_policy(
            frozenset(policy.tenant_rules), {n: c.sla_p95 for n, c in policy.classes.items()}
        )
        for name, state in old.items():
            if new.get(name) is not state:
                self._retire(state)

    def _retire(self, state: _UpstreamState) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if state.name in self._given_transports:
            return
        retire = getattr(state.transport, "retire", None)
        if callable(retire):  # let in-flight calls finish on their connections
            retire()
        else:  # give in-flight calls their read timeout before closing the client
            loop.call_later(
                state.spec.read_timeout, lambda: loop.create_task(state.transport.aclose())
            )

    def queues(self) -> dict[str, dict[str, Any]]:
        return {name: s.queue.snapshot() for name, s in self._upstreams.items()}

    async def aclose(self) -> None:
        for state in self._upstreams.values():
            await state.queue.aclose()
            await state.transport.aclose()

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await serve_lifespan(receive, send, self.aclose)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        cfg = self.config
        path: str = scope["path"]
        route = cfg.route_for(path)
        dialect = route.dialect if route is not None else "openai"
        raw: Headers = scope["headers"]
        headers: dict[str, str] = {}
        for name, value in raw:
            if b"\r" in value or b"\n" in value or b"\0" in value:
                await send_error(
                    send, dialect, 400, "header value contains CR, LF or NUL", "bad_header"
                )
                return
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if route is None:
            await send_error(send, dialect, 404, f"no route for {path}", "no_route")
            self.metrics.response("-", 404)
            return
        upstream = self._upstreams.get(route.upstream)
        if upstream is None:  # pragma: no cover - config validation prevents this
            await send_error(send, dialect, 502, "route has no upstream", "no_upstream")
            return
        try:
            ident = self.resolver.resolve(headers)
        except SluicegateError as exc:
            status = getattr(exc, "status", None)
            if not isinstance(status, int):
                raise
            code = str(getattr(exc, "code", "unauthorized"))
            challenge = getattr(exc, "www_authenticate", None)
            extra = (
                [(b"www-authenticate", challenge.encode())] if isinstance(challenge, str) else []
            )
            message = str(getattr(exc, "message", exc))
            await send_error(send, dialect, status, message, code, extra)
            self.metrics.response(route.path_prefix, status)
            return
        log: dict[str, Any] = {
            "method": scope["method"],
            "path": path,
            "tenant": ident.tenant,
            "agent": ident.agent,
        }
        try:
            status = await self._serve(
                scope, receive, send, cfg, route, upstream, ident, headers, raw, log
            )
        finally:
            elapsed = time.perf_counter() - started
            cls = log.get("class", "-")
            self.metrics.observe(self.metrics.request_latency, elapsed, cls)
        self.metrics.response(route.path_prefix, status)
        if cfg.settings.access_log:
            log["status"] = status
            log["ms"] = round(elapsed * 1000, 3)
            self._log(cfg, log)

    def _log(self, cfg: GatewayConfig, log: dict[str, Any]) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        if cfg.settings.log_json:
            access_log.info(json.dumps(log, separators=(",", ":")))
        else:
            access_log.info(" ".join(f"{k}={v}" for k, v in log.items()))

    async def _read_body(self, receive: Receive, limit: int) -> bytes:
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            body += message.get("body", b"")
            if len(body) > limit:
                raise _BodyTooLarge
            more = message.get("more_body", False)
        return bytes(body)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        cfg: GatewayConfig,
        route: RouteSpec,
        upstream: _UpstreamState,
        ident: IdentityLike,
        headers: dict[str, str],
        raw: Headers,
        log: dict[str, Any],
    ) -> int:
        dialect = route.dialect
        limit = cfg.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            status = 413 if declared.isdigit() else 400
            await send_error(send, dialect, status, f"request body over {limit} bytes", "too_large")
            return status
        method: str = scope["method"]
        body: bytes | AsyncIterator[bytes]
        parsed: dict[str, Any] | None = None
        try:
            if route.llm or declared is not None:
                body = await self._read_body(receive, limit)
            else:
                body = _stream_body(receive, limit)
        except _BodyTooLarge:
            await send_error(send, dialect, 413, f"request body over {limit} bytes", "too_large")
            return 413
        except _Disconnected:
            return 499
        prompt_tokens = 0
        tokens = 0
        model: str | None = None
        if route.llm and isinstance(body, bytes) and method == "POST":
            try:
                doc = json.loads(body) if body else None
            except (ValueError, UnicodeDecodeError):
                doc = None
            if not isinstance(doc, dict):
                await send_error(
                    send, dialect, 400, "request body is not a JSON object", "bad_json"
                )
                return 400
            parsed = doc
            est = estimate_request(
                doc,
                dialect,
                path_of(scope),
                default_output=route.default_output_tokens,
                use_tiktoken=self.use_tiktoken,
            )
            prompt_tokens, tokens = est.prompt_tokens, est.total
            m = doc.get("model")
            model = m if isinstance(m, str) else None
        log["tokens_est"] = tokens
        engine = self.engine
        class_name, _ = engine.resolve_class(headers.get("x-agent-workload-class"))
        ctx = RequestContext(
            ident.tenant,
            ident.agent,
            ident.session,
            headers.get("x-agent-workload-class"),
            float(tokens),
            method=method,
            path=scope["path"],
            pool=route.pool,
            max_wait=0.0,
            retry_attempt=retry_attempt(headers),
            trace_id=trace_id(headers),
            init_token=ident.init_token,
        )
        profile = engine.policy.classes.get(class_name) if class_name else None
        queue = upstream.queue
        waited = 0.0
        if profile is not None and profile.max_wait > 0 and queue.must_queue(profile.priority):
            decision, waited = await self._queue(
                queue, ctx, profile.priority, profile.name, profile.max_wait, None
            )
        else:
            decision = await engine.decide(ctx)
            if (
                not decision.allowed
                and profile is not None
                and profile.max_wait > 0
                and decision.reason is Reason.RATE_LIMITED
                and decision.retry_after is not None
                and decision.retry_after <= profile.max_wait
            ):
                decision, waited = await self._queue(
                    queue, ctx, profile.priority, profile.name, profile.max_wait, decision
                )
        cls = decision.workload_class
        log["class"] = cls
        log["outcome"] = decision.outcome.value
        log["reason"] = decision.reason.value
        if waited:
            log["wait_ms"] = round(waited * 1000, 3)
        self.metrics.decision(ident.tenant, cls, decision.outcome.value, decision.reason.value)
        if not decision.allowed:
            return await self._refuse(send, route, decision)
        if decision.outcome is Outcome.WAIT and decision.delay > 0:
            await asyncio.sleep(decision.delay)
        rate_headers = [(k.encode(), v.encode("latin-1")) for k, v in render_headers(decision)]
        if decision.warning:
            rate_headers.append(
                (b"x-sluicegate-warning", decision.warning.encode("latin-1", "replace"))
            )
        # -- forward -------------------------------------------------------------------------
        drop = self._drop
        extra = upstream.extra_names
        connection_listed = _connection_tokens(headers.get("connection"))
        out: Headers = [
            (k, v)
            for k, v in raw
            if k not in drop and k not in extra and k not in connection_listed
            and not k.startswith(b"proxy-")
        ]  # fmt: skip
        if route.llm:
            out = [(k, v) for k, v in out if k != b"accept-encoding"]
            out.append((b"accept-encoding", b"identity"))
        out += upstream.extra
        target = scope.get("raw_path") or scope["path"].encode()
        if isinstance(target, bytes):
            target_s = target.decode("latin-1")
        else:  # pragma: no cover
            target_s = str(target)
        if route.strip_prefix:
            target_s = target_s[len(route.path_prefix.rstrip("/")) :] or "/"
        qs: bytes = scope.get("query_string") or b""
        if qs:
            target_s += "?" + qs.decode("latin-1")
        t_up = time.perf_counter()
        try:
            resp = await upstream.transport.request(method, target_s, out, body)
        except UpstreamError as exc:
            kind = "timeout" if exc.timeout else "connect"
            self.metrics._child(self.metrics.upstream_errors, upstream.name, kind).inc()
            charged = float(prompt_tokens) if (exc.timeout and exc.sent) else 0.0
            await engine.settle(decision.id, charged)
            log["tokens"] = charged
            status = 504 if exc.timeout else 502
            log["error"] = str(exc)
            await send_error(
                send, route.dialect, status, str(exc), f"upstream_{kind}", rate_headers
            )
            return status
        self.metrics.observe(
            self.metrics.upstream_latency, time.perf_counter() - t_up, upstream.name
        )
        return await self._relay(
            receive, send, route, resp, decision, rate_headers, parsed, prompt_tokens, tokens,
            model, ident.tenant, log,
        )  # fmt: skip

    async def _queue(
        self,
        queue: AdmissionQueue,
        ctx: RequestContext,
        priority: int,
        class_name: str,
        max_wait: float,
        last: Decision | None,
    ) -> tuple[Decision, float]:
        t0 = time.perf_counter()
        gauge = self.metrics._child(self.metrics.queue_depth, queue.name, class_name)
        gauge.inc()
        try:
            decision = await queue.wait(
                ctx, priority=priority, class_name=class_name, max_wait=max_wait, last=last
            )
        finally:
            gauge.dec()
        waited = time.perf_counter() - t0
        self.metrics.observe(self.metrics.queue_wait, waited, class_name)
        return decision, waited

    async def _refuse(self, send: Send, route: RouteSpec, decision: Decision) -> int:
        reason = decision.reason
        headers = [(k.encode(), v.encode("latin-1")) for k, v in render_headers(decision)]
        names = [b.name for b in decision.refusing]
        if reason is Reason.UNKNOWN_CLASS:
            status, code = 400, "unknown_workload_class"
        elif reason is Reason.UNKNOWN_TENANT:
            status, code = 403, "unknown_tenant"
        elif reason is Reason.STORE_UNAVAILABLE:
            status, code = 503, "store_unavailable"
        elif reason is Reason.INVALID_INIT_TOKEN:
            status, code = 401, "invalid_init_token"
        else:
            status, code = 429, reason.value
        if decision.retry_after is not None and math.isinf(decision.retry_after):
            headers.append((b"x-should-retry", b"false"))
        message = f"{reason.value}: {decision.explain()}"
        if names:
            message += f" [buckets: {', '.join(names)}]"
        await send_error(send, route.dialect, status, message, code, headers)
        return status

    async def _relay(
        self,
        receive: Receive,
        send: Send,
        route: RouteSpec,
        resp: Any,
        decision: Decision,
        rate_headers: Headers,
        parsed: dict[str, Any] | None,
        prompt_tokens: int,
        reserved: int,
        model: str | None,
        tenant: str,
        log: dict[str, Any],
    ) -> int:
        status: int = resp.status
        connection_listed = _connection_tokens_raw(resp.headers)
        out: Headers = []
        sse = False
        is_json = False
        for k, v in resp.headers:
            if k in HOP_BY_HOP or k in connection_listed or k.startswith(_RATE_HEADERS):
                continue
            if k == b"content-type":
                sse = v.startswith(b"text/event-stream")
                is_json = b"json" in v
            out.append((k, v))
        out += rate_headers
        tracker = None
        buf: bytearray | None = None
        if route.llm and status < 500:
            if sse:
                tracker = SSEUsageTracker(
                    route.dialect, model=model, use_tiktoken=self.use_tiktoken
                )
            elif is_json:
                buf = bytearray()
        watcher: asyncio.Task[None] | None = None
        gone = asyncio.Event()
        if sse:
            watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, gone, resp))
        error: UpstreamError | None = None
        finished = False
        try:
            await send({"type": "http.response.start", "status": status, "headers": out})
            while True:
                try:
                    chunk = await resp.read()
                except UpstreamError as exc:
                    error = exc
                    break
                if not chunk:
                    break
                if tracker is not None:
                    tracker.feed(chunk)
                elif buf is not None and len(buf) < _JSON_CAP:
                    buf += chunk
                if gone.is_set():
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if gone.is_set():
                    break
            if error is None and not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                finished = True
        finally:
            resp.close()
            if watcher is not None:
                watcher.cancel()
            charged = self._actual(
                route, status, tracker, buf, parsed, prompt_tokens, reserved, model
            )
            await self.engine.settle(decision.id, charged)
            log["tokens"] = charged
            self.metrics._child(self.metrics.tokens, self.metrics.tenant_label(tenant)).inc(charged)
        if gone.is_set() and not finished:
            log["disconnected"] = True
            return 499
        if error is not None:
            log["error"] = str(error)
            raise error  # the response already started: abort the client connection
        return status

    def _actual(
        self,
        route: RouteSpec,
        status: int,
        tracker: SSEUsageTracker | None,
        buf: bytearray | None,
        parsed: dict[str, Any] | None,
        prompt_tokens: int,
        reserved: int,
        model: str | None,
    ) -> float:
        """Tokens to charge (see the module docstring for the rules)."""
        if not route.llm:
            return float(reserved)
        if status >= 500:
            return 0.0
        usage: Usage | None = None
        if tracker is not None:
            tracker.close()
            usage = tracker.usage(prompt_tokens=prompt_tokens)
        elif buf is not None:
            try:
                doc = json.loads(bytes(buf))
            except (ValueError, UnicodeDecodeError):
                doc = None
            if isinstance(doc, dict):
                usage = parse_usage_json(doc, route.dialect)
                if usage is None and status < 400:
                    text = response_text(doc)
                    counter = TokenCounter(
                        encoding_for_model(model, dialect=route.dialect),
                        use_tiktoken=self.use_tiktoken,
                    )
                    return float(prompt_tokens + counter(text))
        if usage is not None:
            if usage.source == "reported" and usage.prompt_tokens > 0:
                err = (prompt_tokens - usage.prompt_tokens) / usage.prompt_tokens
                self.metrics.observe(self.metrics.estimate_error, err, route.dialect)
            return float(usage.total_tokens)
        if status >= 400:
            return 0.0
        return float(reserved)


def retry_attempt(headers: Mapping[str, str]) -> int:
    """Which retry this call is: ``x-stainless-retry-count`` (the official SDKs send it on every
    attempt), ``Retry-Attempt`` or ``X-Retry-Attempt``; 0 for an original call or an
    unparsable value."""
    value = (
        headers.get("x-stainless-retry-count")
        or headers.get("retry-attempt")
        or headers.get("x-retry-attempt")
    )
    if value is None or not value.strip().isdigit():
        return 0
    return min(int(value), 1000)


def trace_id(headers: Mapping[str, str]) -> str | None:
    """The W3C ``traceparent`` trace id (``00-<32 hex>-<16 hex>-<2 hex>``), else
    ``X-Agent-Pipeline-Id``: the fan-out a retry belongs to, for per-trace retry caps."""
    parent = headers.get("traceparent")
    if parent:
        parts = parent.strip().split("-")
        if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
            return parts[1].lower()
    pipeline = headers.get("x-agent-pipeline-id")
    return pipeline[:128] if pipeline else None


def path_of(scope: Scope) -> str:
    path: str = scope["path"]
    return path


def _connection_tokens(value: str | None) -> frozenset[bytes]:
    if not value:
        return frozenset()
    return frozenset(t.strip().lower().encode("latin-1") for t in value.split(",") if t.strip())


def _connection_tokens_raw(headers: Headers) -> frozenset[bytes]:
    found: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            found.update(t.strip().lower() for t in v.split(b",") if t.strip())
    return frozenset(found)


async def _stream_body(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives (non-LLM routes without Content-Length)."""
    seen = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise _BodyTooLarge
        if chunk:
            yield chunk
        more = message.get("more_body", False)


async def _watch_disconnect(receive: Receive, gone: asyncio.Event, resp: Any) -> None:
    """Wait for ``http.disconnect`` while streaming; then stop reading the upstream."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            resp.close()
            return
