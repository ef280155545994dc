"""Running the gateway: uvicorn (httptools + uvloop) serving the proxy and admin apps in one loop.

Why uvicorn with our own sockets: binding the sockets here lets ``--workers N`` processes share a
port through ``SO_REUSEPORT`` (the kernel spreads connections over them, no accept lock, no
master in the data path), lets tests bind port 0, and keeps uvicorn's signal handling out of the
way (we run several servers in one loop and handle SIGINT/SIGTERM/SIGHUP ourselves).

:class:`GatewayServer` is the in-process unit (tests start it directly): optional built-in mock
upstream, proxy, admin API, SIGHUP reload. :func:`run` is the blocking entry point behind
``sluicegate serve``; with several workers it forks processes that each run a
:class:`GatewayServer`; SIGHUP to the parent is forwarded to every worker, and an admin reload in
worker 0 signals the parent so every worker reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import uvicorn

from sluicegate.alerts import AlertSink
from sluicegate.clock import Clock
from sluicegate.engine.factory import open_engine
from sluicegate.errors import ConfigurationError, PolicyError, SluicegateError
from sluicegate.gateway.admin import AdminApp
from sluicegate.gateway.config import GatewayConfig, load_gateway_policy
from sluicegate.gateway.httpserver import LeanServer
from sluicegate.gateway.metrics import Metrics
from sluicegate.gateway.mock import MockUpstream
from sluicegate.gateway.proxy import Gateway, Resolver

log = logging.getLogger("sluicegate.gateway")
ResolverFactory = Callable[[GatewayConfig], Resolver]


def default_resolver(config: GatewayConfig) -> Resolver:
    """The policy's ``identity:`` section -> ``sluicegate.engine.identity.IdentityResolver``."""
    try:
        module = importlib.import_module("sluicegate.engine.identity")
    except ImportError as exc:  # pragma: no cover - present once identity lands
        raise ConfigurationError(f"identity support is not available: {exc}") from None
    spec = getattr(config.policy.spec, "identity", None)
    base_dir = Path(config.source).resolve().parent
    return cast(Resolver, module.IdentityResolver(spec, base_dir=base_dir))


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigurationError(f"address must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def bind(address: str, *, reuse_port: bool = False) -> socket.socket:
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it Nagle + delayed ACK add ~40 ms to every response that uvicorn
    # writes in two pieces (head, then body). Linux also inherits NODELAY from the listener.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {address}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its signal capture (several servers share one loop; we handle them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn(app: Any, **extra: Any) -> _Server:
    config = uvicorn.Config(
        app,
        http="httptools",
        loop="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
        **extra,
    )
    return _Server(config)


def configure_logging(*, json_lines: bool) -> None:
    """One line per request on stderr (``sluicegate.access``); plain or JSON as configured."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("sluicegate.access", "sluicegate.gateway"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    del json_lines  # the access log formats its own JSON; kept for symmetry with the policy


class GatewayServer:
    """Proxy + admin (+ optional mock upstream) in the running event loop."""

    def __init__(
        self,
        policy_path: str | os.PathLike[str],
        *,
        listen: str | None = None,
        admin_listen: str | None = None,
        mock_upstream: bool = False,
        upstream_url: str | None = None,
        resolver_factory: ResolverFactory | None = None,
        use_tiktoken: bool = True,
        reuse_port: bool = False,
        admin: bool = True,
        notify_parent: bool = False,
        clock: Clock | None = None,
        http: str = "lean",
    ) -> None:
        self.policy_path = Path(policy_path)
        self._listen = listen
        self._admin_listen = admin_listen
        self._mock = mock_upstream
        self.upstream_url = upstream_url
        self._factory = resolver_factory or default_resolver
        self._use_tiktoken = use_tiktoken
        self._reuse_port = reuse_port
        self._admin_enabled = admin
        self._notify_parent = notify_parent
        self._clock = clock
        self._http = http
        self._lean: list[LeanServer] = []
        self._servers: list[tuple[_Server, asyncio.Task[None]]] = []
        self.metrics = Metrics()
        self.mock: MockUpstream | None = None
        self.url = ""
        self.admin_url = ""
        self.mock_url = ""

    async def _start_server(self, app: Any, sock: socket.socket) -> str:
        server = _uvicorn(app)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        self._servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise ConfigurationError("server failed to start")
            await asyncio.sleep(0.005)
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def _on_alert(self, event: dict[str, Any]) -> None:
        """Alerts go to the log and webhooks (AlertSink) and into the metrics."""
        if event.get("event") == "tenant_breaker_open":
            labels = (str(event.get("tenant")), str(event.get("pool")))
            self.metrics.breaker_trips.labels(*labels).inc()
        elif event.get("event") == "scale_event":
            self.metrics.scale_events.labels(str(event.get("tenant"))).inc()
        self.alerts.emit(event)

    async def start(self) -> None:
        if self._mock and self.upstream_url is None:
            self.mock = MockUpstream()
            self.mock_url = await self._start_server(self.mock, bind("127.0.0.1:0"))
            self.upstream_url = self.mock_url
        config = load_gateway_policy(self.policy_path, upstream_override=self.upstream_url)
        self.config = config
        configure_logging(json_lines=config.settings.log_json)
        self.engine = await open_engine(config.policy, clock=self._clock)
        alerts = config.policy.spec.alerts
        self.alerts = AlertSink(
            [a.webhook for a in alerts], timeout=max((a.timeout for a in alerts), default=2.0)
        )
        self.engine.on_alert = self._on_alert
        self.store = self.engine.store
        resolver = self._factory(config)
        self.gateway = Gateway(
            config, self.engine, resolver, metrics=self.metrics, use_tiktoken=self._use_tiktoken
        )
        if self._use_tiktoken:
            from sluicegate.cost import preload

            await asyncio.to_thread(preload)
        listen = self._listen or config.settings.listen
        sock = bind(listen, reuse_port=self._reuse_port)
        if self._http == "uvicorn":
            self.url = await self._start_server(self.gateway, sock)
        else:
            lean = LeanServer(self.gateway)
            await lean.start(sock)
            self._lean.append(lean)
            host, port = sock.getsockname()[:2]
            self.url = f"http://{host}:{port}"
        if self._admin_enabled:
            admin = AdminApp(
                token_env=lambda: self.gateway.config.settings.admin_token_env,
                status=self.status,
                reload=self.reload,
                ready=self.ready,
                metrics=self._render_metrics,
                engine=lambda: self.engine,
            )
            address = self._admin_listen or config.settings.admin_listen
            self.admin_url = await self._start_server(admin, bind(address))

    def _render_metrics(self) -> bytes:
        self.metrics.set_open_breakers(self.engine.open_breakers())
        return self.metrics.render()

    async def reload(self) -> list[str]:
        """Re-read the policy file and swap it in; the problems if it is invalid (old stays)."""
        problems = await self._reload_local()
        if not problems and self._notify_parent:
            os.kill(os.getppid(), signal.SIGHUP)
        return problems

    async def _reload_local(self) -> list[str]:
        try:
            config = load_gateway_policy(self.policy_path, upstream_override=self.upstream_url)
            if config.policy.store_url != self.config.policy.store_url:
                raise ConfigurationError("the store cannot change on reload; restart instead")
            resolver = self._factory(config)
        except PolicyError as exc:
            self.metrics.reloads.labels("failed").inc()
            log.warning("policy reload refused: %d problem(s)", len(exc.problems))
            return [str(p) for p in exc.problems]
        except SluicegateError as exc:
            self.metrics.reloads.labels("failed").inc()
            return [str(exc)]
        self.gateway.reconfigure(config, resolver)
        self.config = config
        self.metrics.reloads.labels("ok").inc()
        log.info("policy reloaded from %s (%s)", self.policy_path, config.policy.summary)
        return []

    async def ready(self) -> bool:
        ping = getattr(self.store, "ping", None)
        if ping is None:
            return True
        try:
            await ping()
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return True

    async def status(self) -> dict[str, Any]:
        config = self.gateway.config
        policy = config.policy
        store_status: Any = "memory"
        status_fn = getattr(self.store, "status", None)
        if callable(status_fn):
            try:
                store_status = status_fn()
            except Exception as exc:  # noqa: BLE001
                store_status = f"error: {exc}"
        sized: Any = self.store
        buckets = len(sized) if hasattr(sized, "__len__") else None
        return {
            "policy": {"source": policy.source, "summary": policy.summary},
            "tenants": sorted(policy.tenant_rules),
            "classes": {
                n: {"priority": c.priority, "max_wait": c.max_wait, "sla_p95": c.sla_p95}
                for n, c in policy.classes.items()
            },
            "store": {"url": policy.store_url, "status": store_status, "buckets": buckets},
            "routes": [r.model_dump() for r in config.routes],
            "upstreams": {n: u.url for n, u in config.upstreams.items()},
            "queues": self.gateway.queues(),
            "agentic": self.engine.status(),
        }

    def install_signals(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_local()))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    async def stop(self) -> None:
        for lean in self._lean:
            await lean.stop()
        self._lean.clear()
        for server, _ in self._servers:
            server.should_exit = True
        for _, task in self._servers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._servers.clear()
        if hasattr(self, "alerts"):
            await self.alerts.aclose()
        if hasattr(self, "gateway"):
            await self.gateway.aclose()
        if hasattr(self, "store"):
            await self.store.aclose()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def _serve_forever(server: GatewayServer, banner: bool) -> None:
    stop = asyncio.Event()
    await server.start()
    server.install_signals(stop)
    if banner:
        print(f"sluicegate: proxy on {server.url}", file=sys.stderr)
        if server.admin_url:
            print(f"sluicegate: admin on {server.admin_url}", file=sys.stderr)
        if server.mock_url:
            print(f"sluicegate: mock upstream on {server.mock_url}", file=sys.stderr)
        print(f"sluicegate: policy {server.config.policy.summary}", file=sys.stderr)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _worker(kwargs: dict[str, Any], index: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    server = GatewayServer(
        **kwargs, reuse_port=True, admin=index == 0, notify_parent=index == 0, mock_upstream=False
    )
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(_serve_forever(server, banner=index == 0))


async def _serve_mock(listen: str) -> None:
    from sluicegate.cost import preload

    await asyncio.to_thread(preload)  # the mock counts prompts with tiktoken
    server = _uvicorn(MockUpstream())
    await server.serve(sockets=[bind(listen)])


def run_mock(listen: str) -> None:
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(_serve_mock(listen))


def run(
    policy_path: str,
    *,
    listen: str | None = None,
    admin_listen: str | None = None,
    workers: int = 1,
    mock_upstream: bool = False,
    use_tiktoken: bool = True,
) -> int:
    """Blocking entry point of ``sluicegate serve``."""
    if workers <= 1:
        server = GatewayServer(
            policy_path,
            listen=listen,
            admin_listen=admin_listen,
            mock_upstream=mock_upstream,
            use_tiktoken=use_tiktoken,
        )
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(_serve_forever(server, banner=True))
        return 0
    # Validate once in the parent so a broken policy fails with one message, not N.
    config = load_gateway_policy(policy_path, upstream_override="http://127.0.0.1:1")
    if config.policy.store_url == "memory":
        print(
            f"sluicegate: WARNING: store is memory and --workers is {workers}: every worker keeps "
            f"its own buckets, so each limit is enforced per worker (up to {workers}x in total). "
            "Use a Redis store for exact limits across workers.",
            file=sys.stderr,
        )
    ctx = multiprocessing.get_context("fork")
    procs: list[Any] = []
    mock_proc = None
    upstream_url = None
    if mock_upstream:
        probe = bind("127.0.0.1:0")
        port = probe.getsockname()[1]
        probe.close()
        upstream_url = f"http://127.0.0.1:{port}"
        mock_proc = ctx.Process(target=run_mock, args=(f"127.0.0.1:{port}",), daemon=True)
        mock_proc.start()
    kwargs = {
        "policy_path": policy_path,
        "listen": listen,
        "admin_listen": admin_listen,
        "upstream_url": upstream_url,
        "use_tiktoken": use_tiktoken,
    }

    def forward(sig: int, _frame: Any) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGHUP)

    stopping = False

    def stop(sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive():
                proc.terminate()

    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for i in range(workers):
        proc = ctx.Process(target=_worker, args=(kwargs, i))
        proc.start()
        procs.append(proc)

    code = 0
    for proc in procs:
        proc.join()
        code = code or (proc.exitcode or 0 if not stopping else 0)
    if mock_proc is not None:
        mock_proc.terminate()
        mock_proc.join()
    return code
