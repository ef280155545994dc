"""Identity: verified credentials -> (tenant, agent, session) for the engine.

Step 1 of the decision (see DESIGN.md). :class:`IdentityResolver` is built from the policy's
``identity:`` section (:class:`~sluicegate.policy.identity_schema.IdentitySpec`) and turns the
headers of one request into an :class:`Identity`, or raises :class:`AuthError`.

Credentials, in order:

1. ``trust_headers: true`` only: ``X-Tenant`` + ``X-Agent`` set by a trusted front gateway.
   Without it those headers are ignored entirely: a client can never choose its tenant or agent.
2. The first configured API key header present (default ``Authorization: Bearer <key>``, then
   ``X-Api-Key: <key>``). With ``jwt:`` configured, a Bearer value with exactly two dots is a JWT
   (verified by :mod:`sluicegate.engine.jwt_keys`); anything else is an API key.

API keys are stored only as SHA-256 hex digests and looked up by hashing the presented key. The
lookup is a plain dict lookup of the digest: its timing can at most reveal something about the
*digest* of a guess, never about a stored key (finding a key from a digest prefix is a preimage
attack), so no constant-time comparison is needed. Keys are high-entropy random strings
(:func:`make_key_entry`), so an unsalted fast hash is adequate (unlike passwords).

The session id (``X-Agent-Session``) is only validated here; the engine always keys sessions as
tenant/agent/session, so one agent can never touch another agent's session by naming it.

Errors (:class:`AuthError`; ``message`` never contains the presented secret):

=====  ======================  ==========================================================
401    missing_credentials     no API key / token (or an ``Authorization`` scheme not Bearer)
401    invalid_api_key         unknown API key
401    invalid_token           malformed JWT, bad signature, disallowed ``alg`` (``none``),
                               unknown ``kid``, wrong issuer / audience, not valid yet
401    expired_token           ``exp`` passed (beyond ``leeway``)
403    missing_claim           valid JWT without the claim mapped to tenant or agent
403    invalid_claim           that claim is not a valid id (not a string, control characters,
                               longer than 128)
400    bad_session             session id longer than 128, empty after all, or not printable
400    bad_identity_headers    trusted mode: only one of X-Tenant / X-Agent, or a bad value
=====  ======================  ==========================================================
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from sluicegate.errors import PolicyError, PolicyProblem, SluicegateError
from sluicegate.policy.identity_schema import (
    ApiKeyEntry,
    IdentitySpec,
    id_problem,
    load_api_keys_file,
)

if TYPE_CHECKING:
    from sluicegate.engine.jwt_keys import JwtVerifier

#: Presented API keys / tokens longer than this are refused without hashing or parsing.
MAX_KEY_LENGTH = 512
MAX_TOKEN_LENGTH = 8192
KEY_PREFIX = "sg-"


class Identity(NamedTuple):
    """Who is calling. ``subject`` names the credential for logs and audit (``key:<name>`` or
    ``key:<first 12 hex of its hash>``, ``jwt:<sub>``, ``header``); ``init_token`` is the raw
    init-token header (verified elsewhere)."""

    tenant: str
    agent: str
    session: str | None
    subject: str
    init_token: str | None


class AuthError(SluicegateError):
    """A request could not be identified. ``status`` 401 (missing / invalid credentials), 403
    (valid credentials that cannot be mapped to an identity) or 400 (bad session or identity
    header); ``code`` is stable and machine-readable; ``message`` is safe to show the client."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @property
    def www_authenticate(self) -> str | None:
        """The ``WWW-Authenticate`` value a 401 should carry (RFC 6750), else ``None``."""
        if self.status != 401:
            return None
        if self.code in ("invalid_token", "expired_token", "invalid_api_key"):
            return 'Bearer realm="sluicegate", error="invalid_token"'
        return 'Bearer realm="sluicegate"'

    def __repr__(self) -> str:
        return f"AuthError({self.status}, {self.code!r}, {self.message!r})"


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which an API key is stored."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def make_key_entry(
    tenant: str, agent: str, *, name: str | None = None
) -> tuple[str, dict[str, str]]:
    """A new random API key (``sg-`` + 256 random bits) and its keys-file entry (hash only).

    The plain key is returned once and stored nowhere."""
    for what, value in (("tenant", tenant), ("agent", agent), ("name", name)):
        problem = None if value is None else id_problem(value)
        if problem is not None:
            raise ValueError(f"{what} {problem}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = {"sha256": hash_key(key), "tenant": tenant, "agent": agent}
    if name is not None:
        entry["name"] = name
    return key, entry


class _Key(NamedTuple):
    tenant: str
    agent: str
    subject: str


class IdentityResolver:
    """Resolves request headers (lower-case names) into an :class:`Identity`.

    Built once per policy (a reload builds a new one, re-reading the keys file and key
    material); ``base_dir`` resolves relative file paths (the policy file's folder). Any problem
    with the referenced files or secrets raises :class:`~sluicegate.errors.PolicyError`, so a
    reload can refuse it and keep the old policy. ``spec=None`` configures no credentials at
    all: every request is refused with 401. ``time_source`` (wall-clock seconds) is for JWT
    ``exp`` / ``nbf`` / ``iat`` checks."""

    def __init__(
        self,
        spec: IdentitySpec | None,
        *,
        base_dir: Path,
        time_source: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec if spec is not None else IdentitySpec()
        self._keys = self._load_keys(self.spec, base_dir)
        self._jwt: JwtVerifier | None = None
        if self.spec.jwt is not None:
            try:
                from sluicegate.engine.jwt_keys import JwtVerifier
            except ImportError:  # pragma: no cover - PyJWT is a dev dependency
                raise PolicyError(
                    [
                        PolicyProblem(
                            "<policy>",
                            None,
                            "identity.jwt",
                            "JWT support needs PyJWT: pip install 'sluicegate[jwt]'",
                        )
                    ]
                ) from None
            self._jwt = JwtVerifier(self.spec.jwt, base_dir=base_dir, time_source=time_source)
        s = self.spec
        self._key_headers = tuple(s.api_key_headers)
        self._bearer_is_jwt = self._jwt is not None
        names = set(s.api_key_headers) | {s.init_token_header, s.tenant_header, s.agent_header}
        if self._jwt is not None:
            names.add("authorization")
        self._credential_headers = frozenset(names)

    @staticmethod
    def _load_keys(spec: IdentitySpec, base_dir: Path) -> dict[str, _Key]:
        keys: dict[str, _Key] = {}

        def add(entry: ApiKeyEntry) -> None:
            subject = "key:" + (entry.name if entry.name is not None else entry.sha256[:12])
            keys[entry.sha256] = _Key(entry.tenant, entry.agent, subject)

        for entry in spec.api_keys:
            add(entry)
        if spec.api_keys_file is not None:
            path = base_dir / spec.api_keys_file
            problems = []
            for i, entry in enumerate(load_api_keys_file(path)):
                if entry.sha256 in keys:
                    problems.append(
                        PolicyProblem(
                            str(path), None, f"[{i}].sha256", "key hash also defined in api_keys"
                        )
                    )
                add(entry)
            if problems:
                raise PolicyError(problems)
        return keys

    @property
    def key_count(self) -> int:
        """How many API keys are configured (inline and from the keys file)."""
        return len(self._keys)

    def credential_headers(self) -> frozenset[str]:
        """Lower-case names of headers carrying gateway credentials or identity assertions: the
        API key headers, ``authorization`` when JWTs are on, the init-token header and the
        tenant / agent headers (trusted or not, so a forged one never reaches an upstream).
        Strip them before forwarding. The session header is *not* included."""
        return self._credential_headers

    def resolve(self, headers: Mapping[str, str]) -> Identity:
        """The caller's identity; raises :class:`AuthError` when it cannot be established."""
        s = self.spec
        tenant_agent_subject: tuple[str, str, str] | None = None
        if s.trust_headers:
            tenant_agent_subject = self._from_trusted_headers(headers)
        if tenant_agent_subject is None:
            tenant_agent_subject = self._from_credentials(headers)
        tenant, agent, subject = tenant_agent_subject
        session = headers.get(s.session_header)
        if session is not None:
            if session == "":
                session = None
            elif len(session) > 128 or not session.isprintable():
                raise AuthError(
                    400,
                    "bad_session",
                    f"the {s.session_header} header must be at most 128 printable characters",
                )
        init_token = headers.get(s.init_token_header) or None
        return Identity(tenant, agent, session, subject, init_token)

    def _from_trusted_headers(self, headers: Mapping[str, str]) -> tuple[str, str, str] | None:
        s = self.spec
        tenant = headers.get(s.tenant_header)
        agent = headers.get(s.agent_header)
        if tenant is None and agent is None:
            return None
        if tenant is None or agent is None or id_problem(tenant) or id_problem(agent):
            raise AuthError(
                400,
                "bad_identity_headers",
                f"{s.tenant_header} and {s.agent_header} must both be set to valid ids",
            )
        return tenant, agent, "header"

    def _from_credentials(self, headers: Mapping[str, str]) -> tuple[str, str, str]:
        other_scheme = False
        if self._jwt is not None and "authorization" not in self._key_headers:
            bearer, other_scheme = _bearer(headers.get("authorization"))
            if bearer is not None and bearer.count(".") == 2:
                return self._jwt_identity(bearer)
        for name in self._key_headers:
            raw = headers.get(name)
            if raw is None:
                continue
            if name == "authorization":
                value, bad_scheme = _bearer(raw)
                other_scheme = other_scheme or bad_scheme
                if value is None:
                    continue
                if self._jwt is not None and value.count(".") == 2:
                    return self._jwt_identity(value)
            else:
                value = raw.strip()
                if not value:
                    continue
            return self._api_key_identity(value)
        if other_scheme:
            raise AuthError(
                401, "missing_credentials", "the Authorization header must use the Bearer scheme"
            )
        raise AuthError(401, "missing_credentials", self._missing_message())

    def _missing_message(self) -> str:
        forms = [
            "Authorization: Bearer <key>" if h == "authorization" else f"{_title(h)}: <key>"
            for h in self._key_headers
        ]
        if self._jwt is not None and "authorization" not in self._key_headers:
            forms.insert(0, "Authorization: Bearer <jwt>")
        if not forms:
            return "no credentials are accepted by this gateway's policy"
        return "missing credentials: send " + " or ".join(forms)

    def _api_key_identity(self, key: str) -> tuple[str, str, str]:
        if len(key) > MAX_KEY_LENGTH:
            raise AuthError(401, "invalid_api_key", "invalid API key")
        found = self._keys.get(hash_key(key))
        if found is None:
            raise AuthError(401, "invalid_api_key", "invalid API key")
        return found

    def _jwt_identity(self, token: str) -> tuple[str, str, str]:
        assert self._jwt is not None
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(401, "invalid_token", "invalid token: too long")
        return self._jwt.verify(token)


def _bearer(value: str | None) -> tuple[str | None, bool]:
    """``(token, False)`` for ``Bearer <token>``; ``(None, True)`` for another scheme."""
    if value is None:
        return None, False
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None, bool(value.strip())
    token = rest.strip()
    return (token or None), False


def _title(header: str) -> str:
    return "-".join(part.capitalize() for part in header.split("-"))
