"""Shadow mode and fail-closed answers through every adapter.

The engine reports a shadow refusal as an *allowed* decision with ``shadow_refused`` True, the
would-be reason, and ``shadow_buckets``; a fail-closed store outage as reason
``store_unavailable``. These tests feed such decisions to the adapters (which read them with
``getattr``, so they work before and after the engine grows the fields): shadow never refuses and
is reported as "would refuse"; an outage is gRPC UNAVAILABLE / HTTP 503 / Deny.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")
pytest.importorskip("starlette")

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # noqa: E402
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from sluicegate.clock import VirtualClock  # noqa: E402
from sluicegate.engine import Decision, Engine, Outcome, RequestContext  # noqa: E402
from sluicegate.integrations.aws_lambda import LambdaAuthorizer, load_keys  # noqa: E402
from sluicegate.integrations.decide_api import create_app  # noqa: E402
from sluicegate.integrations.rls import RateLimitServicer, serve  # noqa: E402
from sluicegate.policy import load_policy  # noqa: E402
from sluicegate.stores import MemoryStore  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures" / "envoy"
Resp = rls_pb2.RateLimitResponse


class ShadowDecision(Decision):
    """A Decision carrying the engine's coming shadow fields (no __slots__: has a __dict__)."""


class ShadowEngine(Engine):
    """Turns every refusal into an allowed shadow refusal, or every decision into a
    fail-closed outage, the way the engine will report them."""

    mode = "shadow"

    async def decide(self, ctx: RequestContext) -> Decision:
        d = await super().decide(ctx)
        fields = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
        if self.mode == "outage":
            fields.update(outcome=Outcome.REFUSE, reason="store_unavailable", result=None,
                          rules=(), keys=(), costs=())  # fmt: skip
            return ShadowDecision(**fields)
        out = ShadowDecision(**fields)
        if d.outcome is Outcome.REFUSE:
            out.outcome, out.retry_after = Outcome.ALLOW, None
            out.shadow_refused = True  # type: ignore[attr-defined]
            out.shadow_buckets = [b.name for b in d.refusing]  # type: ignore[attr-defined]
        return out


def engine(mode: str = "shadow") -> ShadowEngine:
    e = ShadowEngine(load_policy(FIX / "policy.yaml"), MemoryStore(), VirtualClock(0.0))
    e.mode = mode
    return e


@pytest.mark.asyncio(loop_scope="session")
async def test_rls_shadow_never_refuses(caplog: pytest.LogCaptureFixture) -> None:
    servicer = RateLimitServicer(engine())
    server = await serve(servicer, port=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)
            entry = ratelimit_pb2.RateLimitDescriptor.Entry
            d = ratelimit_pb2.RateLimitDescriptor(
                entries=[entry(key="tenant", value="acme"), entry(key="agent", value="s")]
            )
            request = rls_pb2.RateLimitRequest(domain="x", descriptors=[d])
            with caplog.at_level(logging.INFO, logger="sluicegate.integrations"):
                codes = [(await stub.ShouldRateLimit(request)).overall_code for _ in range(8)]
            assert codes == [Resp.OK] * 8
            last = await stub.ShouldRateLimit(request)
            assert ("x-sluicegate-shadow", "would-refuse") in [
                (h.key, h.value) for h in last.response_headers_to_add
            ]
        assert servicer.metrics.snapshot()["would_refuse"] == 4
        assert "would refuse" in caplog.text and "agent-requests" in caplog.text
    finally:
        await server.stop(0)


@pytest.mark.asyncio(loop_scope="session")
async def test_rls_reason_store_unavailable_is_grpc_unavailable() -> None:
    server = await serve(RateLimitServicer(engine("outage")), port=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = rls_pb2_grpc.RateLimitServiceStub(ch)
            entry = ratelimit_pb2.RateLimitDescriptor.Entry
            d = ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="tenant", value="acme")])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="x", descriptors=[d]))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


def _decide(client: Any, n: int) -> list[dict[str, Any]]:
    h = {"authorization": "Bearer t"}
    body = {"tenant": "acme", "agent": "s"}
    return [client.post("/v1/decide", json=body, headers=h).json() for _ in range(n)]


def test_decide_api_shadow_and_outage() -> None:
    app = create_app(engine(), token="t")
    with TestClient(app) as client:
        out = _decide(client, 7)
        assert all(d["allowed"] for d in out)
        assert [d["shadow_refused"] for d in out] == [False] * 5 + [True] * 2
        assert out[-1]["shadow_buckets"] == ["agent-requests"]
        assert out[-1]["reason"] == "rate_limited"  # the would-be reason
    assert app.state.api.metrics.snapshot()["would_refuse"] == 2
    with TestClient(create_app(engine("outage"), token="t")) as client:
        r = client.post("/v1/decide", json={"tenant": "acme", "agent": "s"},
                        headers={"authorization": "Bearer t"})  # fmt: skip
        assert r.status_code == 503 and r.json()["error"] == "store unavailable"


def test_lambda_shadow_allows() -> None:
    auth = LambdaAuthorizer(engine(), load_keys(FIX / "lambda" / "keys.yaml"))
    ev = json.loads((FIX / "lambda" / "request_v1.json").read_text())
    try:
        outs = [auth(ev, None) for _ in range(5)]
        assert {o["policyDocument"]["Statement"][0]["Effect"] for o in outs} == {"Allow"}
        assert outs[-1]["context"]["shadow_refused"] is True
    finally:
        auth.close()
    outage = LambdaAuthorizer(engine("outage"), load_keys(FIX / "lambda" / "keys.yaml"))
    try:
        o = outage(ev, None)
        assert o["policyDocument"]["Statement"][0]["Effect"] == "Deny"
        assert o["context"]["reason"] == "store_unavailable"
    finally:
        outage.close()


def test_middleware_shadow_and_outage() -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from sluicegate.asgi import Identity, RateLimitMiddleware

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    for mode, expected in (("shadow", [200] * 7), ("outage", [503])):
        e = engine(mode)
        app = Starlette(
            routes=[Route("/", ok)],
            middleware=[
                Middleware(
                    RateLimitMiddleware,
                    engine=e,  # type: ignore[arg-type]
                    identify=lambda s: Identity("acme", "m"),
                )
            ],  # fmt: skip
        )
        with TestClient(app) as client:
            assert [client.get("/").status_code for _ in expected] == expected


@pytest.mark.asyncio(loop_scope="session")
async def test_real_shadow_policy_through_rls_and_decide_api() -> None:
    policy = load_policy(FIX / "policy_shadow.yaml")
    servicer = RateLimitServicer(Engine(policy, MemoryStore(), VirtualClock(0.0)))
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[entry(key="tenant", value="acme"), entry(key="agent", value="r")]
    )
    request = rls_pb2.RateLimitRequest(domain="x", descriptors=[d])
    codes = [(await servicer.ShouldRateLimit(request, None)).overall_code for _ in range(8)]
    assert codes == [Resp.OK] * 8
    assert servicer.metrics.snapshot()["would_refuse"] == 3
    app = create_app(Engine(policy, MemoryStore(), VirtualClock(0.0)), token="t")
    with TestClient(app) as client:
        out = _decide(client, 7)
    assert all(o["allowed"] for o in out)
    assert out[-1]["shadow_refused"] is True
    assert out[-1]["shadow_buckets"] == ["agent-requests"]
