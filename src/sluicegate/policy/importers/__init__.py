"""Importers: Kong declarative config, envoyproxy/ratelimit descriptors, LiteLLM proxy config.

Each importer reads the file with line numbers and maps it to a sluicegate policy document (plain
data) plus a map from every location of that document to the line of the original file it came
from, so ``sluicegate lint --from kong FILE`` names lines of ``FILE``. ``sluicegate convert``
renders the same document, with the linter's fixes applied, as sluicegate policy YAML. What
each format's limits become (planes, windows) and what is lost is documented in each module and
in ``docs/lint.md``; every loss is also written as a note at the top of the converted policy.
"""

from __future__ import annotations

from pathlib import Path

from sluicegate.errors import PolicyError, PolicyProblem
from sluicegate.policy.importers._build import Imported
from sluicegate.policy.lint_yaml import LocatedError, load_located

KINDS = ("sluicegate", "kong", "envoy", "litellm")


def detect(data: object) -> str | None:
    """The format a parsed document looks like (``None`` if unknown)."""
    if not isinstance(data, dict):
        return None
    if "_format_version" in data or "services" in data or "consumers" in data:
        return "kong"
    if "domain" in data and "descriptors" in data:
        return "envoy"
    if "model_list" in data or "litellm_settings" in data or "router_settings" in data:
        return "litellm"
    if "tiers" in data or "version" in data:
        return "sluicegate"
    return None


def import_text(kind: str, text: str, source: str = "<config>") -> Imported:
    """Map a config of ``kind`` to a sluicegate policy document. Raises :class:`PolicyError`
    (with the original file's lines) when the file is not a config of that kind."""
    if kind == "sluicegate":
        return Imported.native(text, source)
    try:
        data, lines = load_located(text)
    except LocatedError as exc:
        raise PolicyError([PolicyProblem(source, exc.line, "", str(exc))]) from None
    if not isinstance(data, dict):
        raise PolicyError([PolicyProblem(source, 1, "", f"not a {kind} config (not a mapping)")])
    if kind == "kong":
        from sluicegate.policy.importers.kong import import_kong

        return import_kong(data, lines, source)
    if kind == "envoy":
        from sluicegate.policy.importers.envoy import import_envoy

        return import_envoy(data, lines, source)
    if kind == "litellm":
        from sluicegate.policy.importers.litellm import import_litellm

        return import_litellm(data, lines, source)
    raise ValueError(f"unknown config format {kind!r} (known: {', '.join(KINDS)})")


def import_file(kind: str, path: str | Path) -> Imported:
    """:func:`import_text` on a file (unreadable files are a :class:`PolicyError` too)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        problem = PolicyProblem(str(p), None, "", f"cannot read: {exc.strerror}")
        raise PolicyError([problem]) from None
    except UnicodeDecodeError:
        raise PolicyError([PolicyProblem(str(p), None, "", "not UTF-8 text")]) from None
    if kind == "sluicegate":
        try:
            data, _ = load_located(text)
        except LocatedError:
            data = None
        other = detect(data)
        if other not in (None, "sluicegate"):
            raise PolicyError(
                [
                    PolicyProblem(
                        str(p), 1, "", f"this looks like a {other} config: use --from {other}"
                    )
                ]
            )
    return import_text(kind, text, str(p))


__all__ = ["KINDS", "Imported", "detect", "import_file", "import_text"]
