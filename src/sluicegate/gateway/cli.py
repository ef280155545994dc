"""``sluicegate serve``, ``sluicegate mock-upstream`` and ``sluicegate scale-event``;
``register(subparsers)`` adds them.

Kept here (not in :mod:`sluicegate.cli`) so the core CLI imports no web server: the gateway
modules are imported only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _cmd_scale_event(args: argparse.Namespace) -> int:
    """Announce a fleet start to a running gateway's admin API (or list the active ones)."""
    import httpx

    token = os.environ.get(args.token_env, "")
    if not token:
        print(f"sluicegate scale-event: set ${args.token_env} to the admin token", file=sys.stderr)
        return 2
    url = args.admin.rstrip("/") + "/admin/scale-events"
    headers = {"authorization": f"Bearer {token}"}
    try:
        if args.list:
            response = httpx.get(url, headers=headers, timeout=10.0)
        elif args.end:
            if not args.tenant or not args.agent:
                print("sluicegate scale-event: --end needs --tenant and --agent", file=sys.stderr)
                return 2
            who = {"tenant": args.tenant, "agent": args.agent}
            response = httpx.request("DELETE", url, json=who, headers=headers, timeout=10.0)
        else:
            names = ("tenant", "agent", "instances")
            missing = [f"--{n}" for n in names if getattr(args, n) in (None, "")]
            if missing:
                print(f"sluicegate scale-event: {', '.join(missing)} required", file=sys.stderr)
                return 2
            body: dict[str, Any] = {
                "tenant": args.tenant, "agent": args.agent, "instances": args.instances,
            }  # fmt: skip
            if args.window:
                body["window"] = args.window
            response = httpx.post(url, json=body, headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        print(f"sluicegate scale-event: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    try:
        doc = response.json()
    except ValueError:
        doc = {"error": response.text[:500]}
    out = sys.stdout if response.is_success else sys.stderr
    print(json.dumps(doc, indent=2, sort_keys=True), file=out)
    return 0 if response.is_success else 1


def register(subparsers: Any) -> None:
    """Add ``serve``, ``mock-upstream`` and ``scale-event`` to the command's subparsers."""
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

    e = subparsers.add_parser(
        "scale-event",
        help="announce a fleet start to a running gateway (pre-warms the init tier)",
        description="POST /admin/scale-events: for WINDOW, the agent's init aggregate burst "
        "holds INSTANCES times the per-instance init burst. --list shows the active events, "
        "--end ends one early. The admin token is read from the environment.",
    )
    e.add_argument("--admin", default="http://127.0.0.1:8081", help="admin API base URL")
    e.add_argument("--tenant")
    e.add_argument("--agent")
    e.add_argument("--instances", type=int)
    e.add_argument("--window", help="how long it lasts, e.g. 90s (default: the init window)")
    e.add_argument("--list", action="store_true", help="list the active scale events")
    e.add_argument("--end", action="store_true", help="end the agent's active event early")
    e.add_argument(
        "--token-env",
        default="SLUICEGATE_ADMIN_TOKEN",
        help="environment variable holding the admin token (default SLUICEGATE_ADMIN_TOKEN)",
    )
    e.set_defaults(func=_cmd_scale_event)
