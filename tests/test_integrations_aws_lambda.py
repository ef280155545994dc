"""AWS API Gateway Lambda REQUEST authorizer: sample events in AWS's shape -> policy documents."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine
from sluicegate.errors import StoreUnavailable
from sluicegate.integrations import aws_lambda
from sluicegate.integrations.aws_lambda import LambdaAuthorizer, Unauthorized, load_keys
from sluicegate.policy import load_policy
from sluicegate.stores import MemoryStore
from sluicegate.stores.base import Batch, BatchResult, SettleResult

FIX = Path(__file__).resolve().parent / "fixtures" / "envoy"
EVENTS = FIX / "lambda"


def event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


@pytest.fixture
def authorizer() -> Iterator[LambdaAuthorizer]:
    engine = Engine(load_policy(FIX / "policy.yaml"), MemoryStore(), VirtualClock(0.0))
    auth = LambdaAuthorizer(engine, load_keys(EVENTS / "keys.yaml"))
    yield auth
    auth.close()


def test_allow_then_deny_v1(authorizer: LambdaAuthorizer) -> None:
    ev = event("request_v1.json")
    out = authorizer(ev, None)
    assert out["principalId"] == "acme/bot"
    assert out["policyDocument"] == {
        "Version": "2012-10-17",
        "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": ev["methodArn"]}
        ],
    }
    assert out["usageIdentifierKey"] == "sk-acme-bot-1"
    ctx = out["context"]
    assert ctx["tenant"] == "acme" and ctx["agent"] == "bot" and ctx["session"] == "conv-42"
    assert ctx["reason"] == "ok" and ctx["shadow_refused"] is False
    assert all(isinstance(v, str | int | float | bool) for v in ctx.values())
    headers = json.loads(ctx["ratelimit_headers"])
    assert headers["x-ratelimit-remaining-tokens"] == "700"
    # session burst is 3: the fourth call in this session is denied
    effects = [authorizer(ev, None)["policyDocument"]["Statement"][0]["Effect"] for _ in range(3)]
    assert effects == ["Allow", "Allow", "Deny"]
    denied = authorizer(ev, None)
    assert denied["context"]["reason"] == "rate_limited"
    assert denied["context"]["retry_after"] >= 1
    assert "retry-after" in json.loads(denied["context"]["ratelimit_headers"])


def test_v2_simple_response(authorizer: LambdaAuthorizer) -> None:
    out = authorizer(event("request_v2.json"), None)
    assert out["isAuthorized"] is True
    assert out["context"]["session"] == "conv-7"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic c2stYWNtZS1ib3QtMQ=="},
        {"Authorization": "Bearer "},
        {"x-api-key": "sk-acme-bot-2"},
    ],
)
def test_bad_tokens_unauthorized(authorizer: LambdaAuthorizer, headers: dict[str, str]) -> None:
    ev = copy.deepcopy(event("request_v1.json"))
    ev["headers"] = headers
    with pytest.raises(Unauthorized, match="^Unauthorized$"):
        authorizer(ev, None)


def test_malformed_event_fields(authorizer: LambdaAuthorizer) -> None:
    ev = copy.deepcopy(event("request_v1.json"))
    ev["headers"]["X-Estimated-Tokens"] = "lots"
    ev["headers"]["X-Agent-Workload-Class"] = "nonsense"
    out = authorizer(ev, None)
    assert out["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    ev["headers"] = None
    with pytest.raises(Unauthorized):
        authorizer(ev, None)


class _DownStore:
    async def apply(self, batch: Batch, now: float) -> BatchResult:
        raise StoreUnavailable("redis 127.0.0.1:1 unreachable")

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        raise StoreUnavailable("down")

    async def aclose(self) -> None:
        return None


def test_store_down_denies() -> None:
    engine = Engine(load_policy(FIX / "policy.yaml"), _DownStore(), VirtualClock(0.0))
    auth = LambdaAuthorizer(engine, load_keys(EVENTS / "keys.yaml"))
    try:
        out = auth(event("request_v1.json"), None)
        assert out["policyDocument"]["Statement"][0]["Effect"] == "Deny"
        assert out["context"]["reason"] == "store_unavailable"
    finally:
        auth.close()


def test_handler_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_POLICY", str(FIX / "policy.yaml"))
    monkeypatch.setenv("SLUICEGATE_API_KEYS", str(EVENTS / "keys.yaml"))
    monkeypatch.setattr(aws_lambda, "_default", None)
    try:
        out = aws_lambda.handler(event("request_v1.json"), None)
        assert out["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    finally:
        if aws_lambda._default is not None:
            aws_lambda._default.close()
        monkeypatch.setattr(aws_lambda, "_default", None)
