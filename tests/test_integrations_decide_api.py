"""HTTP decision API: real HTTP via uvicorn, auth, settle, OpenAPI, and fuzzing (no 5xx)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from sluicegate.clock import VirtualClock  # noqa: E402
from sluicegate.engine import Engine  # noqa: E402
from sluicegate.integrations.decide_api import create_app, openapi_document  # noqa: E402
from sluicegate.policy import load_policy  # noqa: E402
from sluicegate.stores import MemoryStore  # noqa: E402
from tests.redis_servers import free_port  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures" / "envoy"
TOKEN = "test-token-123"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def make_app(clock: VirtualClock | None = None) -> Any:
    engine = Engine(load_policy(FIX / "policy.yaml"), MemoryStore(), clock or VirtualClock(0.0))
    return create_app(engine, token=TOKEN)


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, VirtualClock]]:
    clock = VirtualClock(0.0)
    port = free_port()
    config = uvicorn.Config(
        make_app(clock), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}", clock
    server.should_exit = True
    await task


@pytest.mark.asyncio(loop_scope="session")
async def test_decide_and_settle_over_http(served: tuple[str, VirtualClock]) -> None:
    base, clock = served
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        body = {"tenant": "acme", "agent": "bot", "route": "/v1/chat/completions",
                "estimated_tokens": 600}  # fmt: skip
        first = await client.post("/v1/decide", json=body, headers=AUTH)
        assert first.status_code == 200
        d = first.json()
        assert d["allowed"] is True and d["outcome"] == "allow" and d["reason"] == "ok"
        assert d["headers"]["x-ratelimit-remaining-tokens"] == "400"
        assert d["status"] == 200 and d["body"] is None
        refused = (await client.post("/v1/decide", json=body, headers=AUTH)).json()
        assert refused["allowed"] is False and refused["reason"] == "rate_limited"
        assert refused["status"] == 429 and refused["refusing"] == ["agent-tokens"]
        assert refused["body"]["error"]["code"] == "rate_limit_exceeded"
        assert refused["body"]["error"]["type"] == "tokens"
        assert refused["retry_after"] > 0 and "retry-after" in refused["headers"]
        # the call used only 100 tokens: settle refunds 500
        s = await client.post(
            "/v1/settle", json={"decision_id": d["decision_id"], "actual_tokens": 100},
            headers=AUTH,
        )  # fmt: skip
        assert s.status_code == 200 and s.json() == {"status": "applied", "delta": -500.0}
        dup = await client.post(
            "/v1/settle", json={"decision_id": d["decision_id"], "actual_tokens": 100},
            headers=AUTH,
        )  # fmt: skip
        assert dup.json()["status"] == "duplicate"
        again = (await client.post("/v1/decide", json=body, headers=AUTH)).json()
        assert again["allowed"] is True
        # unknown tenant / class map to their statuses
        u = (await client.post("/v1/decide", json={"tenant": "x", "agent": "a"},
                               headers=AUTH)).json()  # fmt: skip
        assert u["allowed"] is False and u["status"] == 403
        # auth
        assert (await client.post("/v1/decide", json=body)).status_code == 401
        bad = {"authorization": "Bearer nope"}
        assert (await client.post("/v1/decide", json=body, headers=bad)).status_code == 401
        # validation
        r = await client.post("/v1/decide", json={**body, "extra": 1}, headers=AUTH)
        assert r.status_code == 422 and "extra" in r.json()["detail"][0]
        r = await client.post("/v1/decide", json={**body, "estimated_tokens": -1}, headers=AUTH)
        assert r.status_code == 422
        r = await client.post("/v1/decide", content=b"{", headers={**AUTH,
                              "content-type": "application/json"})  # fmt: skip
        assert r.status_code == 422
        doc = (await client.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.1")
        assert set(doc["paths"]) == {"/v1/decide", "/v1/settle"}


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
        st.sampled_from(["acme", "bot", "", "\x00", "a:b{c}", "x" * 300, "1e400", "interactive"]),
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),  # fmt: skip
        max_leaves=12,
    )


def _prop(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for one property schema (as pydantic renders it)."""
    if "anyOf" in schema:
        return st.one_of([_prop(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 64), 64)
        return st.text(min_size=lo, max_size=hi)
    if kind in ("number", "integer"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        return st.floats(min_value=lo, max_value=hi, allow_nan=False) | st.integers(
            min_value=None if lo is None else int(lo), max_value=None if hi is None else int(hi)
        )
    return _json_values()


def _schema_bodies(name: str) -> st.SearchStrategy[Any]:
    """Bodies drawn from the served OpenAPI schema: required fields always, optional ones
    sometimes, each valid for its schema (and sometimes replaced by arbitrary JSON)."""
    schema = openapi_document()["components"]["schemas"][name]
    props = schema["properties"]
    required = set(schema.get("required", ()))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, sub in props.items():
            if key in required or draw(st.booleans()):
                wrong = draw(st.integers(0, 9)) == 0
                out[key] = draw(_json_values() if wrong else _prop(sub))
                if key == "tenant" and draw(st.booleans()):
                    out[key] = "acme"  # a known tenant, so decisions reach the store
        return out

    return build()


FIELDS = ["tenant", "agent", "session", "workload_class", "route", "method",
          "estimated_tokens", "cost_units", "pool", "max_wait", "decision_id",
          "actual_tokens"]  # fmt: skip


def _mutated() -> st.SearchStrategy[Any]:
    return st.dictionaries(st.sampled_from(FIELDS), _json_values(), max_size=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(["/v1/decide", "/v1/settle"]),
    body=st.one_of(
        _schema_bodies("DecideRequest"), _schema_bodies("SettleRequest"), _mutated(), _json_values()
    ),  # fmt: skip
    authed=st.booleans(),
)
def test_fuzz_no_5xx(path: str, body: Any, authed: bool) -> None:
    with TestClient(make_app()) as client:
        headers = {**(AUTH if authed else {}), "content-type": "application/json"}
        raw = json.dumps(body, allow_nan=True).encode()
        r = client.post(path, content=raw, headers=headers)
        assert r.status_code < 500, r.text
        if authed and r.status_code == 200:
            assert isinstance(r.json(), dict)


@settings(max_examples=100, deadline=None)
@given(
    raw=st.binary(max_size=200),
    ctype=st.sampled_from(["application/json", "text/plain", "", "application/json; x=1"]),
)
def test_fuzz_raw_bytes_no_5xx(raw: bytes, ctype: str) -> None:
    with TestClient(make_app()) as client:
        r = client.post("/v1/decide", content=raw, headers={**AUTH, "content-type": ctype})
        assert r.status_code < 500


def test_oversized_and_special_numbers() -> None:
    with TestClient(make_app()) as client:
        big = b'{"tenant": "' + b"a" * 70000 + b'"}'
        h = {**AUTH, "content-type": "application/json"}
        assert client.post("/v1/decide", content=big, headers=h).status_code == 413
        for num in (b"NaN", b"Infinity", b"1e999", b"-0"):
            body = b'{"tenant":"acme","agent":"a","estimated_tokens":' + num + b"}"
            assert client.post("/v1/decide", content=body, headers=h).status_code in (200, 422)
        deep = b"[" * 5000 + b"]" * 5000
        assert client.post("/v1/decide", content=deep, headers=h).status_code == 422
        assert client.get("/v1/decide", headers=AUTH).status_code == 405
        surrogate = b'{"tenant":"acme","agent":"\\ud800"}'
        assert client.post("/v1/decide", content=surrogate, headers=h).status_code == 422
