"""``sluicegate keys``: create API keys (stored hashed) and hash existing ones.

Wire into the main parser with ``identity_cli.register(sub)``:

* ``sluicegate keys add --tenant T --agent A [--name N] [--file keys.yaml]`` prints a new random
  key once on stdout and appends its hashed entry to the keys file (created if missing; the
  result is validated before it replaces the file). Without ``--file`` it prints the YAML entry
  to paste into ``identity.api_keys``.
* ``sluicegate keys hash`` reads a key from stdin and prints its SHA-256 entry hash.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sluicegate.engine.identity import hash_key, make_key_entry
from sluicegate.errors import PolicyError
from sluicegate.policy.identity_schema import parse_api_keys_text

_HEADER = "# sluicegate API keys: SHA-256 digests only (created by `sluicegate keys add`)\n"


def append_entry(path: Path, entry: dict[str, str]) -> None:
    """Append one entry to a keys file, keeping its comments; the new text is validated first
    and replaces the file atomically (raises :class:`PolicyError` when it would be invalid)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = _HEADER
    parse_api_keys_text(text, str(path))  # refuse to touch a broken file
    if text and not text.endswith("\n"):
        text += "\n"
    if text.strip() == "[]":
        text = ""
    text += yaml.safe_dump([entry], sort_keys=False, allow_unicode=True)
    parse_api_keys_text(text, str(path))
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _cmd_add(args: argparse.Namespace) -> int:
    try:
        key, entry = make_key_entry(args.tenant, args.agent, name=args.name)
    except ValueError as exc:
        print(f"sluicegate keys add: {exc}", file=sys.stderr)
        return 2
    if args.file:
        try:
            append_entry(Path(args.file), entry)
        except PolicyError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"sluicegate keys add: {args.file}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"added key for {args.tenant}/{args.agent} to {args.file}", file=sys.stderr)
    else:
        print("# add to identity.api_keys (or an api_keys_file):", file=sys.stderr)
        print(yaml.safe_dump([entry], sort_keys=False, allow_unicode=True), end="", file=sys.stderr)
    print("the key is shown only once; it is stored nowhere:", file=sys.stderr)
    print(key)
    return 0


def _cmd_hash(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("sluicegate keys hash: no key on stdin", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``keys`` command to the main parser's subparsers (``add_subparsers()`` result)."""
    keys = subparsers.add_parser("keys", help="create API keys (stored as SHA-256 hashes)")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="create a random key and record its hash")
    add.add_argument("--tenant", required=True)
    add.add_argument("--agent", required=True)
    add.add_argument("--name", help="a label for logs and audit (e.g. ci-bot)")
    add.add_argument("--file", help="API keys file to append to (created if missing)")
    add.set_defaults(func=_cmd_add)
    h = sub.add_parser("hash", help="print the SHA-256 entry hash of a key read from stdin")
    h.set_defaults(func=_cmd_hash)
