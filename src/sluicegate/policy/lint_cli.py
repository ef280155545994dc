"""``sluicegate lint`` and ``sluicegate convert`` (wired into :mod:`sluicegate.cli` by
:func:`register`).

Exit codes: ``lint`` exits 1 when a finding reaches ``--fail-on`` (default ``error``: the SG00x
warnings are reported but only SG000 / SG102 errors fail; CI that wants the agentic checks to gate
merges passes ``--fail-on warning``), else 0. ``convert`` exits 0 when it wrote a policy, 1 when
the input cannot be read or converted. Bad arguments exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sluicegate.errors import PolicyError
from sluicegate.policy.lint import LintOptions, Severity, invalid_findings, lint_doc, reaches
from sluicegate.policy.lint_output import render, summary

FORMATS = ("sluicegate", "kong", "envoy", "litellm")


def _options(args: argparse.Namespace) -> LintOptions:
    return LintOptions(max_request_tokens=float(args.max_request_tokens))


def _load(args: argparse.Namespace) -> Any:
    """The imported config (or sluicegate policy) as an :class:`~.importers.Imported`."""
    from sluicegate.policy.importers import import_file

    return import_file(args.from_format, args.file)


def _cmd_lint(args: argparse.Namespace) -> int:
    try:
        imported = _load(args)
        findings = lint_doc(imported.lint_doc(), _options(args))
    except PolicyError as exc:
        findings = invalid_findings(exc)
    colour = (
        args.format == "text"
        and sys.stdout.isatty()
        and not args.no_color
        and not os.environ.get("NO_COLOR")
    )
    sys.stdout.write(render(findings, args.format, colour=colour))
    return 1 if reaches(findings, Severity(args.fail_on)) else 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from sluicegate.policy.lint_fix import convert

    try:
        imported = _load(args)
        result = convert(
            imported.lint_doc(),
            _options(args),
            comments=imported.comments,
            header=imported.header(),
        )
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if args.output in (None, "-"):
        sys.stdout.write(result.text)
    else:
        Path(args.output).write_text(result.text, encoding="utf-8")
    print(
        f"{args.file}: {len(result.fixed)} fixes applied; remaining: {summary(result.remaining)}",
        file=sys.stderr,
    )
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-request-tokens",
        default=128_000,
        type=int,
        metavar="N",
        help="largest single LLM request expected (SG103; default 128000)",
    )
    p.add_argument("file", metavar="FILE")


def register(subparsers: Any) -> None:
    """Add ``lint`` and ``convert`` to the ``sluicegate`` command's subparsers."""
    lint = subparsers.add_parser(
        "lint",
        help="find agentic misconfigurations in a policy (or a Kong / envoy / LiteLLM config)",
        description="Report SG00x agentic misconfigurations and SG1xx mistakes, with fixes.",
    )
    lint.add_argument(
        "--from",
        dest="from_format",
        choices=FORMATS,
        default="sluicegate",
        help="input format (default: sluicegate)",
    )
    lint.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    lint.add_argument(
        "--fail-on",
        choices=[s.value for s in Severity],
        default="error",
        help="exit 1 when a finding is at least this severe (default: error)",
    )
    lint.add_argument(
        "--no-color", action="store_true", help="never colour text output (also: NO_COLOR=1)"
    )
    _common(lint)
    lint.set_defaults(func=_cmd_lint)

    conv = subparsers.add_parser(
        "convert",
        help="write an equivalent sluicegate policy with the lint fixes applied",
        description="Import a config and write sluicegate policy YAML; every applied fix is "
        "marked with a '# fixed SG00x' comment.",
    )
    conv.add_argument("--from", dest="from_format", choices=FORMATS, required=True)
    conv.add_argument("-o", "--output", metavar="OUT", help="output file (default: stdout)")
    _common(conv)
    conv.set_defaults(func=_cmd_convert)
