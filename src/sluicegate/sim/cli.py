"""``sluicegate simulate``: replay agentic traffic against a policy (or two) on virtual time.

Wire into the main CLI with :func:`register`; ``python -m sluicegate.sim`` runs it standalone.
"""

from __future__ import annotations

import argparse
import json
import sys

from sluicegate.errors import PolicyError
from sluicegate.policy import load_policy, parse_duration
from sluicegate.policy.resolve import Policy
from sluicegate.sim.report import Pair, html_report, text_report
from sluicegate.sim.runner import compare, simulate
from sluicegate.sim.scenarios import SCENARIOS, build_scenario


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` command to a CLI's subparsers."""
    p = subparsers.add_parser(
        "simulate",
        help="replay agentic traffic scenarios against a policy on a virtual clock",
        description="Run the real engine on virtual time against seeded agentic traffic; "
        "with --against, run the same traffic against a second policy side by side.",
    )
    p.add_argument("--policy", required=True, metavar="FILE")
    p.add_argument(
        "--scenario",
        required=True,
        metavar="NAME",
        help=f"one of: {', '.join(SCENARIOS)}, or 'all'",
    )
    p.add_argument("--against", metavar="FILE2", help="a second policy to compare with")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", help="virtual duration, e.g. 120s or 10m (default 2m)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of callers")
    p.add_argument("--report", metavar="OUT.html", help="write a self-contained HTML report")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_command)


def _load(path: str) -> Policy | None:
    try:
        return load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: invalid policy", file=sys.stderr)
        return None
    except OSError as exc:
        print(f"sluicegate simulate: {path}: {exc.strerror or exc}", file=sys.stderr)
        return None


def run_command(args: argparse.Namespace) -> int:
    if args.scenario != "all" and args.scenario not in SCENARIOS:
        print(
            f"sluicegate simulate: unknown scenario {args.scenario!r} "
            f"(scenarios: {', '.join(SCENARIOS)}, all)",
            file=sys.stderr,
        )
        return 2
    if args.scale <= 0:
        print("sluicegate simulate: --scale must be positive", file=sys.stderr)
        return 2
    try:
        duration = parse_duration(args.duration) if args.duration else None
    except ValueError as exc:
        print(f"sluicegate simulate: --duration: {exc}", file=sys.stderr)
        return 2
    if duration is not None and duration <= 0:
        print("sluicegate simulate: --duration must be positive", file=sys.stderr)
        return 2
    first = _load(args.policy)
    second = _load(args.against) if args.against else None
    if first is None or (args.against and second is None):
        return 1
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    pairs: list[Pair] = []
    for name in names:
        traffic = build_scenario(name, seed=args.seed, scale=args.scale, duration=duration)
        if second is not None:
            pairs.append(compare(first, second, traffic, seed=args.seed, labels=_labels(args)))
        else:
            pairs.append((simulate(first, traffic, seed=args.seed, label=args.policy), None))
    if args.json:
        out = [{"a": a.to_dict(), "b": b.to_dict() if b else None} for a, b in pairs]
        print(json.dumps(out, indent=2))
    else:
        print("\n\n".join(text_report(a, b) for a, b in pairs))
    if args.report:
        try:
            page = html_report(pairs)
        except ImportError:
            print(
                "sluicegate simulate: --report needs matplotlib (pip install 'sluicegate[sim]')",
                file=sys.stderr,
            )
            return 1
        with open(args.report, "w", encoding="utf-8") as fh:
            fh.write(page)
        print(f"report written to {args.report}", file=sys.stderr)
    return 0


def _labels(args: argparse.Namespace) -> tuple[str, str]:
    """Short names for the two policies (file stems; the paths when the stems clash)."""
    from pathlib import Path

    a, b = Path(args.policy).stem, Path(args.against).stem
    return (a, b) if a != b else (args.policy, args.against)
