"""YAML text -> validated :class:`PolicySpec`, with every error located as ``file:line: path``.

The YAML is composed into nodes first so each key's line is known; pydantic's errors (and the
cross-reference checks pydantic cannot express) are then mapped back to the nearest located key.
All problems are collected and raised together in one :class:`~sluicegate.errors.PolicyError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sluicegate.errors import PolicyError, PolicyProblem
from sluicegate.policy.located import Loc, compose, dotted, line_for, read_text
from sluicegate.policy.resolve import merge_problems
from sluicegate.policy.schema import (
    AXES,
    AXIS_BURST_KEYS,
    BUILTIN_CLASSES,
    PLANES,
    ClassesSpec,
    PolicySpec,
)


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` (for 'allowed keys' hints)."""
    from sluicegate.policy.schema import ClassSpec

    model: Any = PolicySpec
    for part in loc:
        if isinstance(model, tuple):  # a dict[str, X] or list[X]: this part is a key or index
            model = model[1]
        elif model is ClassesSpec and part not in ClassesSpec.model_fields:
            model = ClassSpec
        elif isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return None
            model = _unwrap(field.annotation)
        else:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip Optional / Annotated; dict[str, X] and list[X] become a ('container', X) marker."""
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if origin is dict:
        return ("container", _unwrap(typing.get_args(annotation)[1]))
    if origin is list:
        return ("container", _unwrap(typing.get_args(annotation)[0]))
    return annotation


def _clean_loc(loc: Loc, data: Any) -> Loc:
    """Drop pydantic's internal loc parts (validator and union tags) that are not data keys."""
    out: list[str | int] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif isinstance(part, str) and (
            part.startswith("function-") or "[" in part or (cur is not None and part == "rate")
        ):
            continue  # validator tags, and the 'rate' of the 'requests: 600/min' shorthand
        else:
            out.append(part)
            cur = None
    return tuple(out)


def _message(err: Any, loc: Loc) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(sorted(model.model_fields)) if model else ""
        return f"unknown key {loc[-1]!r}" + (f" (allowed: {allowed})" if allowed else "")
    if kind == "missing":
        return f"missing required key {loc[-1]!r}" if loc else "missing required key"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    text = msg.replace("Input should be", "must be")
    if "input" in err and not isinstance(err["input"], dict | list):
        text += f", got {err['input']!r}"
    return text


def _expand_env(data: Any, loc: Loc, problems: list[tuple[Loc, str]]) -> Any:
    """Substitute ``${VAR}`` in string values from the environment (unset: an error)."""
    if isinstance(data, dict):
        return {k: _expand_env(v, (*loc, k), problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_env(v, (*loc, i), problems) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:
        import re

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(3)
            value = os.environ.get(name)
            if value is None:
                if default is not None:
                    return default
                problems.append((loc, f"environment variable {name} is not set"))
                return ""
            return value

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, data)
    return data


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _semantic(data: dict[str, Any]) -> Iterator[tuple[Loc, str]]:
    """Cross-reference checks pydantic cannot express, run on the raw data so that they are
    reported together with shape errors (each check skips values of the wrong shape)."""
    store = data.get("store")
    if isinstance(store, str) and store:
        from sluicegate.errors import ConfigurationError
        from sluicegate.stores.url import parse_store_url

        try:
            parse_store_url(store)
        except ConfigurationError as exc:
            yield ("store",), str(exc)
    tiers = _mapping(data.get("tiers"))
    tier_list = ", ".join(sorted(tiers)) or "none"
    default_tier = data.get("default_tier")
    if isinstance(default_tier, str) and default_tier not in tiers:
        yield ("default_tier",), f"unknown tier {default_tier!r} (tiers: {tier_list})"
    tenants = _mapping(data.get("tenants"))
    for name, tenant in tenants.items():
        tier = tenant.get("tier") if isinstance(tenant, dict) else None
        if isinstance(tier, str) and tier not in tiers:
            yield ("tenants", name, "tier"), f"unknown tier {tier!r} (tiers: {tier_list})"
    for name, tier in tiers.items():
        if isinstance(tier, dict) and not any(tier.get(p) for p in PLANES):
            yield ("tiers", name), "a tier must limit at least one plane (tenant, agent or session)"
    classes = _mapping(data.get("classes"))
    declared = {k for k in classes if k not in ClassesSpec.model_fields} | set(BUILTIN_CLASSES)
    default_class = classes.get("default", "interactive")
    if isinstance(default_class, str) and default_class not in declared:
        yield (
            ("classes", "default"),
            (f"unknown class {default_class!r} (classes: {', '.join(sorted(declared))})"),
        )
    groups: list[tuple[str, dict[str, Any], bool]] = [
        ("tiers", tiers, True),  # tenants' planes are overrides merged onto a tier: not checked
        ("pools", _mapping(data.get("pools")), False),
    ]
    for group, entries, has_planes in groups:
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            planes = [(p, entry.get(p)) for p in PLANES] if has_planes else [(None, entry)]
            for plane, limits in planes:
                if not isinstance(limits, dict):
                    continue
                base: Loc = (group, name, plane) if plane else (group, name)
                for axis, burst_key in AXIS_BURST_KEYS:
                    if limits.get(burst_key) is not None and limits.get(axis) is None:
                        yield (*base, burst_key), f"{burst_key} is set but there is no {axis} rate"
                if not has_planes and not any(limits.get(a) for a in AXES):
                    yield base, "a pool must limit requests, tokens or cost"


def load_policy_text(text: str, source: str = "<policy>") -> PolicySpec:
    """Parse and validate policy YAML; raises :class:`PolicyError` listing every problem."""
    dups: list[tuple[Loc, int]] = []
    data, lines = compose(text, source, dups)
    if not lines:  # no document at all (a document that is just `null` is "not a mapping")
        raise PolicyError([PolicyProblem(source, None, "", "the policy file is empty")])
    problems = [PolicyProblem(source, line, dotted(loc), "duplicate key") for loc, line in dups]
    if not isinstance(data, dict):
        raise PolicyError([PolicyProblem(source, 1, "", "a policy must be a mapping of keys")])
    env_problems: list[tuple[Loc, str]] = []
    data = _expand_env(data, (), env_problems)
    problems += [
        PolicyProblem(source, line_for(loc, lines), dotted(loc), m) for loc, m in env_problems
    ]
    spec: PolicySpec | None = None
    try:
        spec = PolicySpec.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = _clean_loc(tuple(err["loc"]), data)
            line = line_for(loc, lines)
            problems.append(PolicyProblem(source, line, dotted(loc), _message(err, loc)))
    for loc, msg in _semantic(data):
        problems.append(PolicyProblem(source, line_for(loc, lines), dotted(loc), msg))
    if spec is not None:
        for loc, msg in merge_problems(spec):
            problems.append(PolicyProblem(source, line_for(loc, lines), dotted(loc), msg))
    if problems or spec is None:
        raise PolicyError(_sorted(problems))
    return spec


def _sorted(problems: list[PolicyProblem]) -> list[PolicyProblem]:
    return sorted(problems, key=lambda p: (p.line if p.line is not None else 0, p.path))


def load_policy_file(path: str | os.PathLike[str]) -> PolicySpec:
    """Read and validate a policy file; unreadable files are a :class:`PolicyError` too."""
    p = Path(path)
    text = read_text(p)
    return load_policy_text(text, str(p))
