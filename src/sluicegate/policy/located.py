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


def compose(
    text: str, source: str, dups: list[tuple[Loc, int]] | None = None
) -> tuple[Any, dict[Loc, int]]:
    """Plain data and ``{location: line}`` of YAML text (``None`` data when it is empty);
    a syntax error is a ``PolicyError`` at the line where the parser gave up."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError([PolicyProblem(source, line, "", f"invalid YAML: {problem}")]) from None
    lines: dict[Loc, int] = {}
    if root is None:
        return None, lines
    return walk(root, (), lines, dups), lines


_ABSENT: Any = object()


def value_at(data: Any, loc: Loc, default: Any = None) -> Any:
    """The value at ``loc`` in plain data, ``default`` where the path does not exist."""
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
        else:
            return default
    return cur


def exists(data: Any, loc: Loc) -> bool:
    """Whether ``loc`` names a value in ``data`` (even a ``None`` one)."""
    return value_at(data, loc, _ABSENT) is not _ABSENT
