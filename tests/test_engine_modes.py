"""Engine behaviour around the store and roll-outs: shadow mode, store failures, store selection,
decision ids that keep reservations in the tenant's cluster slot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sluicegate.cli import main
from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, Outcome, Reason, RequestContext, open_engine
from sluicegate.errors import ConfigurationError, StoreUnavailable
from sluicegate.headers import render_headers
from sluicegate.policy import policy_from_text
from sluicegate.stores import FailoverStore, MemoryStore, RedisStore
from tests.redis_servers import RedisProcess, free_port

from .conftest import EXAMPLES

BASE = """
version: 1
default_tier: t
{extra}
tiers:
  t:
    tenant:  {{requests: 10/s, burst: 5}}
    session: {{requests: 1/s, burst: 2{session_shadow}}}
"""


def engine_for(extra: str = "", session_shadow: str = "") -> Engine:
    text = BASE.format(extra=extra, session_shadow=session_shadow)
    return Engine(policy_from_text(text), MemoryStore(), VirtualClock(0))


def rt(session: str = "s") -> RequestContext:
    return RequestContext("acme", "a", session, workload_class="realtime")


async def test_shadow_policy_reports_but_never_refuses() -> None:
    engine = engine_for(extra="shadow: true")
    decisions = [await engine.decide(rt()) for _ in range(4)]
    assert all(d.allowed for d in decisions)
    assert [d.shadow_refused for d in decisions] == [False, False, True, True]
    assert decisions[-1].shadow_buckets == ("session-requests",)
    assert decisions[-1].reason is Reason.RATE_LIMITED  # the would-be reason is kept
    assert "retry-after" not in dict(render_headers(decisions[-1]))
    assert "would refuse by session-requests" in decisions[-1].explain()


async def test_shadow_limit_next_to_enforced_limits() -> None:
    engine = engine_for(session_shadow=", shadow: true")
    got = [await engine.decide(rt()) for _ in range(6)]
    # The session limit (burst 2) is shadowed; the tenant limit (burst 5) still enforces.
    assert [d.allowed for d in got] == [True] * 5 + [False]
    assert [d.shadow_refused for d in got[:5]] == [False, False, True, True, True]
    assert got[5].reason is Reason.RATE_LIMITED
    assert [b.name for b in got[5].refusing] == ["tenant-requests"]
    # Shadow buckets never appear in the enforcing headers.
    assert "session-requests" not in dict(render_headers(got[0]))["ratelimit-policy"]


async def test_decision_ids_carry_the_tenant_hash_tag() -> None:
    engine = engine_for()
    d = await engine.decide(rt())
    assert d.id.startswith("{acme}")


async def test_fail_closed_store_failure_refuses_with_store_unavailable(
    redis_server_factory: Callable[[], RedisProcess],
) -> None:
    server = redis_server_factory()
    policy = policy_from_text(BASE.format(extra="", session_shadow=""))
    closed = Engine(
        policy, FailoverStore(RedisStore.from_url(server.url, timeout=0.05), mode="fail_closed")
    )
    opened = Engine(
        policy, FailoverStore(RedisStore.from_url(server.url, timeout=0.05), mode="fail_open")
    )
    try:
        assert (await closed.decide(rt())).allowed
        server.kill()
        d = await closed.decide(rt())
        assert d.outcome is Outcome.REFUSE and d.reason is Reason.STORE_UNAVAILABLE
        assert d.retry_after == 1.0 and d.warning
        assert dict(render_headers(d))["retry-after"] == "1"
        assert (await opened.decide(rt("other"))).allowed
    finally:
        await closed.aclose()
        await opened.aclose()


async def test_open_engine_selects_the_store(redis_server: RedisProcess) -> None:
    policy = policy_from_text(BASE.format(extra="", session_shadow=""))
    engine = await open_engine(policy, store_url=redis_server.url)
    try:
        assert isinstance(engine.store, FailoverStore)
        assert (await engine.decide(rt("selected"))).allowed
    finally:
        await engine.aclose()
    with pytest.raises(ConfigurationError, match="unsupported store URL"):
        await open_engine(policy, store_url="mongodb://x")
    with pytest.raises(StoreUnavailable, match="cannot reach"):
        await open_engine(policy, store_url=f"redis://127.0.0.1:{free_port()}/0")


def test_cli_check_on_redis(redis_server: RedisProcess, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["check", "--policy", str(EXAMPLES / "agentic.yaml"), "--tenant", "acme",
            "--agent", "cli", "--session", "cli-redis", "--class", "realtime", "--repeat", "21",
            "--quiet", "--store", redis_server.url]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("20/21 admitted")


def test_cli_check_unreachable_store_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    args = ["check", "--policy", str(EXAMPLES / "agentic.yaml"), "--tenant", "acme",
            "--agent", "a", "--store", url]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sluicegate check: cannot reach redis") and "\n" not in err


def test_validate_rejects_a_bad_store_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("version: 1\nstore: redis://\ntiers:\n  t: {agent: {requests: 1/s}}\n")
    assert main(["validate", str(p)]) == 1
    assert f"{p}:2: store: invalid store URL 'redis://': no host" in capsys.readouterr().err
