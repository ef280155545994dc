"""``sluicegate serve`` and ``sluicegate mock-upstream``; ``register(subparsers)`` adds both.

Kept here (not in :mod:`sluicegate.cli`) so the core CLI imports no web server: the gateway
modules are imported only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _cmd_serve(args: argparse.Namespace) -> int:
    from sluicegate.errors import PolicyError
    from sluicegate.gateway.server import run

    if args.workers < 1:
        print("sluicegate serve: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        return run(
            args.policy,
            listen=args.listen,
            admin_listen=args.admin,
            workers=args.workers,
            mock_upstream=args.mock_upstream,
            use_tiktoken=not args.no_tiktoken,
        )
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1


def _cmd_mock(args: argparse.Namespace) -> int:
    from sluicegate.gateway.server import run_mock

    print(f"sluicegate: mock upstream on http://{args.listen}", file=sys.stderr)
    run_mock(args.listen)
    return 0


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``mock-upstream`` to the ``sluicegate`` command's subparsers."""
    s = subparsers.add_parser(
        "serve",
        help="run the gateway (reverse proxy + admin API)",
        description="Run the agent-aware reverse proxy with the given policy.",
    )
    s.add_argument("--policy", required=True, help="policy YAML file")
    s.add_argument("--listen", help="proxy address HOST:PORT (default: gateway.listen)")
    s.add_argument("--admin", help="admin API address HOST:PORT (default: gateway.admin_listen)")
    s.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)"
    )
    s.add_argument(
        "--mock-upstream",
        action="store_true",
        help="start the built-in mock OpenAI/Anthropic upstream and send every route to it",
    )
    s.add_argument(
        "--no-tiktoken", action="store_true", help="estimate tokens with the calibrated fallback"
    )
    s.set_defaults(func=_cmd_serve)

    m = subparsers.add_parser(
        "mock-upstream",
        help="run the built-in mock OpenAI-compatible upstream",
        description="Serve mock chat completions (JSON and SSE), completions, embeddings, "
        "responses and Anthropic messages with realistic usage.",
    )
    m.add_argument("--listen", default="127.0.0.1:9900", help="HOST:PORT (default 127.0.0.1:9900)")
    m.set_defaults(func=_cmd_mock)
