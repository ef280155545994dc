"""The ``sluicegate`` command line: ``validate`` and ``check`` (more commands join as they land).

Errors a user can fix (a broken policy, a bad argument) print one clear line per problem and exit
1; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, RequestContext, open_engine
from sluicegate.errors import ConfigurationError, PolicyError, SluicegateError, StoreUnavailable
from sluicegate.headers import render_headers
from sluicegate.policy import load_policy, parse_duration
from sluicegate.stores import MemoryStore, parse_store_url


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        n = len(exc.problems)
        print(f"{args.file}: invalid ({n} problem{'s' if n != 1 else ''})", file=sys.stderr)
        return 1
    print(f"{args.file}: ok ({policy.summary})")
    return 0


async def _run_checks(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    interval = parse_duration(args.interval)
    url = args.store or policy.store_url
    clock = VirtualClock(0.0)
    if parse_store_url(url).kind == "memory":
        engine = Engine(policy, MemoryStore(), clock)
        virtual = True
    else:
        # A shared store keeps its own time (Redis TIME): intervals are really waited.
        engine = await open_engine(policy, store_url=url)
        virtual = False
    try:
        return await _check_loop(args, engine, clock if virtual else None, interval)
    finally:
        await engine.aclose()


async def _check_loop(
    args: argparse.Namespace, engine: Engine, clock: VirtualClock | None, interval: float
) -> int:
    started = engine.clock.now()
    allowed = 0
    for i in range(args.repeat):
        ctx = RequestContext(
            tenant=args.tenant,
            agent=args.agent,
            session=args.session,
            workload_class=args.workload_class,
            tokens=args.tokens,
            method=args.method.upper(),
            path=args.path,
            pool=args.pool,
        )
        decision = await engine.decide(ctx)
        allowed += decision.allowed
        if decision.allowed and not args.hold:
            # The call completes at once: reconcile its tokens and free its in-flight slot.
            await engine.settle(decision.id, args.tokens)
        if args.json:
            print(
                json.dumps(
                    {
                        "t": round(engine.clock.now() - started, 6),
                        "outcome": decision.outcome.value,
                        "reason": decision.reason.value,
                        "class": decision.workload_class,
                        "delay": decision.delay,
                        "retry_after": decision.retry_after,
                        "refusing": [b.name for b in decision.refusing],
                        "headers": dict(render_headers(decision)),
                    }
                )
            )
        else:
            t = engine.clock.now() - started
            print(f"#{i + 1} t={t:.3f}s {decision.outcome.value}: {decision.explain()}")
            if decision.warning:
                print(f"    warning: {decision.warning}")
            if not args.quiet:
                for name, value in render_headers(decision):
                    print(f"    {name}: {value}")
        if interval:
            if clock is not None:
                clock.advance(interval)
            else:
                await asyncio.sleep(interval)
    if not args.json:
        print(f"{allowed}/{args.repeat} admitted")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        print("sluicegate check: --repeat must be at least 1", file=sys.stderr)
        return 2
    if args.tokens < 0:
        print("sluicegate check: --tokens must not be negative", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run_checks(args))
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except (ConfigurationError, StoreUnavailable) as exc:
        print(f"sluicegate check: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"sluicegate check: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluicegate", description="Agent-aware API gateway and rate-limiting engine."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="validate a policy file")
    v.add_argument("file")
    v.set_defaults(func=_cmd_validate)

    c = sub.add_parser(
        "check",
        help="run decisions against a policy on the in-memory store and print them",
        description="Run K decisions for one identity on a virtual clock (no server needed).",
    )
    c.add_argument("--policy", required=True)
    c.add_argument("--tenant", required=True)
    c.add_argument("--agent", required=True)
    c.add_argument("--session")
    c.add_argument("--class", dest="workload_class")
    c.add_argument("--tokens", type=float, default=0.0, help="token reservation per call")
    c.add_argument("--method", default="POST")
    c.add_argument("--path", default="/v1/chat/completions")
    c.add_argument("--pool")
    c.add_argument(
        "--store",
        metavar="URL",
        help="memory, redis://host:port/db, rediss://..., redis+cluster://h:p,h:p "
        "(default: the policy's store:)",
    )
    c.add_argument("--repeat", type=int, default=1)
    c.add_argument("--interval", default="0s", help="virtual time between calls, e.g. 100ms")
    c.add_argument("--json", action="store_true", help="one JSON object per decision")
    c.add_argument(
        "--hold", action="store_true", help="keep admitted calls in flight (never settle them)"
    )
    c.add_argument("--quiet", action="store_true", help="omit headers")
    c.set_defaults(func=_cmd_check)

    from sluicegate import identity_cli

    identity_cli.register(sub)

    from sluicegate import token_cli

    token_cli.register(sub)

    from sluicegate.integrations.cli import register as register_integrations
    from sluicegate.policy.lint_cli import register as register_lint

    register_lint(sub)

    from sluicegate.sim.cli import register as register_simulate

    register_simulate(sub)

    from sluicegate.gateway.cli import register as register_gateway

    register_gateway(sub)
    register_integrations(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SluicegateError as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
