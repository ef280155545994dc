"""The HTTP decision API, for gateways that call out for a decision (Kong, Apigee X, others).

``POST /v1/decide``  identity (tenant, agent, session), workload class, route and method, the
                     token estimate -> outcome, reason, retry-after, the headers to add to the
                     client's response, the decision id, and (when refused) the status and
                     JSON body to send.
``POST /v1/settle``  decision id, actual tokens -> applied / duplicate / unknown.
``GET /openapi.json`` the OpenAPI 3.1 document of the above (generated from the models).
``GET /healthz``     liveness (no authentication).

Every ``/v1`` call needs ``Authorization: Bearer <token>``; the token is given to
:func:`create_app` (the CLI reads it from an environment variable, never from the command line).
Input is validated strictly (unknown fields, wrong types, non-finite numbers are rejected with
422 and a list of problems); bad input never yields a 5xx. A decision is always HTTP 200, whatever
its outcome: the gateway reads ``allowed``. A store that is down (fail closed) is 503.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluicegate.engine import Engine, Outcome, RequestContext
from sluicegate.errors import StoreError
from sluicegate.headers import render_headers
from sluicegate.integrations.common import (
    BodyStyle,
    Metrics,
    refusal_body,
    refusal_status,
    retry_after_value,
    shadow_buckets,
    shadow_refused,
    store_unavailable,
)

MAX_BODY = 64 * 1024


def _utf8(value: str) -> str:
    """Reject lone surrogates (valid in JSON escapes, not in UTF-8): ids become store keys."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]
Ident = Annotated[Text, Field(min_length=1, max_length=256)]
Finite = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DecideRequest(_Model):
    """One call to decide on. ``estimated_tokens`` is the token reservation (prompt estimate +
    reserved output); settle it later with the decision id."""

    tenant: Ident
    agent: Ident
    session: Ident | None = None
    workload_class: Annotated[Text, Field(min_length=1, max_length=64)] | None = None
    route: Annotated[Text, Field(min_length=1, max_length=2048)] = "/"
    method: Annotated[str, Field(pattern=r"^[A-Za-z]{1,16}$")] = "POST"
    estimated_tokens: Finite = 0.0
    cost_units: Finite | None = None
    pool: Annotated[Text, Field(min_length=1, max_length=128)] | None = None
    max_wait: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] | None = None


class DecideResponse(_Model):
    decision_id: str
    allowed: bool
    outcome: Literal["allow", "wait", "refuse"]
    reason: str
    explanation: str
    workload_class: str
    delay: float = Field(description="seconds to wait before forwarding (outcome wait)")
    retry_after: float | None = Field(description="seconds; null when allowed or never")
    refusing: list[str]
    shadow_refused: bool = Field(description="a shadow limit would have refused")
    shadow_buckets: list[str]
    headers: dict[str, str] = Field(description="rate-limit headers to add to the response")
    status: int = Field(description="HTTP status to answer the client with when refused")
    body: dict[str, Any] | None = Field(description="JSON body to send when refused")


class SettleRequest(_Model):
    decision_id: Annotated[Text, Field(min_length=1, max_length=128)]
    actual_tokens: Finite


class SettleResponse(_Model):
    status: Literal["applied", "duplicate", "unknown"]
    delta: float


class Problem(_Model):
    error: str
    detail: list[str] = Field(default_factory=list)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def _json_body(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at ``/openapi.json``."""
    errors = {
        "401": {"description": "missing or wrong bearer token", **_json_body("Problem")},
        "413": {"description": "body too large", **_json_body("Problem")},
        "415": {"description": "not application/json", **_json_body("Problem")},
        "422": {"description": "invalid input", **_json_body("Problem")},
        "503": {"description": "store unavailable (fail closed)", **_json_body("Problem")},
    }
    components = {
        m.__name__: _schema(m)
        for m in (DecideRequest, DecideResponse, SettleRequest, SettleResponse, Problem)
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "sluicegate decision API", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/decide": {
                "post": {
                    "operationId": "decide",
                    "summary": "Decide allow / wait / refuse for one call",
                    "requestBody": {"required": True, **_json_body("DecideRequest")},
                    "responses": {
                        "200": {"description": "the decision", **_json_body("DecideResponse")},
                        **errors,
                    },
                }
            },
            "/v1/settle": {
                "post": {
                    "operationId": "settle",
                    "summary": "Reconcile a decision's token reservation with actual usage",
                    "requestBody": {"required": True, **_json_body("SettleRequest")},
                    "responses": {
                        "200": {"description": "what settle did", **_json_body("SettleResponse")},
                        **errors,
                    },
                }
            },
        },
    }


def _problem(status: int, error: str, detail: list[str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail or []}, status_code=status)


def _validation_detail(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors()[:20]:
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        out.append(f"{loc}: {e['msg']}")
    return out


class DecisionApi:
    """The ASGI app's handlers around one engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        token: str,
        body_style: BodyStyle = "openai",
        metrics: Metrics | None = None,
    ) -> None:
        if not token:
            raise ValueError("the decision API needs a bearer token")
        self.engine = engine
        self._token = f"Bearer {token}".encode()
        self.body_style: BodyStyle = body_style
        self.metrics = metrics or Metrics()
        self._openapi = json.dumps(openapi_document()).encode()

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._token)

    async def _read(self, request: Request, model: type[_Model]) -> _Model | Response:
        if not self._authorized(request):
            return _problem(401, "unauthorized")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _problem(415, "content-type must be application/json")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return _problem(413, "body too large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _problem(413, "body too large")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return _problem(422, "body is not valid JSON")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            return _problem(422, "invalid request", _validation_detail(exc))
        except RecursionError:
            return _problem(422, "body nested too deeply")

    async def decide(self, request: Request) -> Response:
        parsed = await self._read(request, DecideRequest)
        if isinstance(parsed, Response):
            return parsed
        assert isinstance(parsed, DecideRequest)
        ctx = RequestContext(
            tenant=parsed.tenant,
            agent=parsed.agent,
            session=parsed.session,
            workload_class=parsed.workload_class,
            tokens=parsed.estimated_tokens,
            cost_units=parsed.cost_units,
            method=parsed.method.upper(),
            path=parsed.route,
            pool=parsed.pool,
            max_wait=parsed.max_wait,
        )
        try:
            decision = await self.engine.decide(ctx)
        except StoreError as exc:
            self.metrics.counts["store_unavailable"] += 1
            return _problem(503, "store unavailable", [str(exc)])
        if store_unavailable(decision):
            self.metrics.counts["store_unavailable"] += 1
            return _problem(503, "store unavailable", [decision.warning or ""])
        self.metrics.record(decision, where="decide-api")
        refused = decision.outcome is Outcome.REFUSE
        payload = {
            "decision_id": decision.id,
            "allowed": decision.allowed,
            "outcome": decision.outcome.value,
            "reason": str(decision.reason),
            "explanation": decision.explain(),
            "workload_class": decision.workload_class,
            "delay": decision.delay,
            "retry_after": retry_after_value(decision),
            "refusing": [b.name for b in decision.refusing],
            "shadow_refused": shadow_refused(decision),
            "shadow_buckets": shadow_buckets(decision),
            "headers": dict(render_headers(decision)),
            "status": refusal_status(decision) if refused else 200,
            "body": refusal_body(decision, self.body_style) if refused else None,
        }
        return JSONResponse(payload)

    async def settle(self, request: Request) -> Response:
        parsed = await self._read(request, SettleRequest)
        if isinstance(parsed, Response):
            return parsed
        assert isinstance(parsed, SettleRequest)
        try:
            result = await self.engine.settle(parsed.decision_id, parsed.actual_tokens)
        except StoreError as exc:
            return _problem(503, "store unavailable", [str(exc)])
        delta = result.delta if math.isfinite(result.delta) else 0.0
        return JSONResponse({"status": result.status.name.lower(), "delta": delta})

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})


def create_app(
    engine: Engine, *, token: str, body_style: BodyStyle = "openai", metrics: Metrics | None = None
) -> Starlette:
    """The decision API as an ASGI app (serve it with uvicorn)."""
    api = DecisionApi(engine, token=token, body_style=body_style, metrics=metrics)
    app = Starlette(
        routes=[
            Route("/v1/decide", api.decide, methods=["POST"]),
            Route("/v1/settle", api.settle, methods=["POST"]),
            Route("/openapi.json", api.openapi, methods=["GET"]),
            Route("/healthz", api.healthz, methods=["GET"]),
        ]
    )
    app.state.api = api
    return app
