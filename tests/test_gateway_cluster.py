"""The agentic controls through two gateway replicas sharing a real Redis Cluster: whatever one
replica learns (a spent retry budget, a caller's demand, a scale event, a tripped tenant
breaker) the other applies, because the state is in the cluster, not in either process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from sluicegate.engine.init_tokens import issue_token
from sluicegate.stores.redis_cluster import RedisClusterStore

from .gateway_helpers import mock_server, running_gateway, write_policy
from .redis_servers import RedisClusterProcesses, make_test_store
from .test_alerts import Receiver, serve
from .test_gateway_agentic import ADMIN, ADMIN_TOKEN, SECRET, init_factory, post

LIMITS = """\
store: {store}
store_options: {{timeout: 2s}}
alerts: [{{webhook: "{hook}"}}]
retry_budget: {{percent: 10, min_per_second: 0.2, ttl: 30s}}
init:
  window: 60s
  limits: {{requests: 600/min, burst: 20}}
  aggregate: {{requests: 60/min, burst: 50}}
tiers:
  pro:
    tenant:  {{requests: 6000/min, burst: 400}}
    agent:   {{requests: 6000/min, burst: 400}}
    session:
      requests: 600/min
      adaptive_burst: {{window: 60s, factor: 300, min: 5, max: 50}}
tenants:
  acme: {{tier: pro}}
  globex: {{tier: pro}}
pools:
  openai:
    requests: 6000/min
    burst: 1000
    breaker: {{share: 0.6, window: 10s, floor: 60/min, cooldown: 30s, pressure: 0.1}}
"""


def burst_of(response: httpx.Response) -> int:
    return int(response.headers["x-ratelimit-burst"].rpartition("b=")[2])


async def test_two_replicas_share_every_agentic_control(
    tmp_path: Path,
    redis_cluster: RedisClusterProcesses,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    clean: RedisClusterStore = await make_test_store("cluster", request)  # flushes the cluster
    await clean.aclose()
    monkeypatch.setenv("SLUICEGATE_INIT_SECRET", SECRET)
    monkeypatch.setenv("SG_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
    receiver = Receiver()
    hook, hook_url = await serve(receiver)
    limits = LIMITS.format(store=redis_cluster.url, hook=hook_url)
    async with mock_server() as mock:
        policy = write_policy(tmp_path / "p.yaml", mock.mock_url or "", limits=limits)
        policy.write_text(policy.read_text().replace("store: memory\n", "", 1))
        async with (
            running_gateway(policy, resolver_factory=init_factory) as a,
            running_gateway(policy, resolver_factory=init_factory) as b,
            httpx.AsyncClient() as client,
        ):
            replicas = [a, b]

            def url(i: int) -> str:
                return replicas[i % 2].url or ""

            # Retry budget: 0.2/s x 30 s = 6 retries for the agent, whichever replica sees them.
            retries = [
                await post(client, url(i), "key-globex-bot", **{"x-stainless-retry-count": "1"})
                for i in range(8)
            ]
            assert [r.status_code for r in retries] == [200] * 6 + [429] * 2
            budgets = [int(r.headers["x-ratelimit-retry-budget"]) for r in retries[:6]]
            assert budgets == [5, 4, 3, 2, 1, 0]
            assert retries[-1].headers["x-should-retry"] == "false"

            # Adaptive burst: a session starts at min (5); its demand, counted in the cluster,
            # raises the burst on the other replica too (after that replica's first call).
            session = {"x-agent-session": "s1"}
            first = await post(client, url(0), "key-acme-planner", **session)
            assert burst_of(first) == 5
            for _ in range(4):
                await post(client, url(0), "key-acme-planner", **session)
            await post(client, url(1), "key-acme-planner", **session)  # b learns the demand
            assert burst_of(await post(client, url(1), "key-acme-planner", **session)) > 5

            # Scale event posted to replica a; the fleet's init calls go through both.
            event = {"tenant": "acme", "agent": "worker", "instances": 10, "window": 90}
            r = await client.post(f"{a.admin_url}/admin/scale-events", json=event, headers=ADMIN)
            assert r.status_code == 201, r.text
            listed = await client.get(f"{b.admin_url}/admin/scale-events", headers=ADMIN)
            assert [e["instances"] for e in listed.json()["scale_events"]] == [10]
            now = time.time()
            statuses = []
            for i in range(10):
                tok = issue_token(
                    SECRET, tenant="acme", agent="worker", instance=f"c{i}", ttl=600, now=now
                )
                for j in range(20):  # a tool route: no pool, so the breaker stays out of it
                    headers = {"authorization": "Bearer key-acme-worker", "x-agent-init-token": tok}
                    r = await client.post(f"{url(j)}/tools/init", json={}, headers=headers)
                    statuses.append(r)
            assert [s.status_code for s in statuses] == [200] * 200  # aggregate alone: ~50
            assert statuses[-1].headers["x-agent-init-tier"] == "active"

            # Tenant breaker: acme floods through both replicas, globex behaves.
            runaway: list[int] = []
            quiet: list[int] = []
            stop = time.monotonic() + 3.0

            async def flood(i: int) -> None:
                while time.monotonic() < stop:
                    runaway.append((await post(client, url(i), "key-acme-planner")).status_code)

            async def behave() -> None:
                i = 0
                while time.monotonic() < stop:
                    quiet.append((await post(client, url(i), "key-globex-bot")).status_code)
                    i += 1
                    await asyncio.sleep(0.1)

            await asyncio.gather(*(flood(i) for i in range(6)), behave())
            for replica in replicas:  # each learns the trip from its next call, if not before
                await post(client, replica.url or "", "key-acme-planner")
            scrapes = [
                (await client.get(f"{g.admin_url}/metrics", headers=ADMIN)).text for g in replicas
            ]
            await asyncio.gather(*(g.alerts.drain() for g in replicas))
    hook.close()
    await hook.wait_closed()
    assert quiet.count(200) == len(quiet) >= 10
    assert runaway.count(429) > runaway.count(200)
    trips = [e for e in receiver.events if e["event"] == "tenant_breaker_open"]
    assert [e["tenant"] for e in trips] == ["acme"]  # once per trip, across both replicas
    assert [e["event"] for e in receiver.events].count("scale_event") == 1
    for text in scrapes:
        assert 'sluicegate_tenant_breaker_open{pool="openai",tenant="acme"} 1.0' in text
