"""The ``identity:`` section of a policy, and the API keys file it may point to.

Models here only check shape and values (strict, unknown keys rejected, like
:mod:`sluicegate.policy.schema`); reading key material (keys file, PEM, JWKS, secrets from the
environment) happens when :class:`sluicegate.engine.identity.IdentityResolver` is built, so a
policy reload re-reads it and a broken file is refused like a broken policy.

This module imports nothing from :mod:`sluicegate.policy.schema`, so ``schema.py`` can import
:class:`IdentitySpec` without an import cycle.

API keys are stored only as SHA-256 hex digests::

    identity:
      api_keys:
        - {sha256: 9f86d08..., tenant: acme, agent: planner, name: ci-bot}
      api_keys_file: keys.yaml      # a YAML list of the same entries, relative to the policy
      api_key_headers: [Authorization, X-Api-Key]
      jwt:
        public_key_file: idp.pem    # RS256; or jwks_file: jwks.json; or secret_env: JWT_SECRET
        issuer: https://idp.example
        audience: sluicegate
        claims: {tenant: org.id, agent: sub}
      session_header: X-Agent-Session
      init_token_header: X-Agent-Init-Token
      trust_headers: false          # true: X-Tenant / X-Agent from a trusted front gateway
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from sluicegate.errors import PolicyError, PolicyProblem
from sluicegate.policy.located import compose, dotted, line_for, read_text
from sluicegate.policy.units import parse_duration

#: Longest tenant, agent or session id accepted (the engine hashes longer key parts anyway).
MAX_ID_LENGTH = 128
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Algorithm = Literal["HS256", "RS256"]
Duration = Annotated[float, BeforeValidator(parse_duration)]


def id_problem(value: object) -> str | None:
    """Why ``value`` is not an acceptable tenant / agent / session id, or ``None`` if it is.

    Accepted: a non-empty string of at most 128 printable characters without surrounding
    whitespace (so no CR, LF or other control characters can reach keys, logs or headers)."""
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters"
    if not value.isprintable():
        return "must contain only printable characters (no control characters)"
    if value != value.strip():
        return "must not start or end with whitespace"
    return None


def _check_id(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"invalid header name {value!r}")
    return value.lower()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ApiKeyEntry(_Strict):
    """One API key: the SHA-256 hex digest of the key (never the key), and who it belongs to."""

    sha256: str
    tenant: str
    agent: str
    name: str | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        lower = value.lower()
        if not _HEX64.fullmatch(lower):
            raise ValueError("must be the 64 hex digits of the key's SHA-256 digest")
        return lower

    @field_validator("tenant", "agent", "name")
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        return None if value is None else _check_id(value)


class ClaimMapping(_Strict):
    """Which JWT claim carries the tenant and the agent. Dotted paths reach nested claims
    (``org.id`` is ``{"org": {"id": ...}}``); a claim whose own name contains dots (e.g. a
    namespaced ``https://acme.example/tenant``) is matched literally first."""

    tenant: str = "tenant"
    agent: str = "sub"

    @field_validator("tenant", "agent")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value or value.startswith(".") or value.endswith(".") or ".." in value:
            raise ValueError(f"invalid claim path {value!r}")
        return value


class JwtSpec(_Strict):
    """JWT bearer tokens. Each key source is bound to one algorithm: ``secret_env`` to HS256,
    ``public_key_file`` / ``jwks_file`` to RS256, so a token can never pick which kind of key
    verifies it (no algorithm confusion). ``algorithms`` defaults to those of the sources."""

    algorithms: list[Algorithm] | None = None
    secret_env: str | None = None
    public_key_file: str | None = None
    jwks_file: str | None = None
    issuer: str | None = None
    audience: str | list[str] | None = None
    leeway: Duration = 30.0
    claims: ClaimMapping = Field(default_factory=ClaimMapping)

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"invalid environment variable name {value!r}")
        return value

    @field_validator("leeway")
    @classmethod
    def _leeway(cls, value: float) -> float:
        if value > 600:
            raise ValueError("leeway must be at most 10min")
        return value

    @model_validator(mode="after")
    def _sources(self) -> JwtSpec:
        has_hs = self.secret_env is not None
        has_rs = self.public_key_file is not None or self.jwks_file is not None
        if not has_hs and not has_rs:
            raise ValueError("jwt needs a key: secret_env, public_key_file or jwks_file")
        if self.algorithms is None:
            algs: list[Algorithm] = []
            if has_hs:
                algs.append("HS256")
            if has_rs:
                algs.append("RS256")
            object.__setattr__(self, "algorithms", algs)
            return self
        if not self.algorithms:
            raise ValueError("algorithms must not be empty")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError("algorithms lists an algorithm twice")
        if ("HS256" in self.algorithms) != has_hs:
            raise ValueError(
                "HS256 needs secret_env"
                if has_hs is False
                else "secret_env is set but HS256 is not in algorithms"
            )
        if ("RS256" in self.algorithms) != has_rs:
            raise ValueError(
                "RS256 needs public_key_file or jwks_file"
                if has_rs is False
                else "public_key_file / jwks_file is set but RS256 is not in algorithms"
            )
        return self

    @property
    def allowed(self) -> tuple[Algorithm, ...]:
        return tuple(self.algorithms or ())


class IdentitySpec(_Strict):
    """How callers are identified (the policy key ``identity:``)."""

    api_keys: list[ApiKeyEntry] = Field(default_factory=list)
    api_keys_file: str | None = None
    api_key_headers: list[str] = Field(default_factory=lambda: ["authorization", "x-api-key"])
    jwt: JwtSpec | None = None
    session_header: str = "x-agent-session"
    init_token_header: str = "x-agent-init-token"
    #: A real boolean only (never a string): trusting identity headers is a security decision.
    trust_headers: Annotated[bool, Field(strict=True)] = False
    tenant_header: str = "x-tenant"
    agent_header: str = "x-agent"

    @field_validator("api_key_headers")
    @classmethod
    def _key_headers(cls, value: list[str]) -> list[str]:
        names = [_header_name(v) for v in value]
        if len(set(names)) != len(names):
            raise ValueError("a header is listed twice")
        return names

    @field_validator("session_header", "init_token_header", "tenant_header", "agent_header")
    @classmethod
    def _one_header(cls, value: str) -> str:
        return _header_name(value)

    @field_validator("api_keys")
    @classmethod
    def _unique(cls, value: list[ApiKeyEntry]) -> list[ApiKeyEntry]:
        seen: dict[str, int] = {}
        for i, entry in enumerate(value):
            if entry.sha256 in seen:
                first = seen[entry.sha256]
                raise ValueError(f"api_keys[{i}] repeats the key hash of api_keys[{first}]")
            seen[entry.sha256] = i
        return value

    @model_validator(mode="after")
    def _distinct_headers(self) -> IdentitySpec:
        roles = {
            "session_header": self.session_header,
            "init_token_header": self.init_token_header,
            "tenant_header": self.tenant_header,
            "agent_header": self.agent_header,
        }
        taken = set(self.api_key_headers) | {"authorization"}
        seen: dict[str, str] = {}
        for role, name in roles.items():
            if name in taken:
                raise ValueError(f"{role} {name!r} is also a credential header")
            if name in seen:
                raise ValueError(f"{role} and {seen[name]} are the same header {name!r}")
            seen[name] = role
        return self


# --- the API keys file -------------------------------------------------------------------------

_ENTRIES: TypeAdapter[list[ApiKeyEntry]] = TypeAdapter(list[ApiKeyEntry])


def _error_text(err: Any) -> str:
    kind, msg = err["type"], str(err["msg"])
    if kind == "extra_forbidden":
        return f"unknown key {err['loc'][-1]!r} (allowed: {', '.join(ApiKeyEntry.model_fields)})"
    if kind == "missing":
        return f"missing required key {err['loc'][-1]!r}"
    return msg.removeprefix("Value error, ").replace("Input should be", "must be")


def parse_api_keys_text(text: str, source: str) -> list[ApiKeyEntry]:
    """Validate the text of an API keys file: a YAML list of ``{sha256, tenant, agent, name?}``
    (an empty file is an empty list). Raises :class:`PolicyError` with ``file:line`` problems."""
    data, lines = compose(text, source)
    if not lines:
        return []
    if not isinstance(data, list):
        raise PolicyError(
            [PolicyProblem(source, 1, "", "an API keys file must be a YAML list of entries")]
        )
    problems: list[PolicyProblem] = []
    try:
        entries = _ENTRIES.validate_python(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            problems.append(
                PolicyProblem(source, line_for(loc, lines), dotted(loc), _error_text(err))
            )
        raise PolicyError(problems) from None
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.sha256 in seen:
            line, where = line_for((i, "sha256"), lines), dotted((i, "sha256"))
            first = lines.get((seen[entry.sha256],))
            problems.append(
                PolicyProblem(source, line, where, f"duplicate key hash (first at line {first})")
            )
        seen.setdefault(entry.sha256, i)
    if problems:
        raise PolicyError(problems)
    return entries


def load_api_keys_file(path: Path) -> list[ApiKeyEntry]:
    """Read and validate an API keys file (unreadable: a :class:`PolicyError` too)."""
    text = read_text(path, what="API keys file")
    return parse_api_keys_text(text, str(path))
