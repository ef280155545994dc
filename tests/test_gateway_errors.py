"""Bad input and failing upstreams: every admitted call is settled, nothing leaks or crashes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluicegate.clock import VirtualClock
from sluicegate.gateway.server import GatewayServer
from tests.gateway_helpers import free_port, mock_server, running_gateway, write_policy

ACME = {"authorization": "Bearer key-acme-planner"}
MSG = [{"role": "user", "content": "hello"}]
AGENT_TOKENS = "sg:{acme}:a:planner:tokens"
INTERVAL = 60 / 100_000_000


def open_reservations(gw: GatewayServer) -> int:
    """Reservations admitted but never settled (a settled one is kept as a bare float)."""
    records: dict[str, Any] = gw.store._records  # type: ignore[attr-defined]
    return sum(1 for v in records.values() if not isinstance(v, float))


def debt(gw: GatewayServer, key: str = AGENT_TOKENS) -> float:
    tat = gw.store.peek(key)  # type: ignore[attr-defined]
    return 0.0 if tat is None else round((tat - gw.engine.clock.now()) / INTERVAL, 3)


@pytest.fixture
async def mock() -> AsyncIterator[GatewayServer]:
    async with mock_server() as m:
        yield m


@pytest.fixture
async def gw(tmp_path: Path, mock: GatewayServer) -> AsyncIterator[GatewayServer]:
    policy = write_policy(tmp_path / "p.yaml", mock.mock_url, read_timeout="300ms")
    async with running_gateway(policy, clock=VirtualClock(1000.0)) as server:
        yield server


async def test_malformed_json_400(gw: GatewayServer) -> None:
    async with httpx.AsyncClient() as c:
        for body in (b"{not json", b"[1, 2]", b"", b"\xff\xfe"):
            r = await c.post(gw.url + "/v1/chat/completions", content=body, headers=ACME)
            assert r.status_code == 400, body
            assert r.json()["error"]["code"] == "bad_json"
    assert open_reservations(gw) == 0


async def test_oversize_body_413_declared_and_chunked(gw: GatewayServer) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 70_000}]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    async with httpx.AsyncClient() as c:
        r = await c.post(gw.url + "/v1/chat/completions", content=big, headers=ACME)
        assert r.status_code == 413
        r = await c.post(gw.url + "/v1/chat/completions", content=chunks(), headers=ACME)
        assert r.status_code == 413
    assert open_reservations(gw) == 0


async def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


async def test_cr_lf_in_header_value_400(gw: GatewayServer) -> None:
    body = b'{"messages": []}'
    for bad in (b"x-evil: a\rb", b"x-evil: a\x00b"):
        req = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
            b"key-acme-planner\r\n" + bad + b"\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
        )
        answer = await _raw(gw.url, req)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert open_reservations(gw) == 0


async def test_client_disconnect_mid_stream_settles(gw: GatewayServer) -> None:
    body = json.dumps({"model": "m", "messages": MSG, "stream": True, "max_tokens": 24}).encode()
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
        b"key-acme-planner\r\nx-mock-chunk-delay: 0.05\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(req)
    first = await asyncio.wait_for(reader.read(4096), 5)
    assert first.startswith(b"HTTP/1.1 200")
    writer.close()  # gone after the first events
    for _ in range(100):
        await asyncio.sleep(0.02)
        if open_reservations(gw) == 0:
            break
    assert open_reservations(gw) == 0
    charged = debt(gw)
    # charged what was streamed (a few words) plus the prompt estimate, not the full 24 words
    assert 0 < charged < 24 + 30


async def test_upstream_down_502_refunded(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "p.yaml", f"http://127.0.0.1:{free_port()}")
    async with running_gateway(policy, clock=VirtualClock(1000.0)) as gw:
        async with httpx.AsyncClient() as c:
            body = {"messages": MSG, "max_tokens": 50}
            r = await c.post(gw.url + "/v1/chat/completions", json=body, headers=ACME)
        assert r.status_code == 502
        assert r.json()["error"]["type"] == "upstream_error"
        assert debt(gw) == 0.0  # the whole token reservation was refunded
        assert open_reservations(gw) == 0


async def test_slow_upstream_504_at_timeout(gw: GatewayServer) -> None:
    async with httpx.AsyncClient() as c:
        body = {"messages": MSG, "max_tokens": 50}
        headers = {**ACME, "x-mock-delay": "2"}
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await c.post(gw.url + "/v1/chat/completions", json=body, headers=headers)
        elapsed = loop.time() - t0
    assert r.status_code == 504
    assert 0.25 <= elapsed < 1.5
    # the request reached the upstream: only the prompt estimate stays charged, not the output
    assert 0 < debt(gw) < 50
    assert open_reservations(gw) == 0


async def test_upstream_5xx_passed_through_and_refunded(gw: GatewayServer) -> None:
    async with httpx.AsyncClient() as c:
        headers = {**ACME, "x-mock-status": "503"}
        r = await c.post(gw.url + "/v1/chat/completions", json={"messages": MSG}, headers=headers)
    assert r.status_code == 503
    assert debt(gw) == 0.0
    assert open_reservations(gw) == 0


async def test_keep_alive_survives_many_requests(gw: GatewayServer) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(30):
            r = await c.post(gw.url + "/v1/embeddings", json={"input": "hi"}, headers=ACME)
            assert r.status_code == 200
    assert open_reservations(gw) == 0
