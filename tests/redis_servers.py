"""Real ``redis-server`` processes for the tests and the benchmark: never fakeredis, never the
system Redis on 6379.

* :class:`RedisProcess` - one standalone server on a free port, in its own temporary directory
  and its own process group (``--save "" --appendonly no``: nothing touches the disk but the log).
  It can be killed, restarted on the same port, paused (SIGSTOP) and resumed (SIGCONT).
* :class:`RedisClusterProcesses` - a real 6-node cluster, 3 masters + 3 replicas, created with
  ``redis-cli --cluster create ... --cluster-replicas 1``; ``cluster-node-timeout 2000`` so a killed
  master fails over in seconds, ``repl-diskless-sync-delay 0`` so replicas sync at once. Ready
  means ``cluster_state:ok`` everywhere and ``master_link_status:up`` on every replica.

Everything started is registered for ``atexit`` and killed by process group, so an interrupted
run leaves no servers behind. The pytest fixtures at the bottom are plain fixture functions:
register them from ``tests/conftest.py`` with ``from tests.redis_servers import ...``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

_LIVE: set[RedisProcess] = set()
_RESERVED_PORTS: set[int] = set()


def redis_available() -> bool:
    return REDIS_SERVER is not None and REDIS_CLI is not None


def require_redis() -> None:
    """Skip (locally) or fail (in CI, where ``.ci/run`` must install it) without binaries."""
    if redis_available():
        return
    message = "redis-server / redis-cli not installed (apt-get install redis-server)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A port free on 127.0.0.1 (and port + 10000 too, for a cluster node's bus), never 6379
    and never handed out twice by this process."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 30000) if cluster_bus else rng.randrange(20000, 45000)
        if port in _RESERVED_PORTS or port == 6379:
            continue
        if _port_free(port) and (not cluster_bus or _port_free(port + 10000)):
            _RESERVED_PORTS.add(port)
            return port
    raise RuntimeError("no free port found")


class RedisProcess:
    """One ``redis-server`` in its own process group and temporary directory."""

    def __init__(self, port: int | None = None, extra: tuple[str, ...] = (), *, bus: bool = False):
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server not installed")
        self.port = port or free_port(cluster_bus=bus)
        self.extra = extra
        self.dir = Path(tempfile.mkdtemp(prefix=f"sg-redis-{self.port}-"))
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, *, wait: bool = True) -> RedisProcess:
        assert REDIS_SERVER is not None
        if self.proc is not None and self.proc.poll() is None:
            return self
        deadline = time.monotonic() + 5
        while not _port_free(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)  # a killed predecessor's socket is still closing
        cmd = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
            "--daemonize", "no",
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # own process group: killpg never hits pytest
        )
        _LIVE.add(self)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on {self.port} exited:\n{log}")
            try:
                if self.client(timeout=0.5).ping():
                    return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on {self.port} not ready after {timeout}s")

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process group (a crash: no shutdown, clients see resets)."""
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)  # a stopped process must be able to die
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None
        _LIVE.discard(self)

    def restart(self) -> None:
        """Kill and start again on the same port (empty: nothing is persisted)."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def close(self) -> None:
        """Kill and remove the temporary directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        _RESERVED_PORTS.discard(self.port)

    # -- access ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def info(self, section: str) -> dict[str, object]:
        c = self.client()
        try:
            return dict(c.info(section))
        finally:
            c.close()


@dataclass
class RedisClusterProcesses:
    """A 6-node cluster: 3 masters with one replica each."""

    nodes: list[RedisProcess] = field(default_factory=list)
    node_timeout_ms: int = 2000

    def start(self, timeout: float = 30.0) -> RedisClusterProcesses:
        assert REDIS_CLI is not None
        extra = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            "--cluster-replica-validity-factor", "0",
        )  # fmt: skip
        self.nodes = [RedisProcess(extra=extra, bus=True) for _ in range(6)]
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        out = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *[n.address for n in self.nodes],
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")
        self.wait_healthy(timeout)
        return self

    def wait_healthy(
        self, timeout: float = 30.0, *, nodes: list[RedisProcess] | None = None
    ) -> None:
        """Every live node reports ``cluster_state:ok`` and every replica's link is up."""
        deadline = time.monotonic() + timeout
        check = nodes or [n for n in self.nodes if n.alive]
        while True:
            try:
                if all(self._healthy(n) for n in check):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("cluster not healthy in time")
            time.sleep(0.05)

    @staticmethod
    def _healthy(node: RedisProcess) -> bool:
        c = node.client()
        try:
            if c.cluster("INFO").get("cluster_state") != "ok":  # type: ignore[no-untyped-call]
                return False
            repl = c.info("replication")
            if repl.get("role") == "slave":
                return bool(repl.get("master_link_status") == "up")
            return True
        finally:
            c.close()

    def roles(self) -> dict[int, str]:
        """``port -> 'master' | 'slave'`` for live nodes."""
        out: dict[int, str] = {}
        for n in self.nodes:
            if n.alive:
                out[n.port] = str(n.info("replication").get("role"))
        return out

    def master_for_slot(self, slot: int) -> RedisProcess:
        for n in self.nodes:
            if not n.alive:
                continue
            c = n.client()
            try:
                for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(primary[1])
                        return next(x for x in self.nodes if x.port == port)
            finally:
                c.close()
        raise RuntimeError(f"no node serves slot {slot}")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[:3])

    def close(self) -> None:
        for n in self.nodes:
            n.close()


@atexit.register
def _kill_everything() -> None:
    """Last resort (an interrupted run, a fixture that never finalized): kill every server
    still running and remove its directory."""
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.close()


# -- pytest fixtures (register in tests/conftest.py) --------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One standalone server for the whole session. Tests must use their own keys (or the
    ``store`` helpers' flush) and must not kill it: use ``redis_server_factory`` for faults."""
    require_redis()
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """One 6-node cluster for the whole session (2-3 s to create). Do not kill its nodes: use
    ``redis_cluster_factory`` for failover tests."""
    require_redis()
    cluster = RedisClusterProcesses().start()
    yield cluster
    cluster.close()


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[[], RedisProcess]]:
    """Fresh standalone servers that a test may kill, pause and restart; all torn down after."""
    require_redis()
    made: list[RedisProcess] = []

    def make() -> RedisProcess:
        server = RedisProcess().start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def redis_cluster_factory() -> Iterator[Callable[[], RedisClusterProcesses]]:
    """Fresh clusters that a test may damage; all torn down after."""
    require_redis()
    made: list[RedisClusterProcesses] = []

    def make() -> RedisClusterProcesses:
        cluster = RedisClusterProcesses().start()
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


# -- stores on these servers -------------------------------------------------------------------

#: Every store kind the shared store tests run against.
STORE_KINDS = ("memory", "redis", "cluster")

#: TTL slack of the test stores: they run on the caller's (virtual) clock while key TTLs run in
#: real time, so keys are kept a minute longer than their values need (values self-expire).
TEST_TTL_SLACK = 60.0


async def make_test_store(kind: str, request: pytest.FixtureRequest, **options: Any) -> Any:
    """A fresh, empty store of ``kind`` that uses the caller's clock (so tests pass ``now``).

    ``redis`` flushes the session server's database, ``cluster`` every master of the session
    cluster: tests get a clean store and may use fixed key names. ``options`` go to the store.
    """
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from sluicegate.stores.memory import MemoryStore
    from sluicegate.stores.redis import RedisStore
    from sluicegate.stores.redis_cluster import RedisClusterStore

    opts: dict[str, Any] = {"use_caller_clock": True, "ttl_slack": TEST_TTL_SLACK, "timeout": 5.0}
    opts.update(options)
    if kind == "memory":
        return MemoryStore()
    if kind == "redis":
        server: RedisProcess = request.getfixturevalue("redis_server")
        store = RedisStore.from_url(server.url, **opts)
        await store.client.flushdb()
        return store
    if kind == "cluster":
        cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
        cstore = RedisClusterStore.from_url(cluster.url, **opts)
        await cstore.ping()
        await cstore.client.flushall(target_nodes=AsyncRedisCluster.PRIMARIES)
        return cstore
    raise ValueError(f"unknown store kind {kind!r}")
