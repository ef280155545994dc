"""Proxy benchmark: sluicegate vs nginx as a keep-alive reverse proxy, on loopback, bounded in time.

Runs wrk (installing nginx and wrk from Debian with apt-get if missing) against, in order:

1. ``direct``: nginx serving a fixed JSON body with usage (the fast upstream);
2. ``nginx-proxy``: nginx as a plain keep-alive reverse proxy in front of it (the physical limit);
3. ``sluicegate``: the gateway (memory store, every request an LLM-route POST decided on 6
   buckets: tenant, agent and session x requests and tokens; JSON body token-estimated; usage
   parsed from the response and settled);
4. ``sluicegate-wN``: the same with N workers on SO_REUSEPORT (``--workers``, default 2).

``*-c1`` rows repeat direct and sluicegate with one connection: with 32 connections a
closed-loop load generator saturates the proxy, so its p50 there is mostly queueing
(32 / throughput); one connection shows the latency the gateway adds to a single call.

Each proxy is pinned to CPU 1 (``taskset``) and wrk plus the upstream to CPU 0 when the machine
has at least two CPUs, so "one proxy core" is compared with "one proxy core". The last line is
machine-readable: ``rps=... added_p50_ms=... added_p99_ms=... ratio_vs_nginx=...``.

Usage: ``.venv/bin/python bench/proxy.py [--duration 5] [--connections 32] [--workers 2]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

from sluicegate.errors import SluicegateError

BODY = (
    '{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],'
    '"model":"m","usage":{"prompt_tokens":8,"total_tokens":8}}'
)
REQUEST = '{"model":"text-embedding-3-small","input":"The quick brown fox jumps over the dog"}'
KEY = "bench-key-0123456789"


def ensure(binary: str, package: str) -> str:
    found = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if found:
        return found
    print(f"installing {package} ...", file=sys.stderr)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", package], check=True, stdout=subprocess.DEVNULL
    )
    found = shutil.which(binary) or f"/usr/sbin/{binary}"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def pin(cpu: int) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def nginx_conf(tmp: Path, up_port: int, proxy_port: int) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            daemon off;
            master_process on;
            worker_processes 1;
            pid {tmp}/nginx.pid;
            error_log {tmp}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
              access_log off;
              client_body_temp_path {tmp}/body;
              proxy_temp_path {tmp}/proxy;
              fastcgi_temp_path {tmp}/fcgi;
              uwsgi_temp_path {tmp}/uwsgi;
              scgi_temp_path {tmp}/scgi;
              keepalive_requests 1000000;
              upstream up {{ server 127.0.0.1:{up_port}; keepalive 128; }}
              server {{
                listen 127.0.0.1:{up_port};
                location / {{ default_type application/json; return 200 '{BODY}'; }}
              }}
              server {{
                listen 127.0.0.1:{proxy_port};
                location / {{
                  proxy_pass http://up;
                  proxy_http_version 1.1;
                  proxy_set_header Connection "";
                }}
              }}
            }}
            """
        )
    )
    return conf


def policy(tmp: Path, up_port: int, listen: int, admin: int) -> Path:
    path = tmp / "policy.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            store: memory
            tiers:
              pro:
                tenant:  {{requests: 100M/min, burst: 1M, tokens: 100G/min}}
                agent:   {{requests: 100M/min, burst: 1M, tokens: 100G/min}}
                session: {{requests: 100M/min, burst: 1M, tokens: 100G/min}}
            tenants:
              bench: {{tier: pro}}
            routes:
              - {{path_prefix: /v1/, upstream: up, dialect: openai}}
            upstreams:
              up: {{url: "http://127.0.0.1:{up_port}"}}
            gateway:
              listen: 127.0.0.1:{listen}
              admin_listen: 127.0.0.1:{admin}
              access_log: false
            """
        )
    )
    return path


class _Ident(NamedTuple):
    tenant: str
    agent: str
    session: str | None
    subject: str
    init_token: str | None


class _BenchAuthError(SluicegateError):
    status = 401
    code = "invalid_api_key"


class _BenchResolver:
    """Static API-key resolver for the benchmark: a SHA-256 of the key looked up in a dict, the
    same work a hashed-key resolver does (the real one is used when it is available)."""

    def __init__(self) -> None:
        self._keys = {hashlib.sha256(KEY.encode()).hexdigest(): ("bench", "agent-1")}

    def resolve(self, headers: dict[str, str]) -> _Ident:
        auth = headers.get("authorization", "")
        found = self._keys.get(hashlib.sha256(auth[7:].encode()).hexdigest())
        if found is None:
            raise _BenchAuthError("bad key")
        return _Ident(found[0], found[1], headers.get("x-agent-session"), found[1], None)

    def credential_headers(self) -> frozenset[str]:
        return frozenset({"authorization"})


def serve(policy_path: str, workers: int) -> None:
    """Child mode: run the gateway (1 or N workers) with the bench resolver."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import asyncio

    from sluicegate.gateway import server as srv

    def factory(config: object) -> object:
        return _BenchResolver()

    def one(reuse: bool, admin: bool) -> None:
        gw = srv.GatewayServer(
            policy_path,
            resolver_factory=factory,
            reuse_port=reuse,
            admin=admin,  # type: ignore[arg-type]
        )
        with asyncio.Runner(loop_factory=srv._new_loop) as runner:
            runner.run(srv._serve_forever(gw, banner=False))

    if workers <= 1:
        one(False, True)
        return
    pids = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:
            one(True, i == 0)
            os._exit(0)
        pids.append(pid)

    def stop(*_: object) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for pid in pids:
        os.waitpid(pid, 0)


_LAT = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(wrk_bin: str, url: str, seconds: float, connections: int, script: Path) -> dict[str, float]:
    cmd = [
        *pin(0), wrk_bin, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
        "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat: dict[str, float] = {}
    for pct, value, unit in _LAT.findall(out):
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        lat[pct] = float(value) * scale
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50": lat.get("50", float("nan")),
        "p99": lat.get("99", float("nan")),
        "bad": float(non2xx.group(1)) if non2xx else 0.0,
        "sock_errors": 1.0 if errors else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="workers for the scaling run (0: skip)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--serve-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.serve_workers)
        return 0
    nginx = ensure("nginx", "nginx")
    wrk_bin = ensure("wrk", "wrk")
    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    up_port, proxy_port, sg_port, admin_port = (free_port() for _ in range(4))
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{REQUEST}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
        'wrk.headers["X-Agent-Session"] = "s-1"\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, float]] = {}
    path = "/v1/embeddings"
    try:
        # upstream pinned with wrk on CPU 0; the nginx proxy's worker also ends up there unless
        # we run a second nginx: use one config with both servers, pinned to CPU 1 for the proxy
        up = subprocess.Popen([*pin(1), nginx, "-c", str(nginx_conf(tmp, up_port, proxy_port))])
        procs.append(up)
        wait_port(up_port)
        wait_port(proxy_port)
        warm = max(1.0, args.duration / 5)
        wrk(wrk_bin, f"http://127.0.0.1:{up_port}{path}", warm, args.connections, script)
        results["direct"] = wrk(
            wrk_bin, f"http://127.0.0.1:{up_port}{path}", args.duration, args.connections, script
        )
        light = max(2.0, args.duration / 2)
        results["direct-c1"] = wrk(wrk_bin, f"http://127.0.0.1:{up_port}{path}", light, 1, script)
        results["nginx-proxy"] = wrk(
            wrk_bin, f"http://127.0.0.1:{proxy_port}{path}", args.duration, args.connections, script
        )
        pol = policy(tmp, up_port, sg_port, admin_port)
        runs = [("sluicegate", 1)]
        if args.workers > 1:
            runs.append((f"sluicegate-w{args.workers}", args.workers))
        for name, workers in runs:
            cpus = pin(1) if workers == 1 else []
            sg = subprocess.Popen(
                [
                    *cpus,
                    sys.executable,
                    __file__,
                    "--serve",
                    str(pol),
                    "--serve-workers",
                    str(workers),
                ],
                stderr=subprocess.DEVNULL,
            )
            procs.append(sg)
            wait_port(sg_port)
            url = f"http://127.0.0.1:{sg_port}{path}"
            wrk(wrk_bin, url, warm, args.connections, script)
            results[name] = wrk(wrk_bin, url, args.duration, args.connections, script)
            if workers == 1:  # added latency of one request at a time (no queueing in the proxy)
                results["sluicegate-c1"] = wrk(wrk_bin, url, light, 1, script)
            sg.send_signal(signal.SIGTERM)
            try:
                sg.wait(10)
            except subprocess.TimeoutExpired:
                sg.kill()
            time.sleep(0.3)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGQUIT if p is procs[0] else signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'target':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['rps']:>10.0f}{r['p50']:>10.3f}{r['p99']:>10.3f}{r['bad']:>10.0f}")
    d, n, s = results["direct"], results["nginx-proxy"], results["sluicegate"]
    d1, c1 = results["direct-c1"], results["sluicegate-c1"]
    print(
        f"rps={s['rps']:.0f} added_p50_ms={s['p50'] - d['p50']:.3f} "
        f"added_p99_ms={s['p99'] - d['p99']:.3f} ratio_vs_nginx={s['rps'] / n['rps']:.3f} "
        f"added_p50_ms_c1={c1['p50'] - d1['p50']:.3f} added_p99_ms_c1={c1['p99'] - d1['p99']:.3f}"
        + (
            f" rps_w{args.workers}={results[f'sluicegate-w{args.workers}']['rps']:.0f}"
            if args.workers > 1
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
