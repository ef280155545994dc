"""YAML composed into plain data plus the 1-based line of every key: the shared plumbing of the
policy loader (errors as ``file:line: path``) and of the linter and importers (findings that
point into any YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sluicegate.errors import PolicyError, PolicyProblem

Loc = tuple[str | int, ...]


def walk(
    node: yaml.Node,
    loc: Loc,
    lines: dict[Loc, int],
    dups: list[tuple[Loc, int]] | None = None,
) -> Any:
    """Build plain Python data from a node tree, recording each key's line in ``lines`` and,
    when ``dups`` is given, every repeated key (YAML loaders silently keep the last one)."""
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            child = (*loc, key)
            if dups is not None and key in out:
                dups.append((child, key_node.start_mark.line + 1))
            lines[child] = key_node.start_mark.line + 1
            out[key] = walk(value_node, child, lines, dups)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [walk(item, (*loc, i), lines, dups) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def line_for(loc: Loc, lines: dict[Loc, int]) -> int | None:
    """The line of ``loc``, or of its nearest located ancestor."""
    for cut in range(len(loc), -1, -1):
        line = lines.get(loc[:cut])
        if line is not None:
            return line
    return None


def dotted(loc: Loc) -> str:
    """``("tiers", "pro", "session")`` -> ``tiers.pro.session``; indexes as ``[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_text(path: Path, *, what: str = "") -> str:
    """A UTF-8 file's text; unreadable or undecodable files are a one-line ``PolicyError``
    (``what`` names the kind of file in the message, e.g. ``"API keys file"``)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        message = f"cannot read {what}: {exc.strerror}" if what else f"cannot read: {exc.strerror}"
        raise PolicyError([PolicyProblem(str(path), None, "", message)]) from None
    except UnicodeDecodeError:
        raise PolicyError([PolicyProblem(str(path), None, "", "not UTF-8 text")]) from None
