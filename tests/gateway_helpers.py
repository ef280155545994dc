"""Helpers for the gateway tests: a stand-in identity resolver, policy files, a running gateway.

The stand-in resolver mirrors the interface of ``sluicegate.engine.identity.IdentityResolver``
(API key -> tenant and agent; session from ``X-Agent-Session``), so the proxy tests do not depend
on how the real one is configured. Everything runs over real HTTP on loopback ports.
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from sluicegate.errors import SluicegateError
from sluicegate.gateway.config import GatewayConfig
from sluicegate.gateway.server import GatewayServer

KEYS = {
    "key-acme-planner": ("acme", "planner"),
    "key-acme-worker": ("acme", "worker"),
    "key-globex-bot": ("globex", "bot"),
}


class StandInIdentity(NamedTuple):
    tenant: str
    agent: str
    session: str | None
    subject: str
    init_token: str | None


class StandInAuthError(SluicegateError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class StandInResolver:
    def __init__(self, keys: Mapping[str, tuple[str, str]] = KEYS) -> None:
        self.keys = dict(keys)

    def resolve(self, headers: Mapping[str, str]) -> StandInIdentity:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key")
        if not key:
            raise StandInAuthError(401, "missing_credentials", "missing API key")
        found = self.keys.get(key)
        if found is None:
            raise StandInAuthError(401, "invalid_api_key", "invalid API key")
        return StandInIdentity(found[0], found[1], headers.get("x-agent-session"), key, None)

    def credential_headers(self) -> frozenset[str]:
        return frozenset({"authorization", "x-api-key"})


def stand_in_factory(config: GatewayConfig) -> StandInResolver:
    return StandInResolver()


POLICY_HEAD = """\
version: 1
store: memory
classes:
  default: interactive
  unknown: {unknown}
  realtime:    {{priority: 0, max_wait: 0s,  sla_p95: 800ms}}
  interactive: {{priority: 1, max_wait: {interactive_wait}, sla_p95: 3s}}
  batch:       {{priority: 2, max_wait: {batch_wait}, sla_p95: 60s, scale: 0.5}}
"""

DEFAULT_LIMITS = """\
tiers:
  pro:
    tenant:  {requests: 100000/min, burst: 10000, tokens: 100M/min}
    agent:   {requests: 100000/min, burst: 10000, tokens: 100M/min}
    session: {requests: 100000/min, burst: 10000, tokens: 100M/min}
tenants:
  acme: {tier: pro}
  globex: {tier: pro}
pools:
  openai: {requests: 1M/min, tokens: 1000M/min}
"""


def write_policy(
    path: Path,
    upstream_url: str,
    *,
    limits: str = DEFAULT_LIMITS,
    unknown: str = "default",
    interactive_wait: str = "2s",
    batch_wait: str = "60s",
    read_timeout: str = "10s",
    max_body_bytes: int = 65536,
    extra_upstream_headers: str = "",
) -> Path:
    head = POLICY_HEAD.format(
        unknown=unknown, interactive_wait=interactive_wait, batch_wait=batch_wait
    )
    gateway = textwrap.dedent(
        f"""\
        routes:
          - {{path_prefix: /v1/messages, upstream: mock, pool: openai, dialect: anthropic}}
          - {{path_prefix: /v1/, upstream: mock, pool: openai, dialect: openai,
              default_output_tokens: 100}}
          - {{path_prefix: /tools/, upstream: mock, llm: false}}
        upstreams:
          mock:
            url: {upstream_url}
            read_timeout: {read_timeout}
            connect_timeout: 1s
            headers: {{Authorization: "Bearer upstream-secret"{extra_upstream_headers}}}
        gateway:
          max_body_bytes: {max_body_bytes}
          admin_token_env: SG_TEST_ADMIN_TOKEN
          access_log: false
        """
    )
    path.write_text(head + limits + gateway)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def mock_server() -> AsyncIterator[GatewayServer]:
    """Just the mock upstream (a GatewayServer that starts only its mock part)."""
    from sluicegate.cost import preload
    from sluicegate.gateway.mock import MockUpstream
    from sluicegate.gateway.server import bind

    await asyncio.to_thread(preload)  # the mock counts prompts with tiktoken: load it up front
    server = GatewayServer("unused.yaml", admin=False)
    server.mock = MockUpstream()
    server.mock_url = await server._start_server(server.mock, bind("127.0.0.1:0"))
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def running_gateway(policy: Path, **kwargs: Any) -> AsyncIterator[GatewayServer]:
    kwargs.setdefault("resolver_factory", stand_in_factory)
    kwargs.setdefault("listen", "127.0.0.1:0")
    kwargs.setdefault("admin_listen", "127.0.0.1:0")
    kwargs.setdefault("use_tiktoken", False)
    server = GatewayServer(policy, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def tat_tokens(server: GatewayServer, key: str) -> float:
    """Tokens a GCRA token bucket currently holds as debt (``(tat - now) / interval``)."""
    store: Any = server.store
    tat = store.peek(key)
    if tat is None:
        return 0.0
    for rules in server.engine.policy.tenant_rules.values():
        for rule in rules:
            if rule.axis.value == "tokens" and key.endswith(":tokens"):
                interval = rule.limit.period
                return float(max(0.0, (tat - server.engine.clock.now()) / interval))
    raise AssertionError("no token rule")


async def settle_idle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
