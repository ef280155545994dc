"""Policy sections that only the reverse proxy reads: ``routes:``, ``upstreams:``, ``gateway:``.

Why a separate module: the engine never looks at these, and keeping them out of
:mod:`sluicegate.policy.schema` keeps the core schema about limits only. The models are strict
(``extra="forbid"``) like every other policy model, so a typo such as ``path_prefx`` is an error.
Header values and URLs may use ``${ENV}`` (expanded by the loader), which is how upstream
secrets stay out of the policy file.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from sluicegate.policy.units import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteSpec(_Strict):
    """Requests whose path starts with ``path_prefix`` go to ``upstream``.

    ``pool`` names the shared upstream pool they are charged to; ``dialect`` chooses how bodies
    are estimated and how errors are rendered; ``llm: false`` turns token estimation off (a
    tool API: requests axis only, body passed through unparsed); ``strip_prefix`` removes the
    prefix before forwarding (``/openai/v1/...`` -> ``/v1/...``).
    """

    path_prefix: str = Field(pattern=r"^/")
    upstream: str
    pool: str | None = None
    dialect: Literal["openai", "anthropic"] = "openai"
    default_output_tokens: Annotated[int, Field(ge=0)] = 1024
    llm: bool = True
    strip_prefix: bool = False


class UpstreamSpec(_Strict):
    """One upstream server. ``headers`` are added to every forwarded request (and replace any
    header of the same name the client sent), e.g. ``Authorization: "Bearer ${OPENAI_API_KEY}"``.
    """

    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout: Duration = 5.0
    read_timeout: Duration = 600.0
    max_connections: Annotated[int, Field(gt=0)] = 256
    transport: Literal["fast", "httpx"] = "fast"

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"upstream url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if any(c in name or c in text for c in "\r\n\0"):
                raise ValueError(f"header {name!r} contains CR, LF or NUL")
        return value


class GatewaySettings(_Strict):
    """Server settings. ``admin_token_env`` names the environment variable holding the admin
    bearer token; when it is unset (or the variable is empty) the admin API answers only
    ``/healthz`` and ``/readyz`` and refuses everything else with 403."""

    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:8081"
    max_body_bytes: Annotated[int, Field(gt=0)] = 4 * 1024 * 1024
    admin_token_env: str | None = "SLUICEGATE_ADMIN_TOKEN"
    log_json: bool = False
    access_log: bool = True
    trust_forwarded: bool = False
