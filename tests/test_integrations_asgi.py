"""RateLimitMiddleware in a real Starlette app served by uvicorn, over real HTTP with httpx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from sluicegate.asgi import (  # noqa: E402
    Identity,
    KeyIdentity,
    RateLimitMiddleware,
    api_key_identity,
    key_digest,  # noqa: E402
)
from sluicegate.clock import VirtualClock  # noqa: E402
from sluicegate.engine import Engine  # noqa: E402
from sluicegate.policy import load_policy  # noqa: E402
from sluicegate.stores import MemoryStore  # noqa: E402
from tests.redis_servers import free_port  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIX = Path(__file__).resolve().parent / "fixtures" / "envoy"
KEYS = {key_digest("sk-1"): KeyIdentity("acme", "bot")}


async def chat(request: Request) -> JSONResponse:
    decision = request.state.sluicegate_decision
    request.state.sluicegate_actual_tokens = 50  # what the upstream reported
    return JSONResponse({"ok": True, "decision": decision.id})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def build(engine: Engine, **kw: Any) -> Starlette:
    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)],
        middleware=[Middleware(RateLimitMiddleware, engine=engine, **kw)],  # type: ignore[arg-type]
    )


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[tuple[Any, Any]] = []

    async def start(app: Any) -> str:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        servers.append((server, task))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, task in servers:
        server.should_exit = True
        await task


async def test_headers_429_body_and_settle(serve: Any) -> None:
    engine = Engine(load_policy(FIX / "policy.yaml"), MemoryStore(), VirtualClock(0.0))
    base = await serve(build(engine, identify=api_key_identity(KEYS), exclude_paths=["/health"]))
    h = {"authorization": "Bearer sk-1", "x-agent-session": "s1", "x-estimated-tokens": "400"}
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        r = await client.post("/v1/chat/completions", headers=h)
        assert r.status_code == 200 and r.json()["ok"] is True
        assert r.headers["x-ratelimit-remaining-requests"] == "2"
        assert r.headers["x-ratelimit-remaining-tokens"] == "600"
        assert "ratelimit-policy" in r.headers
        # settled with the actual 50 tokens: 950 left before this call's 400
        r = await client.post("/v1/chat/completions", headers=h)
        assert r.headers["x-ratelimit-remaining-tokens"] == "550"
        await client.post("/v1/chat/completions", headers=h)
        r = await client.post("/v1/chat/completions", headers=h)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert "retry-after-ms" in r.headers
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.json()["error"]["type"] == "requests"
        assert "session-requests" in r.json()["error"]["message"]
        # unauthenticated
        r = await client.post("/v1/chat/completions")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        # excluded path
        assert (await client.get("/health")).status_code == 200


async def test_async_extractor_anthropic_body_and_pass(serve: Any) -> None:
    engine = Engine(load_policy(FIX / "policy.yaml"), MemoryStore(), VirtualClock(0.0))

    async def identify(scope: Any) -> Identity | None:
        user = dict(scope["headers"]).get(b"x-user")
        return Identity("acme", user.decode()) if user else None

    base = await serve(
        build(engine, identify=identify, body_style="anthropic", unidentified="pass")
    )
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        codes = [
            (await client.post("/v1/chat/completions", headers={"x-user": "u"})).status_code
            for _ in range(6)
        ]
        assert codes == [200] * 5 + [429]
        r = await client.post("/v1/chat/completions", headers={"x-user": "u"})
        assert r.json() == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": r.json()["error"]["message"]},
        }
        # no identity, unidentified="pass": reaches the app without a decision
        assert (await client.get("/health")).status_code == 200


async def test_unknown_tenant_forbidden(serve: Any) -> None:
    engine = Engine(load_policy(FIX / "policy.yaml"), MemoryStore(), VirtualClock(0.0))
    base = await serve(build(engine, identify=lambda scope: Identity("nobody", "a")))
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        r = await client.post("/v1/chat/completions")
        assert r.status_code == 403 and r.json()["error"]["code"] == "unknown_tenant"
