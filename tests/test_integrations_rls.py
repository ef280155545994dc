"""Envoy RLS over real gRPC on loopback: a grpcio client against a running grpc.aio server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")
pytest.importorskip("envoy.service.ratelimit.v3.rls_pb2")

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # noqa: E402
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from sluicegate.clock import VirtualClock  # noqa: E402
from sluicegate.engine import Engine  # noqa: E402
from sluicegate.integrations.rls import (  # noqa: E402
    SERVICE_NAME,
    RateLimitServicer,
    RlsServer,
    serve,
    unit_of,
)
from sluicegate.policy import load_policy  # noqa: E402
from sluicegate.policy.envoy_config import load_envoy_config  # noqa: E402
from sluicegate.policy.units import Rate  # noqa: E402
from sluicegate.stores import MemoryStore  # noqa: E402
from sluicegate.stores.url import open_store  # noqa: E402
from tests.redis_servers import RedisProcess, redis_available  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIX = Path(__file__).resolve().parent / "fixtures" / "envoy"
Resp = rls_pb2.RateLimitResponse


def desc(*entries: tuple[str, str], hits: int | None = None) -> Any:
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if hits is not None:
        d.hits_addend.value = hits
    return d


def req(domain: str, *descriptors: Any, hits: int = 0) -> Any:
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits)


class Rig:
    def __init__(self, server: RlsServer, channel: Any, clock: VirtualClock) -> None:
        self.server = server
        self.channel = channel
        self.stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        self.clock = clock

    async def call(self, request: Any) -> Any:
        return await self.stub.ShouldRateLimit(request, timeout=5)


@pytest.fixture
async def rig() -> AsyncIterator[Callable[..., Any]]:
    started: list[Rig] = []

    async def make(*, policy: bool = True, envoy: bool = True, store: Any = None) -> Rig:
        clock = VirtualClock(1000.0)
        st = store if store is not None else MemoryStore()
        engine = Engine(load_policy(FIX / "policy.yaml"), st, clock) if policy else None
        domains = load_envoy_config(FIX / "ratelimit.yaml") if envoy else None
        servicer = RateLimitServicer(engine, envoy=domains, store=st, clock=clock)
        server = await serve(servicer, port=0)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        r = Rig(server, channel, clock)
        started.append(r)
        return r

    yield make
    for r in started:
        await r.channel.close()
        await r.server.stop(0)


async def test_policy_descriptors_codes_statuses_headers(rig: Callable[..., Any]) -> None:
    r = await rig()
    d = desc(("tenant", "acme"), ("agent", "bot"))
    # agent burst is 5: five OK, the sixth over limit
    for i in range(5):
        resp = await r.call(req("sluicegate", d))
        assert resp.overall_code == Resp.OK
        st = resp.statuses[0]
        assert st.code == Resp.OK
        assert st.limit_remaining == 4 - i
    over = await r.call(req("sluicegate", d))
    assert over.overall_code == Resp.OVER_LIMIT
    st = over.statuses[0]
    assert st.code == Resp.OVER_LIMIT
    assert st.current_limit.name == "agent-requests"
    assert st.current_limit.requests_per_unit == 300
    assert st.current_limit.unit == Resp.RateLimit.MINUTE
    assert st.limit_remaining == 0
    assert 0 < st.duration_until_reset.ToNanoseconds() <= 200_000_000 + 1
    headers = {h.key: h.value for h in over.response_headers_to_add}
    assert headers["retry-after"] == "1"
    assert headers["retry-after-ms"] in ("200", "201")
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert '"agent-requests";r=0' in headers["ratelimit"]
    assert "ratelimit-policy" in headers
    # another agent of the same tenant is unaffected
    other = await r.call(req("sluicegate", desc(("tenant", "acme"), ("agent", "b2"))))
    assert other.overall_code == Resp.OK
    # time heals
    r.clock.advance(0.2)
    assert (await r.call(req("sluicegate", d))).overall_code == Resp.OK


async def test_unknown_tenant_and_foreign_descriptors(rig: Callable[..., Any]) -> None:
    r = await rig(envoy=False)
    resp = await r.call(req("x", desc(("tenant", "nobody"), ("agent", "a"))))
    assert resp.overall_code == Resp.OVER_LIMIT
    # a descriptor without the tenant key is not ours: OK, no limit
    resp = await r.call(req("x", desc(("remote_address", "1.2.3.4"))))
    assert resp.overall_code == Resp.OK
    assert len(resp.statuses) == 1 and not resp.statuses[0].HasField("current_limit")


async def test_hits_addend_check_only_then_debit(rig: Callable[..., Any]) -> None:
    r = await rig()
    ident = (("tenant", "acme"), ("agent", "tok"))
    # request-level hits_addend=3 charges 3 requests
    resp = await r.call(req("s", desc(*ident), hits=3))
    assert resp.statuses[0].limit_remaining == 2
    # descriptor-level 0 = check only: nothing consumed
    for _ in range(3):
        resp = await r.call(req("s", desc(*ident, hits=0)))
        assert resp.overall_code == Resp.OK
        assert resp.statuses[0].limit_remaining == 2
    # token descriptor: check on request (0), debit on response (usage as hits)
    tok = (*ident, ("tokens", "usage"))
    assert (await r.call(req("s", desc(*tok, hits=0)))).overall_code == Resp.OK
    debit = await r.call(req("s", desc(*tok, hits=900)))
    assert debit.overall_code == Resp.OK
    headers = {h.key: h.value for h in debit.response_headers_to_add}
    assert headers["x-ratelimit-remaining-tokens"] == "100"
    # the token debit did not count a request
    assert headers["x-ratelimit-remaining-requests"] == "2"
    refused = await r.call(req("s", desc(*tok, hits=200)))
    assert refused.overall_code == Resp.OVER_LIMIT
    assert refused.statuses[0].current_limit.name == "agent-tokens"
    # a numeric tokens value is an estimate charged with the request
    est = await r.call(req("s", desc(("tenant", "acme"), ("agent", "e"), ("tokens", "400"))))
    h = {x.key: x.value for x in est.response_headers_to_add}
    assert h["x-ratelimit-remaining-tokens"] == "600"
    assert h["x-ratelimit-remaining-requests"] == "4"
    assert any(x.key == "x-sluicegate-decision-id" for x in est.request_headers_to_add)


async def test_session_and_multiple_descriptors(rig: Callable[..., Any]) -> None:
    r = await rig()
    s = desc(("tenant", "acme"), ("agent", "m"), ("session", "s1"))
    for _ in range(3):
        assert (await r.call(req("s", s))).overall_code == Resp.OK
    both = await r.call(req("s", desc(("tenant", "acme"), ("agent", "m2")), s))
    assert both.overall_code == Resp.OVER_LIMIT
    assert [st.code for st in both.statuses] == [Resp.OK, Resp.OVER_LIMIT]
    assert both.statuses[1].current_limit.name == "session-requests"


async def test_envoy_config_most_specific_unlimited_shadow_replaces(
    rig: Callable[..., Any],
) -> None:
    r = await rig(policy=False)
    # exact key_value beats key-only; unlimited never counts
    for _ in range(10):
        resp = await r.call(req("edge_proxy_per_ip", desc(("remote_address", "10.0.0.1"))))
        assert resp.overall_code == Resp.OK
        assert not resp.statuses[0].HasField("current_limit")
    ip = desc(("remote_address", "1.2.3.4"))
    codes = [(await r.call(req("edge_proxy_per_ip", ip))).overall_code for _ in range(3)]
    assert codes == [Resp.OK, Resp.OK, Resp.OVER_LIMIT]
    # a different value of a key-only descriptor has its own counter
    other = await r.call(req("edge_proxy_per_ip", desc(("remote_address", "5.6.7.8"))))
    assert other.overall_code == Resp.OK
    last = await r.call(req("edge_proxy_per_ip", ip))
    st = last.statuses[0]
    assert st.current_limit.requests_per_unit == 2
    assert st.current_limit.unit == Resp.RateLimit.SECOND
    assert {h.key for h in last.response_headers_to_add} >= {"retry-after", "ratelimit"}
    r.clock.advance(1.0)
    assert (await r.call(req("edge_proxy_per_ip", ip))).overall_code == Resp.OK
    # nested: message_type=marketing -> to_number (5/day); the shadow 3/day never refuses
    mk = desc(("message_type", "marketing"), ("to_number", "2061234567"))
    tn = desc(("to_number", "2061234567"))
    codes = [(await r.call(req("messaging", mk, tn))).overall_code for _ in range(6)]
    assert codes == [Resp.OK] * 5 + [Resp.OVER_LIMIT]
    # a longer request descriptor than configured: no limit
    resp = await r.call(req("messaging", desc(("to_number", "1"), ("extra", "x"))))
    assert resp.overall_code == Resp.OK and not resp.statuses[0].HasField("current_limit")
    # wildcard value prefix beats key-only
    adm = [(await r.call(req("messaging", desc(("path", "/admin/x"))))).overall_code
           for _ in range(2)]  # fmt: skip
    assert adm == [Resp.OK, Resp.OVER_LIMIT]
    # counters are per request value, as in envoyproxy/ratelimit's cache keys
    assert (await r.call(req("messaging", desc(("path", "/adminz"))))).overall_code == Resp.OK
    assert (await r.call(req("messaging", desc(("path", "/home"))))).overall_code == Resp.OK
    # replaces: premium replaces standard when both match
    acct, prem = desc(("category", "account")), desc(("user", "premium"))
    codes = [(await r.call(req("rl", acct, prem))).overall_code for _ in range(5)]
    assert codes == [Resp.OK] * 4 + [Resp.OVER_LIMIT]
    one = await r.call(req("rl", acct, prem))
    assert one.statuses[0].code == Resp.OK and not one.statuses[0].HasField("current_limit")
    # nested with detailed_metric
    bad = desc(("source_cluster", "proxy"), ("destination_cluster", "bad_service"))
    codes = [(await r.call(req("rl", bad))).overall_code for _ in range(2)]
    assert codes == [Resp.OK, Resp.OVER_LIMIT]
    # unknown domain: OK
    assert (await r.call(req("nope", ip))).overall_code == Resp.OK
    stats = r.server.servicer.metrics.snapshot()
    assert stats["would_refuse"] >= 3 and stats["refused"] >= 5


async def test_envoy_atomic_and_override(rig: Callable[..., Any]) -> None:
    r = await rig(policy=False)
    # one request, two descriptors: a refusal of one consumes nothing in the other
    a, b = desc(("database", "default")), desc(("database", "users"))
    for _ in range(3):
        assert (await r.call(req("mongo_cps", a, b))).overall_code == Resp.OK
    over = await r.call(req("mongo_cps", a, b))
    assert [s.code for s in over.statuses] == [Resp.OVER_LIMIT, Resp.OK]
    alone = await r.call(req("mongo_cps", b))
    assert alone.statuses[0].limit_remaining == 496  # not 495: the refusal consumed nothing
    # a request-side limit override
    o = desc(("database", "other"))
    o.limit.requests_per_unit = 1
    o.limit.unit = Resp.RateLimit.MINUTE
    codes = [(await r.call(req("mongo_cps", o))).overall_code for _ in range(2)]
    assert codes == [Resp.OK, Resp.OVER_LIMIT]


async def test_health_service(rig: Callable[..., Any]) -> None:
    r = await rig()
    stub = health_pb2_grpc.HealthStub(r.channel)
    for service in ("", SERVICE_NAME):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_unit_mapping() -> None:
    assert unit_of(Rate(600, 60)) == (600, Resp.RateLimit.MINUTE)
    assert unit_of(Rate(10, 0.1)) == (100, Resp.RateLimit.SECOND)
    assert unit_of(Rate(7.5, 60)) == (7, Resp.RateLimit.MINUTE)
    assert unit_of(Rate(1000, 7200)) == (12000, Resp.RateLimit.DAY)


@pytest.mark.redis
async def test_store_killed_answers_unavailable(rig: Callable[..., Any]) -> None:
    if not redis_available():
        pytest.skip("redis-server not installed")
    server = RedisProcess().start()
    try:
        store = await open_store(server.url, failure_mode="fail_closed")
        r = await rig(store=store)
        d = desc(("tenant", "acme"), ("agent", "k"))
        assert (await r.call(req("s", d))).overall_code == Resp.OK
        env = await r.call(req("mongo_cps", desc(("database", "users"))))
        assert env.overall_code == Resp.OK
        server.kill()
        for request in (req("s", d), req("mongo_cps", desc(("database", "users")))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await r.call(request)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert r.server.servicer.metrics.snapshot()["store_unavailable"] == 2
        await store.aclose()
    finally:
        server.close()


async def test_check_only_takes_no_concurrency_slot() -> None:
    root = Path(__file__).resolve().parent.parent
    engine = Engine(load_policy(root / "examples" / "agentic.yaml"), MemoryStore(), VirtualClock())
    servicer = RateLimitServicer(engine)
    s = (("tenant", "acme"), ("agent", "c"), ("session", "s"))
    for _ in range(12):  # session concurrency is 8
        resp = await servicer.ShouldRateLimit(req("s", desc(*s, hits=0)), None)
        assert resp.overall_code == Resp.OK
    codes = [
        (await servicer.ShouldRateLimit(req("s", desc(*s)), None)).overall_code for _ in range(9)
    ]
    assert codes == [Resp.OK] * 8 + [Resp.OVER_LIMIT]  # counted calls hold a slot each
