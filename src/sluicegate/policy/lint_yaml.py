"""YAML with line numbers in, YAML with comments out: the plumbing of ``lint`` and ``convert``.

:func:`load_located` composes a YAML (or JSON) document into plain data plus a map from every
key's location (a tuple of keys and indexes) to its 1-based line, the same node-walking approach
as :mod:`sluicegate.policy.loader`, but for any document (Kong, envoy, LiteLLM files too) and
without validating anything. :func:`dump_yaml` writes plain policy data back as readable YAML
(leaf mappings in flow style, like ``examples/agentic.yaml``) with ``# comments`` above keys.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from sluicegate.policy.located import Loc, dotted, line_for, walk

__all__ = ["Loc", "LocatedError", "dotted", "dump_yaml", "line_for", "load_located"]


class LocatedError(ValueError):
    """The document is not YAML; ``line`` is where the parser gave up (1-based) if known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def load_located(text: str) -> tuple[Any, dict[Loc, int]]:
    """Plain data and ``{location: line}`` of one YAML document (``None`` if it is empty)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise LocatedError(f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    lines: dict[Loc, int] = {}
    if root is None:
        return None, lines
    return walk(root, (), lines), lines


_PLAIN_UNSAFE = set(":#{}[],&*!|>'\"%@`")


def scalar(value: Any) -> str:
    """One YAML scalar: plain when it reads back as the same string, JSON-quoted otherwise."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    text = str(value)
    if (
        text
        and text == text.strip()
        and not (_PLAIN_UNSAFE & set(text))
        and not text.startswith(("-", "?"))
    ):
        try:
            if yaml.safe_load(text) == text:
                return text
        except yaml.YAMLError:
            pass
    return json.dumps(text)


def _is_leaf_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        not isinstance(v, dict | list) or (isinstance(v, dict | list) and not v)
        for v in value.values()
    )


def _flow(value: dict[Any, Any]) -> str:
    parts = []
    for k, v in value.items():
        text = "{}" if v == {} else "[]" if v == [] else scalar(v)
        parts.append(f"{scalar(k)}: {text}")
    return "{" + ", ".join(parts) + "}"


def dump_yaml(
    data: dict[str, Any],
    comments: dict[Loc, list[str]] | None = None,
    header: list[str] | None = None,
) -> str:
    """Readable YAML for plain policy data; ``comments[loc]`` lines go above that key."""
    notes = comments or {}
    out = [f"# {line}" if line else "#" for line in header or []]

    def has_notes_under(loc: Loc) -> bool:
        return any(k[: len(loc)] == loc and len(k) > len(loc) for k in notes)

    def put_notes(loc: Loc, pad: str) -> None:
        for note in notes.get(loc, []):
            out.append(f"{pad}# {note}")

    def emit(value: Any, loc: Loc, indent: int) -> None:
        pad = " " * indent
        if isinstance(value, dict):
            for key, item in value.items():
                child = (*loc, key)
                put_notes(child, pad)
                head = f"{pad}{scalar(key)}:"
                if isinstance(item, dict) and item:
                    if _is_leaf_map(item) and not has_notes_under(child) and len(_flow(item)) < 80:
                        out.append(f"{head} {_flow(item)}")
                    else:
                        out.append(head)
                        emit(item, child, indent + 2)
                elif isinstance(item, list) and item:
                    out.append(head)
                    emit(item, child, indent + 2)
                else:
                    text = "{}" if item == {} else "[]" if item == [] else scalar(item)
                    out.append(f"{head} {text}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                child = (*loc, i)
                put_notes(child, pad)
                if isinstance(item, dict) and item and _is_leaf_map(item):
                    out.append(f"{pad}- {_flow(item)}")
                elif isinstance(item, dict | list) and item:
                    text = yaml.safe_dump(item, sort_keys=False, default_flow_style=False)
                    first, *rest = text.rstrip("\n").split("\n")
                    out.append(f"{pad}- {first}")
                    out.extend(f"{pad}  {line}" for line in rest)
                else:
                    out.append(f"{pad}- {scalar(item)}")

    emit(data, (), 0)
    return "\n".join(out) + "\n"
