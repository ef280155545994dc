"""JWT verification for :mod:`sluicegate.engine.identity` (needs ``PyJWT[crypto]``).

Key material is loaded once, when the resolver is built, and each key is bound to exactly one
algorithm: the ``secret_env`` secret to HS256, RSA public keys (PEM file or JWKS) to RS256. A
token's ``alg`` header only selects *which configured key* to try, and PyJWT is then told to
accept only that key's algorithm, so:

* ``alg: none`` (or any algorithm not configured) is refused before any verification;
* algorithm confusion (an HS256 token "signed" with the RSA public key as HMAC secret) fails: an
  HS256 token is only ever checked against the HS256 secret, and with RS256 alone configured it
  is refused outright (PyJWT would also refuse a PEM key as an HMAC secret).

Time claims are checked here against the injected ``time_source`` (``exp`` required, ``nbf``
and ``iat`` when present, all with ``leeway``); ``iss`` and ``aud`` by PyJWT (a token carrying an
``aud`` is refused when no ``audience`` is configured, as RFC 7519 asks). Verified signatures are
cached per token (bounded), the time claims are re-checked on every request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import RSAAlgorithm

from sluicegate.engine.identity import AuthError
from sluicegate.errors import PolicyError, PolicyProblem
from sluicegate.policy.identity_schema import JwtSpec, id_problem

if TYPE_CHECKING:
    from jwt.types import Options

#: Shortest HS256 secret accepted (RFC 7518 section 3.2: at least the hash size, 256 bits).
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
_CACHE_MAX = 4096
_MISSING = object()


class _Verified(NamedTuple):
    tenant: str
    agent: str
    subject: str
    exp: float
    nbf: float | None
    iat: float | None


def _problem(source: str, path: str, message: str) -> PolicyError:
    return PolicyError([PolicyProblem(source, None, path, message)])


def _check_rsa(key: object, source: str, path: str) -> RSAPublicKey:
    if not isinstance(key, RSAPublicKey):
        raise _problem(source, path, "not an RSA public key (RS256 needs one)")
    if key.key_size < MIN_RSA_BITS:
        raise _problem(source, path, f"RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})")
    return key


def load_pem_key(path: Path) -> RSAPublicKey:
    """An RSA public key from a PEM file holding a public key or an X.509 certificate."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _problem(str(path), "", f"cannot read public key file: {exc.strerror}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError:
        raise _problem(str(path), "", "not a PEM public key or certificate") from None
    return _check_rsa(key, str(path), "")


def load_jwks(path: Path) -> dict[str | None, RSAPublicKey]:
    """RS256-capable keys of a JWKS file by ``kid`` (keys of other types or uses are skipped)."""
    source = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _problem(source, "", f"cannot read JWKS file: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _problem(source, "", f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise _problem(source, "", 'a JWKS file must be an object with a "keys" list')
    out: dict[str | None, RSAPublicKey] = {}
    for i, jwk in enumerate(doc["keys"]):
        where = f"keys[{i}]"
        if not isinstance(jwk, dict):
            raise _problem(source, where, "must be an object")
        if jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("alg", "RS256") != "RS256":
            continue
        if "d" in jwk:
            raise _problem(source, where, "is a private key: publish only public keys")
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _problem(source, where, "kid must be a string")
        if kid in out:
            raise _problem(source, where, f"duplicate kid {kid!r}")
        try:
            key = RSAAlgorithm.from_jwk(jwk)
        except (jwt.InvalidKeyError, ValueError, KeyError, TypeError) as exc:
            raise _problem(source, where, f"invalid RSA key: {exc}") from None
        out[kid] = _check_rsa(key, source, where)
    if not out:
        raise _problem(source, "", "no RS256 signing key (kty RSA) in the JWKS")
    if None in out and len(out) > 1:
        raise _problem(source, "", "every key needs a kid when the JWKS holds more than one")
    return out


def claim(claims: dict[str, Any], path: str) -> object:
    """A claim by name, or by dotted path into nested objects (the literal name wins)."""
    if path in claims:
        return claims[path]
    cur: object = claims
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class JwtVerifier:
    """Verifies bearer JWTs per a :class:`JwtSpec`; ``verify`` returns (tenant, agent, subject)
    or raises :class:`AuthError`."""

    def __init__(self, spec: JwtSpec, *, base_dir: Path, time_source: Callable[[], float]) -> None:
        self.spec = spec
        self._now = time_source
        self._algorithms = spec.allowed
        self._secret: bytes | None = None
        if spec.secret_env is not None:
            value = os.environ.get(spec.secret_env)
            if value is None:
                raise _problem(
                    "<policy>",
                    "identity.jwt.secret_env",
                    f"environment variable {spec.secret_env} is not set",
                )
            secret = value.encode("utf-8")
            if len(secret) < MIN_SECRET_BYTES:
                raise _problem(
                    "<policy>",
                    "identity.jwt.secret_env",
                    f"the HS256 secret in {spec.secret_env} must be at least "
                    f"{MIN_SECRET_BYTES} bytes",
                )
            self._secret = secret
        self._pem = (
            None if spec.public_key_file is None else load_pem_key(base_dir / spec.public_key_file)
        )
        self._jwks = {} if spec.jwks_file is None else load_jwks(base_dir / spec.jwks_file)
        self._audience = spec.audience
        self._options: Options = {
            "verify_signature": True,
            "verify_exp": False,  # time claims: checked below against the injected clock
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": True,
            "verify_iss": spec.issuer is not None,
            "require": [c for c, on in (("iss", spec.issuer), ("aud", spec.audience)) if on],
        }
        self._cache: dict[str, _Verified] = {}

    def _key_for(self, header: dict[str, Any]) -> tuple[str, bytes | RSAPublicKey]:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError(401, "invalid_token", "invalid token: algorithm not allowed")
        if alg == "HS256":
            assert self._secret is not None
            return alg, self._secret
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError(401, "invalid_token", "invalid token: bad key id")
        if kid is not None and kid in self._jwks:
            return alg, self._jwks[kid]
        if self._pem is not None:
            return alg, self._pem
        if kid is None and len(self._jwks) == 1:
            return alg, next(iter(self._jwks.values()))
        raise AuthError(401, "invalid_token", "invalid token: unknown key id")

    def verify(self, token: str) -> tuple[str, str, str]:
        found = self._cache.get(token)
        if found is None:
            found = self._verify_signature_and_claims(token)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.pop(next(iter(self._cache)))
            self._cache[token] = found
        self._check_times(found)
        return found.tenant, found.agent, found.subject

    def _check_times(self, v: _Verified) -> None:
        now = self._now()
        leeway = self.spec.leeway
        if v.exp <= now - leeway:
            raise AuthError(401, "expired_token", "the token has expired")
        if v.nbf is not None and v.nbf > now + leeway:
            raise AuthError(401, "invalid_token", "invalid token: not valid yet (nbf)")
        if v.iat is not None and v.iat > now + leeway:
            raise AuthError(401, "invalid_token", "invalid token: issued in the future (iat)")

    def _verify_signature_and_claims(self, token: str) -> _Verified:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError(401, "invalid_token", "invalid token: malformed") from None
        alg, key = self._key_for(header)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                options=self._options,
                audience=self._audience,
                issuer=self.spec.issuer,
            )
        except jwt.InvalidSignatureError:
            raise AuthError(401, "invalid_token", "invalid token: bad signature") from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, "invalid_token", "invalid token: wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise AuthError(401, "invalid_token", "invalid token: wrong audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(
                401, "invalid_token", f"invalid token: missing claim {exc.claim!r}"
            ) from None
        except jwt.InvalidTokenError:  # includes DecodeError and InvalidAlgorithmError
            raise AuthError(401, "invalid_token", "invalid token") from None
        exp = _number(claims.get("exp"))
        if exp is None:
            raise AuthError(401, "invalid_token", "invalid token: exp (a number) is required")
        times: list[float | None] = []
        for name in ("nbf", "iat"):
            raw = claims.get(name)
            value = None if raw is None else _number(raw)
            if raw is not None and value is None:
                raise AuthError(401, "invalid_token", f"invalid token: {name} must be a number")
            times.append(value)
        mapping = self.spec.claims
        tenant = self._mapped(claims, mapping.tenant, "tenant")
        agent = self._mapped(claims, mapping.agent, "agent")
        sub = claims.get("sub")
        subject = f"jwt:{sub}" if isinstance(sub, str) and id_problem(sub) is None else "jwt"
        return _Verified(tenant, agent, subject, exp, times[0], times[1])

    @staticmethod
    def _mapped(claims: dict[str, Any], path: str, role: str) -> str:
        value = claim(claims, path)
        if value is _MISSING or value is None:
            raise AuthError(403, "missing_claim", f"the token has no {path!r} claim ({role})")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or id_problem(value) is not None:
            raise AuthError(
                403, "invalid_claim", f"the token's {path!r} claim ({role}) is not a valid id"
            )
        return value
