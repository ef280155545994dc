"""``sluicegate rls`` and ``sluicegate decide-api``: :func:`register` adds them to the main CLI.

Also runnable on its own: ``python -m sluicegate.integrations.cli rls --policy FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from sluicegate.errors import ConfigurationError, PolicyError

TOKEN_ENV = "SLUICEGATE_DECIDE_TOKEN"


def _print_policy_error(exc: PolicyError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return 1


async def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(engine or None, store)`` from ``--policy`` / ``--store``; the policy's
    ``store_options`` (failure mode, timeout, ...) apply, as for every other command."""
    from sluicegate.engine.factory import open_engine
    from sluicegate.policy import load_policy
    from sluicegate.stores.url import open_store

    if args.policy:
        policy = load_policy(args.policy)
        url = args.store or policy.store_url
        if url == "memory":
            # open_engine passes shared-store options (timeout) that open_store rejects for
            # the memory store; remove this branch once the factory skips them there.
            from sluicegate.engine import Engine

            store = await open_store(url)
            return Engine(policy, store), store
        engine = await open_engine(policy, store_url=url)
        return engine, engine.store
    return None, await open_store(args.store or "memory")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _descriptor_keys(pairs: Sequence[str]) -> Any:
    from sluicegate.integrations.rls import DescriptorKeys

    fields = {f for f in DescriptorKeys.__dataclass_fields__ if f != "default_agent"}
    values: dict[str, str] = {}
    for pair in pairs:
        part, sep, name = pair.partition("=")
        if not sep or part not in fields or not name:
            raise ConfigurationError(
                f"--key {pair!r}: expected PART=KEY with PART one of {', '.join(sorted(fields))}"
            )
        values[part] = name
    return DescriptorKeys(**values)


async def _run_rls(args: argparse.Namespace) -> int:
    from sluicegate.integrations.rls import MinimalServicer, RateLimitServicer, serve
    from sluicegate.policy.envoy_config import load_envoy_config

    if args.minimal:
        server = await serve(MinimalServicer(), host=args.host, port=args.port)
        store = None
    else:
        domains = load_envoy_config(args.envoy_config) if args.envoy_config else None
        if domains is not None and args.domain:
            if args.domain not in domains:
                raise ConfigurationError(
                    f"{args.envoy_config}: no domain {args.domain!r} "
                    f"(defined: {', '.join(sorted(domains))})"
                )
            domains = {args.domain: domains[args.domain]}
        engine, store = await _open(args)
        servicer = RateLimitServicer(
            engine,
            envoy=domains,
            store=store,
            keys=_descriptor_keys(args.key),
            max_wait=args.max_wait,
        )
        server = await serve(servicer, host=args.host, port=args.port)
    print(f"sluicegate rls: serving on {args.host}:{server.port}", flush=True)
    try:
        await _until_signalled()
    finally:
        await server.stop(1.0)
        if store is not None:
            await store.aclose()
    return 0


def _logging() -> None:
    """The servers log at INFO (the CLI configures nothing by default)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _cmd_rls(args: argparse.Namespace) -> int:
    _logging()
    if not (args.policy or args.envoy_config or args.minimal):
        print("sluicegate rls: give --policy FILE and/or --envoy-config FILE", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run_rls(args))
    except PolicyError as exc:
        return _print_policy_error(exc)


async def _run_decide_api(args: argparse.Namespace, token: str) -> int:
    import uvicorn

    from sluicegate.integrations.decide_api import create_app

    engine, store = await _open(args)
    app = create_app(engine, token=token, body_style=args.body_style)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    print(f"sluicegate decide-api: serving on {args.host}:{args.port}", flush=True)
    try:
        await server.serve()
    finally:
        await store.aclose()
    return 0


def _cmd_decide_api(args: argparse.Namespace) -> int:
    _logging()
    token = os.environ.get(args.token_env, "")
    if not token:
        print(f"sluicegate decide-api: set the bearer token in ${args.token_env}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run_decide_api(args, token))
    except PolicyError as exc:
        return _print_policy_error(exc)


def register(subparsers: Any) -> None:
    """Add ``rls`` and ``decide-api`` to the main CLI's subparsers."""
    r = subparsers.add_parser(
        "rls",
        help="serve Envoy's gRPC rate-limit service (RateLimitService v3)",
        description="Answer envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit with "
        "the engine; also serves grpc.health.v1.Health.",
    )
    r.add_argument("--policy", help="sluicegate policy file")
    r.add_argument("--envoy-config", help="envoyproxy/ratelimit config file or directory")
    r.add_argument("--domain", help="serve only this domain of --envoy-config")
    r.add_argument("--host", default="0.0.0.0")
    r.add_argument("--port", type=int, default=8081)
    r.add_argument("--store", help="store URL (default: the policy's store)")
    r.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PART=KEY",
        help="descriptor key for tenant/agent/session/workload_class/tokens (repeatable)",
    )
    r.add_argument(
        "--max-wait", type=float, default=0.0, help="seconds a queueing class may be held"
    )
    r.add_argument("--minimal", action="store_true", help=argparse.SUPPRESS)  # benchmark baseline
    r.set_defaults(func=_cmd_rls)

    d = subparsers.add_parser(
        "decide-api",
        help="serve the HTTP decision API (POST /v1/decide, /v1/settle, GET /openapi.json)",
    )
    d.add_argument("--policy", required=True)
    d.add_argument("--host", default="0.0.0.0")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--store", help="store URL (default: the policy's store)")
    d.add_argument(
        "--token-env", default=TOKEN_ENV, help=f"env var holding the bearer token ({TOKEN_ENV})"
    )
    d.add_argument("--body-style", choices=["openai", "anthropic"], default="openai")
    d.set_defaults(func=_cmd_decide_api)
