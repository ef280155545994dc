"""Identity from JWT bearer tokens: HS256, RS256 (PEM and JWKS), claim checks, attacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from sluicegate.engine.identity import AuthError, IdentityResolver, hash_key
from sluicegate.errors import PolicyError
from sluicegate.policy.identity_schema import IdentitySpec

NOW = 1_800_000_000.0
SECRET = "test-only-hs256-secret-0123456789abcdef"
API_KEY = "sg-api-key-next-to-jwt-000000000000000"


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(key: rsa.RSAPrivateKey, kid: str | None) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    out.update({"use": "sig", "alg": "RS256"})
    if kid is not None:
        out["kid"] = kid
    return out


@pytest.fixture
def key_dir(tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> Path:
    k1, k2 = rsa_keys
    (tmp_path / "idp.pem").write_bytes(pem(k1))
    jwks = {"keys": [jwk(k1, "one"), jwk(k2, "two"), {"kty": "EC", "kid": "ec", "crv": "P-256"}]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    return tmp_path


def claims(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"tenant": "acme", "sub": "planner", "exp": NOW + 600, "iat": NOW}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def make(base_dir: Path, clock: list[float] | None = None, **jwt_spec: Any) -> IdentityResolver:
    spec = IdentitySpec.model_validate(
        {"api_keys": [{"sha256": hash_key(API_KEY), "tenant": "k", "agent": "k"}], "jwt": jwt_spec}
    )
    now = clock or [NOW]
    return IdentityResolver(spec, base_dir=base_dir, time_source=lambda: now[0])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def refused(r: IdentityResolver, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        r.resolve(bearer(token))
    err = info.value
    for part in token.split("."):
        if len(part) >= 8:  # the secret-bearing parts never show in what a client sees
            assert part[:8] not in err.message and part[:8] not in repr(err)
    return err


@pytest.fixture
def hs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> IdentityResolver:
    monkeypatch.setenv("SG_TEST_JWT_SECRET", SECRET)
    return make(tmp_path, secret_env="SG_TEST_JWT_SECRET", issuer="https://idp", audience="sg")


def hs_token(**kw: Any) -> str:
    return jwt.encode(claims(iss="https://idp", aud="sg", **kw), SECRET, algorithm="HS256")


def test_hs256(hs: IdentityResolver) -> None:
    ident = hs.resolve({**bearer(hs_token()), "x-agent-session": "s1"})
    assert ident[:4] == ("acme", "planner", "s1", "jwt:planner")
    assert hs.resolve({"x-api-key": API_KEY}).tenant == "k"  # API keys still work alongside
    assert "authorization" in hs.credential_headers()


def test_hs256_bad_signature(hs: IdentityResolver) -> None:
    forged = jwt.encode(claims(iss="https://idp", aud="sg"), SECRET + "x", algorithm="HS256")
    err = refused(hs, forged)
    assert (err.status, err.code, err.message) == (
        401,
        "invalid_token",
        "invalid token: bad signature",
    )
    assert err.www_authenticate == 'Bearer realm="sluicegate", error="invalid_token"'


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"iss": "https://evil"}, "invalid token: wrong issuer"),
        ({"aud": "other"}, "invalid token: wrong audience"),
        ({"iss": None}, "invalid token: missing claim 'iss'"),
        ({"aud": None}, "invalid token: missing claim 'aud'"),
        ({"exp": None}, "invalid token: exp (a number) is required"),
        ({"exp": "soon"}, "invalid token: exp (a number) is required"),
        ({"nbf": NOW + 120}, "invalid token: not valid yet (nbf)"),
        ({"iat": NOW + 120}, "invalid token: issued in the future (iat)"),
        ({"iat": "yesterday"}, "invalid token: iat must be a number"),
    ],
)
def test_hs256_claim_checks(hs: IdentityResolver, kw: dict[str, Any], message: str) -> None:
    base = claims(iss="https://idp", aud="sg")
    base.update(kw)
    token = jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, algorithm="HS256")
    err = refused(hs, token)
    assert (err.status, err.code, err.message) == (401, "invalid_token", message)


def test_expiry_with_leeway(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SG_TEST_JWT_SECRET", SECRET)
    clock = [NOW]
    r = make(tmp_path, clock, secret_env="SG_TEST_JWT_SECRET", leeway="30s")
    token = jwt.encode(claims(exp=NOW), SECRET, algorithm="HS256")
    assert r.resolve(bearer(token)).tenant == "acme"  # at exp, within leeway
    clock[0] = NOW + 29.5
    assert r.resolve(bearer(token)).tenant == "acme"  # cached signature, time re-checked
    clock[0] = NOW + 30
    err = refused(r, token)
    assert (err.status, err.code, err.message) == (401, "expired_token", "the token has expired")
    # nbf within leeway is fine
    early = jwt.encode(claims(nbf=NOW + 20), SECRET, algorithm="HS256")
    clock[0] = NOW
    assert r.resolve(bearer(early)).agent == "planner"
    strict = make(tmp_path, [NOW + 1], secret_env="SG_TEST_JWT_SECRET", leeway=0)
    assert refused(strict, token).code == "expired_token"


def test_token_with_audience_refused_when_none_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SG_TEST_JWT_SECRET", SECRET)
    r = make(tmp_path, secret_env="SG_TEST_JWT_SECRET")
    err = refused(r, jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256"))
    assert err.message == "invalid token: wrong audience"


def test_alg_none_refused(hs: IdentityResolver) -> None:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = b64(json.dumps(claims(iss="https://idp", aud="sg")).encode())
    for alg in ("none", "None", "NONE"):
        token = f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{payload}."
        err = refused(hs, token)
        assert (err.code, err.message) == ("invalid_token", "invalid token: algorithm not allowed")


def _hs256_with_raw_key(payload: dict[str, Any], key: bytes, kid: str | None = None) -> str:
    """Sign like a confused verifier would check: HMAC-SHA256 keyed with arbitrary bytes."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def test_algorithm_confusion_rs256_only(key_dir: Path) -> None:
    r = make(key_dir, public_key_file="idp.pem")
    public_pem = (key_dir / "idp.pem").read_bytes()
    err = refused(r, _hs256_with_raw_key(claims(), public_pem))
    assert err.message == "invalid token: algorithm not allowed"


def test_algorithm_confusion_both_algorithms(
    key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SG_TEST_JWT_SECRET", SECRET)
    r = make(key_dir, secret_env="SG_TEST_JWT_SECRET", public_key_file="idp.pem")
    public_pem = (key_dir / "idp.pem").read_bytes()
    err = refused(r, _hs256_with_raw_key(claims(), public_pem))
    assert err.message == "invalid token: bad signature"  # checked with the HS secret only
    jwk_json = json.dumps(jwk(rsa.generate_private_key(65537, 2048), "one")).encode()
    assert refused(r, _hs256_with_raw_key(claims(), jwk_json, "one")).code == "invalid_token"
    # both real token kinds work
    assert r.resolve(bearer(jwt.encode(claims(), SECRET, algorithm="HS256"))).tenant == "acme"


def test_rs256_pem(key_dir: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> None:
    k1, k2 = rsa_keys
    r = make(key_dir, public_key_file="idp.pem", audience=["sg", "other"])
    good = jwt.encode(claims(aud="sg"), k1, algorithm="RS256")
    assert r.resolve(bearer(good))[:2] == ("acme", "planner")
    err = refused(r, jwt.encode(claims(aud="sg"), k2, algorithm="RS256"))
    assert err.message == "invalid token: bad signature"


def test_rs256_jwks_kid_selection(
    key_dir: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    k1, k2 = rsa_keys
    r = make(key_dir, jwks_file="jwks.json")
    for key, kid in ((k1, "one"), (k2, "two")):
        token = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": kid})
        assert r.resolve(bearer(token)).agent == "planner"
    swapped = jwt.encode(claims(), k1, algorithm="RS256", headers={"kid": "two"})
    assert refused(r, swapped).message == "invalid token: bad signature"
    unknown = jwt.encode(claims(), k1, algorithm="RS256", headers={"kid": "three"})
    assert refused(r, unknown).message == "invalid token: unknown key id"
    no_kid = jwt.encode(claims(), k1, algorithm="RS256")
    assert refused(r, no_kid).message == "invalid token: unknown key id"


def test_jwks_single_key_without_kid(
    tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    k1, _ = rsa_keys
    (tmp_path / "one.json").write_text(json.dumps({"keys": [jwk(k1, None)]}))
    r = make(tmp_path, jwks_file="one.json")
    assert r.resolve(bearer(jwt.encode(claims(), k1, algorithm="RS256"))).tenant == "acme"


def test_claim_mapping_nested_and_literal(
    key_dir: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    k1, _ = rsa_keys
    r = make(
        key_dir,
        public_key_file="idp.pem",
        claims={"tenant": "org.id", "agent": "https://acme.example/agent"},
    )
    payload = claims(org={"id": "globex", "name": "G"}, **{"https://acme.example/agent": "bot"})
    ident = r.resolve(bearer(jwt.encode(payload, k1, algorithm="RS256")))
    assert ident[:2] == ("globex", "bot") and ident.subject == "jwt:planner"
    numeric = claims(org={"id": 42}, **{"https://acme.example/agent": "bot"})
    assert r.resolve(bearer(jwt.encode(numeric, k1, algorithm="RS256"))).tenant == "42"


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (claims(tenant=None), "missing_claim", "the token has no 'tenant' claim (tenant)"),
        (claims(sub=None), "missing_claim", "the token has no 'sub' claim (agent)"),
        (claims(tenant={"x": 1}), "invalid_claim", "the token's 'tenant' claim (tenant) is not"),
        (claims(tenant="a\r\nb"), "invalid_claim", "the token's 'tenant' claim"),
        (claims(tenant=True), "invalid_claim", "the token's 'tenant' claim"),
        (claims(sub="x" * 129), "invalid_claim", "the token's 'sub' claim (agent)"),
    ],
)
def test_missing_or_bad_claim(
    key_dir: Path,
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    payload: dict[str, Any],
    code: str,
    message: str,
) -> None:
    r = make(key_dir, public_key_file="idp.pem")
    err = refused(r, jwt.encode(payload, rsa_keys[0], algorithm="RS256"))
    assert (err.status, err.code) == (403, code) and err.message.startswith(message)
    assert err.www_authenticate is None


def test_malformed_tokens(hs: IdentityResolver) -> None:
    for token in ("a.b.c", "eyJhbGciOiJIUzI1NiJ9.!!.x", "x" * 9000 + ".a.b"):
        err = refused(hs, token)
        assert (err.status, err.code) == (401, "invalid_token")
    # not two dots: an API key, not a JWT
    assert refused(hs, "a.b").code == "invalid_api_key"


def test_forged_identity_headers_ignored_with_jwt(hs: IdentityResolver) -> None:
    ident = hs.resolve({**bearer(hs_token()), "x-tenant": "globex", "x-agent": "root"})
    assert ident[:2] == ("acme", "planner")


def test_jwt_only_via_authorization_when_not_an_api_key_header(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SG_TEST_JWT_SECRET", SECRET)
    spec = IdentitySpec.model_validate(
        {"api_key_headers": ["X-Api-Key"], "jwt": {"secret_env": "SG_TEST_JWT_SECRET"}}
    )
    r = IdentityResolver(spec, base_dir=tmp_path, time_source=lambda: NOW)
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert r.resolve(bearer(token)).tenant == "acme"
    assert r.credential_headers() >= {"authorization", "x-api-key"}
    with pytest.raises(AuthError, match="Authorization: Bearer <jwt> or X-Api-Key: <key>"):
        r.resolve({})


# --- configuration errors ----------------------------------------------------------------------


def test_secret_env_problems(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SG_TEST_UNSET", raising=False)
    with pytest.raises(PolicyError, match="environment variable SG_TEST_UNSET is not set"):
        make(tmp_path, secret_env="SG_TEST_UNSET")
    monkeypatch.setenv("SG_TEST_SHORT", "short")
    with pytest.raises(PolicyError, match="must be at least 32 bytes") as info:
        make(tmp_path, secret_env="SG_TEST_SHORT")
    assert "short" not in str(info.value).replace("SG_TEST_SHORT", "")


def test_key_file_problems(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(PolicyError, match="bad.pem: not a PEM public key"):
        make(tmp_path, public_key_file="bad.pem")
    with pytest.raises(PolicyError, match="cannot read public key file"):
        make(tmp_path, public_key_file="missing.pem")
    small = rsa.generate_private_key(65537, 1024)
    (tmp_path / "small.pem").write_bytes(pem(small))
    with pytest.raises(PolicyError, match="RSA key of 1024 bits"):
        make(tmp_path, public_key_file="small.pem")
    cases = [
        ("{", "invalid JSON"),
        ('{"keys": 1}', 'an object with a "keys" list'),
        ('{"keys": [{"kty": "EC"}]}', "no RS256 signing key"),
        (json.dumps({"keys": [jwk(small, "a")]}), "keys[0]: RSA key of 1024 bits"),
        (json.dumps({"keys": [{"kty": "RSA", "kid": "a", "n": "x"}]}), "keys[0]: invalid RSA"),
    ]
    for text, message in cases:
        (tmp_path / "j.json").write_text(text)
        with pytest.raises(PolicyError) as info:
            make(tmp_path, jwks_file="j.json")
        assert message in str(info.value), str(info.value)


def test_jwks_structure_problems(
    tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    k1, k2 = rsa_keys
    private = json.loads(RSAAlgorithm.to_jwk(k1)) | {"kid": "p"}
    cases = [
        ({"keys": [jwk(k1, "a"), jwk(k2, "a")]}, "keys[1]: duplicate kid 'a'"),
        ({"keys": [jwk(k1, None), jwk(k2, "b")]}, "every key needs a kid"),
        ({"keys": [private]}, "keys[0]: is a private key"),
        ({"keys": ["x"]}, "keys[0]: must be an object"),
    ]
    for doc, message in cases:
        (tmp_path / "j.json").write_text(json.dumps(doc))
        with pytest.raises(PolicyError) as info:
            make(tmp_path, jwks_file="j.json")
        assert message in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("jwt_spec", "message"),
    [
        ({}, "jwt needs a key"),
        ({"secret_env": "X", "algorithms": ["RS256"]}, "secret_env is set but HS256 is not"),
        ({"public_key_file": "p", "algorithms": ["HS256"]}, "HS256 needs secret_env"),
        ({"secret_env": "X", "algorithms": ["HS256", "RS256"]}, "RS256 needs public_key_file"),
        ({"secret_env": "X", "algorithms": ["none"]}, "'HS256' or 'RS256'"),
        ({"secret_env": "X", "algorithms": []}, "algorithms must not be empty"),
        ({"secret_env": "X", "claims": {"tenant": "a..b"}}, "invalid claim path 'a..b'"),
        ({"secret_env": "X y"}, "invalid environment variable name"),
        ({"secret_env": "X", "leeway": "1h"}, "leeway must be at most 10min"),
        ({"secret_env": "X", "kid": "1"}, "Extra inputs are not permitted"),
    ],
)
def test_jwt_spec_validation(jwt_spec: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        IdentitySpec.model_validate({"jwt": jwt_spec})
    assert message in str(info.value), str(info.value)


def test_algorithms_inferred() -> None:
    spec = IdentitySpec.model_validate({"jwt": {"secret_env": "X", "jwks_file": "j.json"}})
    assert spec.jwt is not None and spec.jwt.allowed == ("HS256", "RS256")
