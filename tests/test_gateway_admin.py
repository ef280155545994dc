"""Admin API: token protection, status, metrics, hot reload (also under load, also broken)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sluicegate.gateway.server import GatewayServer
from tests.gateway_helpers import mock_server, running_gateway, write_policy

TOKEN = "s3cret-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ACME = {"authorization": "Bearer key-acme-planner"}
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def mock() -> AsyncIterator[GatewayServer]:
    async with mock_server() as m:
        yield m


@pytest.fixture
async def gw(
    tmp_path: Path, mock: GatewayServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[GatewayServer]:
    monkeypatch.setenv("SG_TEST_ADMIN_TOKEN", TOKEN)
    policy = write_policy(tmp_path / "p.yaml", mock.mock_url)
    async with running_gateway(policy) as server:
        yield server


async def test_probes_need_no_token_everything_else_does(gw: GatewayServer) -> None:
    async with httpx.AsyncClient() as c:
        assert (await c.get(gw.admin_url + "/healthz")).json() == {"status": "ok"}
        assert (await c.get(gw.admin_url + "/readyz")).status_code == 200
        assert (await c.get(gw.admin_url + "/status")).status_code == 401
        bad = {"authorization": "Bearer wrong"}
        assert (await c.get(gw.admin_url + "/metrics", headers=bad)).status_code == 401
        assert (await c.post(gw.admin_url + "/admin/reload")).status_code == 401


async def test_admin_disabled_without_token(
    gw: GatewayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SG_TEST_ADMIN_TOKEN")
    async with httpx.AsyncClient() as c:
        r = await c.get(gw.admin_url + "/status", headers=AUTH)
        assert r.status_code == 403 and "disabled" in r.json()["error"]
        assert (await c.get(gw.admin_url + "/healthz")).status_code == 200


async def test_status_and_metrics(gw: GatewayServer) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(gw.url + "/v1/chat/completions", json={"messages": MSG}, headers=ACME)
        assert r.status_code == 200
        status = (await c.get(gw.admin_url + "/status", headers=AUTH)).json()
        assert status["tenants"] == ["acme", "globex"]
        assert status["queues"]["mock"]["waiting"] == 0
        assert status["store"]["url"] == "memory"
        text = (await c.get(gw.admin_url + "/metrics", headers=AUTH)).text
    assert (
        'sluicegate_decisions_total{outcome="allow",reason="ok",tenant="acme",'
        'workload_class="interactive"} 1.0' in text
    )
    assert 'sluicegate_class_sla_p95_seconds{workload_class="realtime"} 0.8' in text
    assert "sluicegate_request_duration_seconds_bucket" in text
    assert "sluicegate_upstream_latency_seconds_count" in text
    assert "sluicegate_token_estimate_error_ratio_count" in text


BROKEN = "version: 1\ntiers: {pro: {tenant: {requests: lots}}}\n"


async def test_reload_under_load_and_broken_policy_keeps_old(
    gw: GatewayServer, tmp_path: Path, mock: GatewayServer
) -> None:
    path = tmp_path / "p.yaml"
    good = path.read_text()
    failures: list[int] = []
    stop = asyncio.Event()

    async def load(c: httpx.AsyncClient) -> int:
        n = 0
        while not stop.is_set():
            r = await c.post(gw.url + "/v1/embeddings", json={"input": "hi"}, headers=ACME)
            n += 1
            if r.status_code != 200:
                failures.append(r.status_code)
        return n

    async with httpx.AsyncClient(timeout=10) as c, httpx.AsyncClient() as admin:
        workers = [asyncio.create_task(load(c)) for _ in range(8)]
        for i in range(10):
            path.write_text(good.replace("100000/min", f"{100000 + i}/min"))
            r = await admin.post(gw.admin_url + "/admin/reload", headers=AUTH)
            assert r.json() == {"reloaded": True}
            await asyncio.sleep(0.02)
        path.write_text(BROKEN)
        r = await admin.post(gw.admin_url + "/admin/reload", headers=AUTH)
        assert r.status_code == 400
        problems = r.json()["problems"]
        assert any("tiers.pro.tenant.requests" in p for p in problems)
        await asyncio.sleep(0.05)
        stop.set()
        served = sum(await asyncio.gather(*workers))
    assert served > 20 and failures == []
    # the last good policy is still in force
    rate = gw.engine.policy.tenant_rules["acme"][0].rate
    assert rate is not None and rate.count == 100009
    text = gw.metrics.render().decode()
    assert 'sluicegate_policy_reloads_total{result="ok"} 10.0' in text
    assert 'sluicegate_policy_reloads_total{result="failed"} 1.0' in text


async def test_reload_that_replaces_an_upstream_lets_live_streams_finish(
    gw: GatewayServer, tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    body = {"messages": MSG, "stream": True, "max_tokens": 10}
    headers = {**ACME, "x-mock-chunk-delay": "0.03"}
    async with httpx.AsyncClient(timeout=10) as c:
        stream = asyncio.create_task(
            c.post(gw.url + "/v1/chat/completions", json=body, headers=headers)
        )
        await asyncio.sleep(0.1)
        path.write_text(path.read_text().replace("read_timeout: 10s", "read_timeout: 11s"))
        r = await c.post(gw.admin_url + "/admin/reload", headers=AUTH)
        assert r.json() == {"reloaded": True}
        assert gw.gateway.config.upstreams["mock"].read_timeout == 11
        done = await stream
    assert done.status_code == 200
    assert done.text.count('"content"') == 11 and done.text.endswith("data: [DONE]\n\n")
