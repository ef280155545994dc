"""Workload classes through the proxy: priority order when waiting, max wait, reserved capacity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sluicegate.gateway.server import GatewayServer
from tests.gateway_helpers import mock_server, running_gateway, write_policy

MSG = [{"role": "user", "content": "hello"}]


def headers(cls: str, tag: str = "") -> dict[str, str]:
    return {
        "authorization": "Bearer key-acme-planner",
        "x-agent-workload-class": cls,
        "x-tag": tag or cls,
    }


@pytest.fixture
async def mock() -> AsyncIterator[GatewayServer]:
    async with mock_server() as m:
        yield m


def limits(rate: str, burst: int) -> str:
    return f"""\
tiers:
  pro:
    tenant: {{requests: {rate}, burst: {burst}, tokens: 100M/min}}
tenants:
  acme: {{tier: pro}}
pools:
  openai: {{requests: 1M/min}}
"""


async def test_waiting_calls_go_in_priority_order_and_realtime_never_waits(
    tmp_path: Path, mock: GatewayServer
) -> None:
    assert mock.mock is not None
    policy = write_policy(tmp_path / "p.yaml", mock.mock_url, limits=limits("10/s", 1))
    async with running_gateway(policy) as gw, httpx.AsyncClient(timeout=10) as c:
        url = gw.url + "/v1/chat/completions"
        first = await c.post(url, json={"messages": MSG}, headers=headers("interactive", "x"))
        assert first.status_code == 200
        batch = [
            asyncio.create_task(
                c.post(url, json={"messages": MSG}, headers=headers("batch", f"b{i}"))
            )
            for i in range(3)
        ]
        await asyncio.sleep(0.02)
        inter = [
            asyncio.create_task(
                c.post(url, json={"messages": MSG}, headers=headers("interactive", f"i{i}"))
            )
            for i in range(3)
        ]
        await asyncio.sleep(0.02)
        t0 = asyncio.get_running_loop().time()
        rt = await c.post(url, json={"messages": MSG}, headers=headers("realtime"))
        rt_elapsed = asyncio.get_running_loop().time() - t0
        assert rt.status_code == 429 and rt_elapsed < 0.09  # refused at once, never queued
        done = await asyncio.gather(*batch, *inter)
        assert [r.status_code for r in done] == [200] * 6
        order = [h.get("x-tag") for _, _, h in mock.mock.requests[-6:]]
        assert order == ["i0", "i1", "i2", "b0", "b1", "b2"]


async def test_batch_waits_up_to_max_wait_then_429(tmp_path: Path, mock: GatewayServer) -> None:
    policy = write_policy(
        tmp_path / "p.yaml", mock.mock_url, limits=limits("4/s", 1), batch_wait="400ms"
    )
    async with running_gateway(policy) as gw, httpx.AsyncClient(timeout=10) as c:
        url = gw.url + "/v1/chat/completions"
        assert (await c.post(url, json={"messages": MSG}, headers=headers("realtime"))).is_success
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def timed(tag: str) -> tuple[int, float]:
            r = await c.post(url, json={"messages": MSG}, headers=headers("batch", tag))
            return r.status_code, loop.time() - t0

        (s1, t1), (s2, t2) = await asyncio.gather(timed("b1"), timed("b2"))
        assert s1 == 200 and 0.15 <= t1 < 1.0, (s1, t1)  # waited for the next slot (every 250 ms)
        assert s2 == 429 and t2 < 1.5, (s2, t2)  # its next chance lies beyond its 400 ms max wait
        statuses = gw.gateway.queues()
        assert all(q["waiting"] == 0 for q in statuses.values())


async def test_batch_cannot_use_capacity_left_for_other_classes(
    tmp_path: Path, mock: GatewayServer
) -> None:
    policy = write_policy(
        tmp_path / "p.yaml", mock.mock_url, limits=limits("1/s", 10), batch_wait="0s"
    )
    async with running_gateway(policy) as gw, httpx.AsyncClient(timeout=10) as c:
        url = gw.url + "/v1/chat/completions"
        batch = [
            (await c.post(url, json={"messages": MSG}, headers=headers("batch"))).status_code
            for _ in range(10)
        ]
        assert batch.count(200) == 5  # scale 0.5: half of the burst of 10
        rt = [
            (await c.post(url, json={"messages": MSG}, headers=headers("realtime"))).status_code
            for _ in range(5)
        ]
        assert rt == [200] * 5  # the other half is still there for realtime


async def test_unknown_class_policy_reject_400(tmp_path: Path, mock: GatewayServer) -> None:
    policy = write_policy(tmp_path / "p.yaml", mock.mock_url, unknown="reject")
    async with running_gateway(policy) as gw, httpx.AsyncClient() as c:
        r = await c.post(
            gw.url + "/v1/chat/completions", json={"messages": MSG}, headers=headers("nope")
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "unknown_workload_class"


async def test_unknown_class_served_as_default_with_warning(
    tmp_path: Path, mock: GatewayServer
) -> None:
    policy = write_policy(tmp_path / "p.yaml", mock.mock_url)
    async with running_gateway(policy) as gw, httpx.AsyncClient() as c:
        r = await c.post(
            gw.url + "/v1/chat/completions", json={"messages": MSG}, headers=headers("nope")
        )
        assert r.status_code == 200
        assert "unknown workload class" in r.headers["x-sluicegate-warning"]
