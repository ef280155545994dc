"""The proxy end to end over loopback HTTP: the official openai SDK, token reconciliation,
credentials, hop-by-hop headers, identity isolation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from sluicegate.clock import VirtualClock
from sluicegate.gateway.server import GatewayServer
from tests.gateway_helpers import mock_server, running_gateway, write_policy

ACME = {"authorization": "Bearer key-acme-planner"}
MSG = [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]
ACME_TOKENS = "sg:{acme}:a:planner:tokens"
TENANT_TOKENS = "sg:{acme}:t:tokens"


@pytest.fixture
async def mock() -> AsyncIterator[GatewayServer]:
    async with mock_server() as m:
        yield m


@pytest.fixture
async def frozen(tmp_path: Path, mock: GatewayServer) -> AsyncIterator[GatewayServer]:
    """A gateway whose engine clock never moves: token debt in a GCRA bucket is then exactly
    the tokens charged, so reconciliation can be checked to the token."""
    policy = write_policy(tmp_path / "p.yaml", mock.mock_url)
    async with running_gateway(policy, clock=VirtualClock(1000.0)) as gw:
        yield gw


def debt(gw: GatewayServer, key: str) -> float:
    """Tokens charged to a GCRA bucket under the frozen clock."""
    store = gw.store
    tat = store.peek(key)  # type: ignore[attr-defined]
    if tat is None:
        return 0.0
    interval = 60 / 100_000_000  # the test policy's agent and tenant token rate
    return round((tat - gw.engine.clock.now()) / interval, 3)


def sdk(gw: GatewayServer, key: str = "key-acme-planner", **kw: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, **kw)  # type: ignore[arg-type]


async def test_openai_sdk_chat_stream_embeddings_reconciled_exactly(
    frozen: GatewayServer,
) -> None:
    async with sdk(frozen, max_retries=0) as client:
        chat = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MSG,
            max_tokens=40,  # type: ignore[arg-type]
        )
        assert chat.choices[0].message.content
        assert chat.usage is not None
        charged = chat.usage.total_tokens
        assert debt(frozen, ACME_TOKENS) == charged

        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MSG,  # type: ignore[arg-type]
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert len(pieces) == 7 and usage is not None
        charged += usage.total_tokens
        assert debt(frozen, ACME_TOKENS) == charged

        emb = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
        assert len(emb.data) == 2
        charged += emb.usage.total_tokens
        assert debt(frozen, ACME_TOKENS) == charged
        assert debt(frozen, TENANT_TOKENS) == charged


async def test_stream_without_usage_counts_streamed_text(frozen: GatewayServer) -> None:
    async with httpx.AsyncClient() as c:
        body = {"model": "gpt-4o-mini", "messages": MSG, "stream": True, "max_tokens": 10}
        r = await c.post(frozen.url + "/v1/chat/completions", json=body, headers=ACME)
        assert r.status_code == 200 and "data: [DONE]" in r.text
    charged = debt(frozen, ACME_TOKENS)
    # the reservation was prompt + 10; with no usage reported the gateway counted the text
    assert 10 <= charged < 200


async def test_credentials_and_hop_by_hop_headers_not_forwarded(
    frozen: GatewayServer, mock: GatewayServer
) -> None:
    assert mock.mock is not None
    headers = {
        **ACME,
        "x-api-key": "key-acme-planner",
        "connection": "keep-alive, x-secret-hop",
        "x-secret-hop": "1",
        "te": "trailers",
        "proxy-authorization": "Basic abc",
        "x-keep-me": "yes",
    }
    async with httpx.AsyncClient() as c:
        r = await c.post(
            frozen.url + "/v1/chat/completions", json={"messages": MSG}, headers=headers
        )
    assert r.status_code == 200
    seen = mock.mock.requests[-1][2]
    assert seen["authorization"] == "Bearer upstream-secret"  # replaced by the upstream's
    for name in ("x-api-key", "x-secret-hop", "te", "proxy-authorization", "connection"):
        assert name not in seen
    assert seen["x-keep-me"] == "yes"
    assert "upstream-secret" not in str(r.headers)


async def test_forged_tenant_headers_are_ignored(frozen: GatewayServer) -> None:
    forged = {**ACME, "x-tenant": "globex", "x-agent-tenant": "globex", "x-agent": "bot"}
    async with httpx.AsyncClient() as c:
        r = await c.post(
            frozen.url + "/v1/chat/completions", json={"messages": MSG}, headers=forged
        )
    assert r.status_code == 200
    assert debt(frozen, ACME_TOKENS) > 0
    assert frozen.store.peek("sg:{globex}:t:tokens") is None  # type: ignore[attr-defined]


async def test_missing_or_bad_key_is_401(frozen: GatewayServer) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(frozen.url + "/v1/chat/completions", json={"messages": MSG})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "missing_credentials"
        r = await c.post(
            frozen.url + "/v1/chat/completions",
            json={"messages": MSG},
            headers={"authorization": "Bearer nope"},
        )
        assert r.status_code == 401


TIGHT = """\
tiers:
  pro:
    tenant:  {requests: 60/min, burst: 2, tokens: 100M/min}
    agent:   {requests: 60/min, burst: 1, tokens: 100M/min}
tenants:
  acme: {tier: pro}
  globex: {tier: pro}
pools:
  openai: {requests: 1M/min, tokens: 1000M/min}
"""


async def test_429_sdk_sees_headers_and_retries_after_retry_after(
    tmp_path: Path, mock: GatewayServer
) -> None:
    assert mock.mock is not None
    policy = write_policy(tmp_path / "p.yaml", mock.mock_url, limits=TIGHT)
    async with running_gateway(policy) as gw:
        rt = {"x-agent-workload-class": "realtime"}
        async with sdk(gw, max_retries=0, default_headers=rt) as client:
            await client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
            with pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
            resp = info.value.response
            assert 1 <= int(resp.headers["retry-after"]) <= 2
            assert 0 < int(resp.headers["retry-after-ms"]) <= 1000
            assert resp.headers["x-ratelimit-remaining-requests"] == "0"
            assert "ratelimit-policy" in resp.headers
            error = resp.json()["error"]
            assert error["type"] == "rate_limit_exceeded" and error["code"] == "rate_limited"
            assert "agent-requests" in error["message"]
        # tenant globex has its own budget: acme being limited does not touch it
        async with sdk(gw, "key-globex-bot", max_retries=0, default_headers=rt) as other:
            await other.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
        async with sdk(gw, max_retries=2, default_headers=rt) as client:
            t0 = time.monotonic()
            await client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
            elapsed = time.monotonic() - t0
        # the SDK waited for retry-after-ms (~1 s at 60/min), not its own short backoff
        assert 0.5 <= elapsed < 5
        assert mock.mock.requests[-1][2].get("x-stainless-retry-count") in ("1", "2")


async def test_anthropic_route_refusal_in_anthropic_shape(
    tmp_path: Path, mock: GatewayServer
) -> None:
    policy = write_policy(tmp_path / "p.yaml", mock.mock_url, limits=TIGHT)
    async with running_gateway(policy) as gw, httpx.AsyncClient() as c:
        body = {"model": "claude-x", "max_tokens": 20, "messages": MSG}
        headers = {"x-api-key": "key-acme-planner", "x-agent-workload-class": "realtime"}
        r1 = await c.post(gw.url + "/v1/messages", json=body, headers=headers)
        assert r1.status_code == 200 and r1.json()["type"] == "message"
        r2 = await c.post(gw.url + "/v1/messages", json=body, headers=headers)
        assert r2.status_code == 429
        doc = r2.json()
        assert doc["type"] == "error" and doc["error"]["type"] == "rate_limit_error"
        assert "retry-after" in r2.headers


async def test_anthropic_stream_reconciled(frozen: GatewayServer) -> None:
    async with httpx.AsyncClient() as c:
        body = {"model": "claude-x", "max_tokens": 9, "messages": MSG, "stream": True}
        r = await c.post(
            frozen.url + "/v1/messages", json=body, headers={"x-api-key": "key-acme-planner"}
        )
    assert r.status_code == 200 and "message_stop" in r.text
    mock_prompt = int(r.text.split('"input_tokens": ')[1].split(",")[0].split("}")[0])
    assert debt(frozen, ACME_TOKENS) == mock_prompt + 9


async def test_tool_route_streams_request_body(frozen: GatewayServer) -> None:
    async def gen() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 1000

    async with httpx.AsyncClient() as c:
        r = await c.post(frozen.url + "/tools/run", content=gen(), headers=ACME)
    # the mock answers non-JSON bodies with 400, proving the bytes arrived unparsed
    assert r.status_code == 400


async def test_unknown_route_404(frozen: GatewayServer) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.get(frozen.url + "/nothing", headers=ACME)
    assert r.status_code == 404
