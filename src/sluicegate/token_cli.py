"""``sluicegate token issue``: mint a signed initialization token for one starting instance.

The secret comes from ``SLUICEGATE_INIT_SECRET`` (the same value the policy's ``init.secret``
reads), never from the command line, so it stays out of shell history and process lists.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from sluicegate.engine.init_tokens import MIN_SECRET_BYTES, issue_token
from sluicegate.policy.units import parse_duration


def _issue(args: argparse.Namespace) -> int:
    secret = os.environ.get("SLUICEGATE_INIT_SECRET", "")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        print(
            f"sluicegate token issue: set SLUICEGATE_INIT_SECRET (at least {MIN_SECRET_BYTES} "
            "bytes; the policy's init.secret must read the same value)",
            file=sys.stderr,
        )
        return 1
    try:
        ttl = parse_duration(args.ttl)
        token = issue_token(
            secret, tenant=args.tenant, agent=args.agent, instance=args.instance,
            ttl=ttl, now=time.time(),
        )  # fmt: skip
    except ValueError as exc:
        print(f"sluicegate token issue: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def register(sub: Any) -> None:
    """Add ``token issue`` to the CLI."""
    t = sub.add_parser("token", help="mint cold-start (init tier) tokens")
    actions = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = actions.add_parser("issue", help="print a signed init token for one instance")
    issue.add_argument("--tenant", required=True)
    issue.add_argument("--agent", required=True)
    issue.add_argument("--instance", required=True, help="e.g. the container or pod name")
    issue.add_argument("--ttl", default="10m", help="token lifetime (default 10m)")
    issue.set_defaults(func=_issue)
