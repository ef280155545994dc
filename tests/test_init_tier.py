"""The cold-start tier: signed init tokens, a window from first use, aggregate bounds; on
every store kind."""

from __future__ import annotations

import pytest

from sluicegate.cli import main
from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, Reason, RequestContext
from sluicegate.engine.init_tokens import issue_token, verify_token
from sluicegate.headers import render_headers
from sluicegate.policy import policy_from_text
from sluicegate.stores import Store

SECRET = "s" * 40
OLD = "o" * 40
WALL = 1_800_000_000.0

POLICY = """
version: 1
default_tier: t
init:
  window: 60s
  limits: {{requests: 600/min, burst: 30}}
  aggregate: {{requests: 6000/min, burst: 1000}}
  secret: {secret}
  previous_secret: {old}
  strict: {strict}
tiers:
  t:
    tenant:  {{requests: 100k/min, burst: 5000}}
    agent:   {{requests: 60/min, burst: 20}}
    session: {{requests: 30/min, burst: 10}}
"""


def make(store: Store, *, strict: bool = False) -> tuple[Engine, VirtualClock]:
    policy = policy_from_text(POLICY.format(secret=SECRET, old=OLD, strict=str(strict).lower()))
    clock = VirtualClock(1000.0)
    engine = Engine(policy, store, clock, wall_clock=lambda: WALL + clock.now() - 1000.0)
    return engine, clock


def token(instance: str, *, secret: str = SECRET, tenant: str = "acme", ttl: float = 600) -> str:
    return issue_token(secret, tenant=tenant, agent="worker", instance=instance, ttl=ttl, now=WALL)


def call(instance: str, tok: str | None) -> RequestContext:
    return RequestContext("acme", "worker", instance, workload_class="realtime", init_token=tok)


async def test_fleet_of_50_starts_under_the_init_tier(store: Store) -> None:
    engine, _ = make(store)
    with_tier = 0
    for i in range(50):
        tok = token(f"c{i}")
        for _ in range(20):
            d = await engine.decide(call(f"c{i}", tok))
            with_tier += d.allowed
            assert d.init_tier
    assert with_tier == 1000
    assert dict(render_headers(d))["x-agent-init-tier"] == "active"


async def test_the_same_burst_without_tokens_is_mostly_refused(store: Store) -> None:
    engine, _ = make(store)
    admitted = 0
    for i in range(50):
        for _ in range(20):
            admitted += (await engine.decide(call(f"c{i}", None))).allowed
    assert admitted == 20  # the agent plane's burst


async def test_window_counts_from_first_use_and_reuse_after_it_gets_nothing(store: Store) -> None:
    engine, clock = make(store)
    tok = token("late")
    clock.advance(120)  # issued two minutes before its first use: the window starts now
    assert (await engine.decide(call("late", tok))).init_tier
    clock.advance(59)
    assert (await engine.decide(call("late", tok))).init_tier
    clock.advance(2)
    after = await engine.decide(call("late", tok))
    assert after.allowed and not after.init_tier  # the operational policy again


@pytest.mark.parametrize(
    "tok",
    [
        "sgi1.garbage.sig",
        token("x", secret="f" * 40),  # forged
        token("x", tenant="globex"),  # another tenant's token
        "sgi1..",  # malformed
    ],
    ids=["garbage", "forged", "other-tenant", "malformed"],
)
async def test_bad_tokens_get_no_init_tier_and_401_when_strict(store: Store, tok: str) -> None:
    lenient, _ = make(store)
    d = await lenient.decide(call("x", tok))
    assert d.allowed and not d.init_tier
    strict, _ = make(store, strict=True)
    refused = await strict.decide(call("y", tok))
    assert not refused.allowed and refused.reason is Reason.INVALID_INIT_TOKEN


async def test_previous_secret_is_accepted_during_rotation(store: Store) -> None:
    engine, _ = make(store)
    assert (await engine.decide(call("r", token("r", secret=OLD)))).init_tier


async def test_expired_token_gets_no_init_tier(store: Store) -> None:
    engine, clock = make(store)
    tok = token("e", ttl=60)
    clock.advance(61)
    assert not (await engine.decide(call("e", tok))).init_tier


def test_verify_reasons() -> None:
    tok = token("v", ttl=60)
    assert verify_token(tok, [SECRET], now=WALL, max_ttl=3600)[1] == "ok"
    assert verify_token(tok, [SECRET], now=WALL + 61, max_ttl=3600)[1] == "expired"
    assert verify_token(tok, [OLD], now=WALL, max_ttl=3600)[1] == "bad_signature"
    assert verify_token(tok, [SECRET], now=WALL, max_ttl=30)[1] == "ttl_too_long"
    assert verify_token("x" * 5000, [SECRET], now=WALL, max_ttl=30)[1] == "malformed"
    with pytest.raises(ValueError, match="at least 32 bytes"):
        issue_token("short", tenant="a", agent="b", instance="c", ttl=1, now=WALL)


def test_cli_token_issue(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLUICEGATE_INIT_SECRET", SECRET)
    args = ["token", "issue", "--tenant", "acme", "--agent", "w", "--instance", "pod-1"]
    assert main([*args, "--ttl", "10m"]) == 0
    tok = capsys.readouterr().out.strip()
    claims, why = verify_token(tok, [SECRET], now=__import__("time").time(), max_ttl=3600)
    assert why == "ok" and claims is not None and claims.instance == "pod-1"
    monkeypatch.setenv("SLUICEGATE_INIT_SECRET", "short")
    assert main(args) == 1
    assert "SLUICEGATE_INIT_SECRET" in capsys.readouterr().err


TIGHT_TENANT = """
version: 1
default_tier: t
init:
  window: 60s
  limits: {{requests: 600/min, burst: 30}}
  aggregate: {{requests: 6000/min, burst: 1000}}
  {tenant}
  secret: {secret}
tiers:
  t:
    tenant:  {{requests: 600/min, burst: 120}}
    agent:   {{requests: 60/min, burst: 20}}
"""


@pytest.mark.parametrize("allowance", [False, True])
async def test_an_init_tenant_allowance_lets_a_fleet_past_a_tight_tenant_plane(
    store: Store, allowance: bool
) -> None:
    """Without ``init.tenant`` the tenant plane (burst 120) holds a fleet's start-up back;
    with it the init calls use the tier's own tenant buckets, and the operational tenant
    bucket is left untouched for the steady-state calls that follow."""
    tenant = "tenant: {requests: 3000/min, burst: 1000}" if allowance else ""
    policy = policy_from_text(TIGHT_TENANT.format(tenant=tenant, secret=SECRET))
    clock = VirtualClock(1000.0)
    engine = Engine(policy, store, clock, wall_clock=lambda: WALL + clock.now() - 1000.0)
    admitted = 0
    for i in range(50):
        tok = token(f"c{i}")
        for _ in range(20):
            admitted += (await engine.decide(call(f"c{i}", tok))).allowed
    if allowance:
        assert admitted == 1000
        d = await engine.decide(RequestContext("acme", "planner", workload_class="realtime"))
        assert d.allowed and {b.name for b in d.buckets} >= {"tenant-requests"}
        assert next(b for b in d.buckets if b.name == "tenant-requests").remaining == 119
    else:
        assert admitted == 120
