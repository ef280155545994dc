"""Envoy RLS benchmark: ShouldRateLimit calls/s and p99 at concurrency 32.

Runs, one after another, each server as its own process (the real ``sluicegate rls`` /
``sluicegate decide-api`` commands) and drives it from this process over loopback:

* ``minimal``  a grpc.aio RLS that answers OK without deciding (the gRPC stack's own cost)
* ``memory``   ``sluicegate rls`` deciding on the in-memory store
* ``redis``    ``sluicegate rls`` deciding on Redis (its own redis-server on a free port)
* ``decide``   the HTTP decision API (``POST /v1/decide``, uvicorn + httpx client)

Each call is a full Envoy-shaped request: one descriptor with tenant, agent (1,000 distinct)
and session; limits are high so every call is a full admitted decision (all buckets written).
The last line is machine-readable (memory store vs the minimal RLS)::

    calls_per_s=... p99_ms=... ratio_vs_minimal=...

Usage: ``.venv/bin/python bench/rls.py [--seconds 2.5] [--rounds 3] [--concurrency 32]``
(< 60 s in total). The servers are alternated over rounds and each keeps its best round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

POLICY = """\
version: 1
store: memory
store_options: {timeout: 1s}   # a loaded benchmark box must not trip the 50 ms default
tiers:
  bench:
    tenant:  {requests: 10M/min, tokens: 1000M/min}
    agent:   {requests: 1M/min, tokens: 100M/min}
    session: {requests: 1M/min}
default_tier: bench
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not ready")


CPUS = sorted(os.sched_getaffinity(0))


def _pin_server() -> None:
    """Servers on the last CPU, this driver on the others (when there are two or more), so
    client and server do not fight over one core; every server is pinned alike."""
    if len(CPUS) >= 2:
        os.sched_setaffinity(0, {CPUS[-1]})


def start(args: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluicegate.integrations.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=full_env,
        preexec_fn=_pin_server,
    )
    wait_port(port, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def drive(
    call: Callable[[int], Awaitable[None]], seconds: float, concurrency: int
) -> tuple[float, float]:
    """Calls/s and p99 (ms) of ``call`` run by ``concurrency`` workers for ``seconds``."""
    lat: list[float] = []
    warm_until = time.perf_counter() + 0.5
    end = warm_until + seconds
    counter = 0

    async def worker(w: int) -> None:
        nonlocal counter
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            counter += 1
            await call(counter)
            t1 = time.perf_counter()
            if t0 >= warm_until:
                lat.append(t1 - t0)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    lat.sort()
    p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")
    return len(lat) / seconds, p99


async def bench_grpc(port: int, seconds: float, concurrency: int) -> tuple[float, float]:
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    requests = [
        rls_pb2.RateLimitRequest(
            domain="sluicegate",
            descriptors=[
                ratelimit_pb2.RateLimitDescriptor(
                    entries=[
                        entry(key="tenant", value=f"t{i % 10}"),
                        entry(key="agent", value=f"agent-{i}"),
                        entry(key="session", value=f"s{i % 7}"),
                    ]
                )
            ],
        )
        for i in range(1000)
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        ok = rls_pb2.RateLimitResponse.OK
        first = await stub.ShouldRateLimit(requests[0], timeout=5)
        assert first.overall_code == ok, first

        async def call(i: int) -> None:
            resp = await stub.ShouldRateLimit(requests[i % 1000], timeout=5)
            if resp.overall_code != ok:
                raise RuntimeError(f"unexpected answer {resp}")

        return await drive(call, seconds, concurrency)


async def bench_decide(port: int, seconds: float, concurrency: int) -> tuple[float, float]:
    import httpx

    bodies = [
        {"tenant": f"t{i % 10}", "agent": f"agent-{i}", "session": f"s{i % 7}"} for i in range(1000)
    ]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"authorization": "Bearer bench"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=10
    ) as client:

        async def call(i: int) -> None:
            r = await client.post("/v1/decide", json=bodies[i % 1000], headers=headers)
            if r.status_code != 200 or not r.json()["allowed"]:
                raise RuntimeError(f"unexpected answer {r.status_code} {r.text}")

        await call(0)
        return await drive(call, seconds, concurrency)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    if len(CPUS) >= 2:
        os.sched_setaffinity(0, set(CPUS[:-1]))
    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-rls-"))
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    results: dict[str, tuple[float, float]] = {}
    redis_proc: subprocess.Popen[bytes] | None = None
    try:
        runs: list[tuple[str, list[str], Any]] = [
            ("minimal", ["rls", "--minimal"], bench_grpc),
            ("memory", ["rls", "--policy", str(policy)], bench_grpc),
        ]
        if shutil.which("redis-server"):
            rport = free_port()
            redis_proc = subprocess.Popen(
                ["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no",
                 "--bind", "127.0.0.1", "--dir", str(tmp)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            wait_port(rport, redis_proc)
            url = f"redis://127.0.0.1:{rport}/0"
            runs.append(("redis", ["rls", "--policy", str(policy), "--store", url], bench_grpc))
        runs.append(("decide", ["decide-api", "--policy", str(policy)], bench_decide))
        procs: dict[str, tuple[subprocess.Popen[bytes], int, Any]] = {}
        try:
            for name, cli, fn in runs:
                port = free_port()
                env = {"SLUICEGATE_DECIDE_TOKEN": "bench"}
                proc = start([*cli, "--host", "127.0.0.1", "--port", str(port)], port, env)
                procs[name] = (proc, port, fn)
            # Alternate the servers over rounds and keep each one's best round, so a noisy
            # neighbour on a shared machine hurts every server alike.
            for rnd in range(args.rounds):
                for name, (_proc, port, fn) in procs.items():
                    if name == "decide" and rnd > 0:
                        continue
                    cps, p99 = asyncio.run(fn(port, args.seconds, args.concurrency))
                    print(f"round {rnd + 1} {name:8s} calls_per_s={cps:.0f} p99_ms={p99:.2f}")
                    if name not in results or cps > results[name][0]:
                        results[name] = (cps, p99)
        finally:
            for proc, _, _ in procs.values():
                stop(proc)
    finally:
        if redis_proc is not None:
            stop(redis_proc)
        shutil.rmtree(tmp, ignore_errors=True)
    for name, (cps, p99) in results.items():
        print(f"best {name:8s} calls_per_s={cps:.0f} p99_ms={p99:.2f}")
    base = results["minimal"][0]
    if "redis" in results:
        cps, p99 = results["redis"]
        print(f"redis: calls_per_s={cps:.0f} p99_ms={p99:.2f} ratio_vs_minimal={cps / base:.2f}")
    cps, p99 = results["memory"]
    print(f"calls_per_s={cps:.0f} p99_ms={p99:.2f} ratio_vs_minimal={cps / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
