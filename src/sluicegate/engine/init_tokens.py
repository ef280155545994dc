"""Signed initialization tokens for the cold-start tier.

A fleet orchestrator mints one token per starting instance (``sluicegate token issue``); the
instance sends it as ``X-Agent-Init-Token`` and gets the policy's ``init`` limits for a bounded
window counted from its first use. A token is ``sgi1.<payload>.<signature>``: the payload is
base64url JSON ``{"t": tenant, "a": agent, "i": instance, "iat": .., "exp": ..}`` (wall-clock
seconds), the signature base64url HMAC-SHA256 of ``sgi1.<payload>`` with the policy's secret.
During a rotation the previous secret is accepted too. Verification is constant-time and never
raises on malformed input: it returns a reason instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import NamedTuple

PREFIX = "sgi1"
MIN_SECRET_BYTES = 32


class InitClaims(NamedTuple):
    tenant: str
    agent: str
    instance: str
    issued_at: float
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, message: str) -> str:
    return _b64(hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest())


def issue_token(
    secret: str, *, tenant: str, agent: str, instance: str, ttl: float, now: float
) -> str:
    """Mint a token valid for ``ttl`` seconds from ``now`` (wall-clock seconds)."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"the init secret must be at least {MIN_SECRET_BYTES} bytes")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    for name, value in (("tenant", tenant), ("agent", agent), ("instance", instance)):
        if not value or len(value) > 128:
            raise ValueError(f"{name} must be 1 to 128 characters")
    payload = {"t": tenant, "a": agent, "i": instance, "iat": int(now), "exp": int(now + ttl)}
    body = f"{PREFIX}.{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
    return f"{body}.{_sign(secret, body)}"


def verify_token(
    token: str, secrets: Sequence[str], *, now: float, max_ttl: float
) -> tuple[InitClaims | None, str]:
    """``(claims, "ok")`` or ``(None, reason)``; reasons: ``malformed``, ``bad_signature``,
    ``expired``, ``not_yet_valid``, ``ttl_too_long``."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or len(token) > 2048:
        return None, "malformed"
    body = f"{parts[0]}.{parts[1]}"
    if not any(hmac.compare_digest(_sign(s, body), parts[2]) for s in secrets if s):
        return None, "bad_signature"
    try:
        data = json.loads(_unb64(parts[1]))
        claims = InitClaims(
            str(data["t"]), str(data["a"]), str(data["i"]), float(data["iat"]), float(data["exp"])
        )
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        return None, "malformed"
    if claims.expires_at <= now:
        return None, "expired"
    if claims.issued_at > now + 60:
        return None, "not_yet_valid"
    if claims.expires_at - claims.issued_at > max_ttl:
        return None, "ttl_too_long"
    return claims, "ok"
