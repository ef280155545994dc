"""The Redis store over TLS (``rediss://``, with a CA of the test's own) and over a unix socket
(``unix://``): the same engine decisions as over TCP, through ``open_store`` as a policy's
``store:`` URL would open them. Real ``redis-server`` processes; the certificates are made
with ``openssl`` (the test skips without it)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, RequestContext
from sluicegate.errors import StoreError
from sluicegate.policy import policy_from_text
from sluicegate.stores.url import open_store
from tests.redis_servers import RedisProcess, free_port, require_redis

pytestmark = [pytest.mark.redis]

POLICY = policy_from_text(
    "version: 1\ndefault_tier: t\ntiers:\n  t:\n    agent: {requests: 60/min, burst: 5}\n"
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=sluicegate-test-ca", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext.cnf",
             cwd=d)  # fmt: skip
    return d


@pytest.fixture(scope="module")
def tls_server(certs: Path) -> Iterator[tuple[RedisProcess, int]]:
    require_redis()
    tls_port = free_port()
    server = RedisProcess(
        extra=(
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(certs / "srv.crt"),
            "--tls-key-file",
            str(certs / "srv.key"),
            "--tls-ca-cert-file",
            str(certs / "ca.crt"),
            "--tls-auth-clients",
            "no",
        )  # fmt: skip
    )
    try:
        server.start()
    except RuntimeError as exc:  # a redis-server built without TLS
        pytest.skip(f"redis-server cannot serve TLS here: {exc}")
    yield server, tls_port
    server.close()


@pytest.fixture(scope="module")
def unix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require_redis()
    sock = tmp_path_factory.mktemp("unix") / "redis.sock"
    server = RedisProcess(extra=("--unixsocket", str(sock), "--unixsocketperm", "700"))
    server.start()
    yield sock
    server.close()


async def admitted(url: str) -> int:
    """Ten calls of one agent against burst 5 through a store opened from ``url``."""
    store = await open_store(url, use_caller_clock=True, timeout=2.0)
    try:
        engine = Engine(POLICY, store, VirtualClock(1000.0))
        ctx = RequestContext("acme", "planner", workload_class="realtime")
        return sum([(await engine.decide(ctx)).allowed for _ in range(10)])
    finally:
        await store.aclose()


async def test_rediss_with_the_servers_ca(
    tls_server: tuple[RedisProcess, int], certs: Path
) -> None:
    _, port = tls_server
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs / 'ca.crt'}&ssl_cert_reqs=required"
    assert await admitted(url) == 5


async def test_rediss_refuses_a_server_it_cannot_verify(
    tls_server: tuple[RedisProcess, int],
) -> None:
    """Without the test CA the certificate does not verify: a clear StoreError at startup,
    not a silently unverified connection."""
    _, port = tls_server
    with pytest.raises(StoreError, match=r"127\.0\.0\.1") as info:
        await open_store(f"rediss://127.0.0.1:{port}/0", timeout=2.0)
    assert "certificate verify failed" in str(info.value).lower()


async def test_unix_socket(unix_server: Path) -> None:
    assert await admitted(f"unix://{unix_server}?db=0") == 5
