"""The proxy with the real ``IdentityResolver`` (policy ``identity:`` section), and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sluicegate.gateway.server import GatewayServer
from tests.gateway_helpers import free_port, mock_server, write_policy

ROOT = Path(__file__).resolve().parent.parent
KEYS = ROOT / "examples" / "demo-keys.yaml"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[GatewayServer]:
    async with mock_server() as m:
        path = write_policy(tmp_path / "p.yaml", m.mock_url)
        text = path.read_text().replace(
            "version: 1\n", f"version: 1\nidentity:\n  api_keys_file: {KEYS}\n"
        )
        path.write_text(text)
        server = GatewayServer(
            path, listen="127.0.0.1:0", admin_listen="127.0.0.1:0", use_tiktoken=False
        )
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


async def test_real_resolver_keys_sessions_and_401(gw: GatewayServer) -> None:
    url = gw.url + "/v1/chat/completions"
    async with httpx.AsyncClient() as c:
        ok = await c.post(
            url,
            json={"messages": MSG},
            headers={"authorization": "Bearer sg-demo-globex-writer", "x-agent-session": "s1"},
        )
        assert ok.status_code == 200
        bad = await c.post(url, json={"messages": MSG}, headers={"x-api-key": "sg-nope"})
        assert bad.status_code == 401
        assert bad.json()["error"]["code"] == "invalid_api_key"
        assert bad.headers["www-authenticate"].startswith("Bearer")
        # the session is scoped under the authenticated agent: acme/planner's "s1" is its own
        await c.post(
            url,
            json={"messages": MSG},
            headers={"authorization": "Bearer sg-demo-acme-planner", "x-agent-session": "s1"},
        )
    keys = set(gw.store._buckets)  # type: ignore[attr-defined]
    assert any(k.startswith("sg:{globex}:") for k in keys)
    assert any(k.startswith("sg:{acme}:") for k in keys)


def test_cli_serve_mock_upstream_end_to_end(tmp_path: Path) -> None:
    """``sluicegate serve --mock-upstream`` through the gateway's own CLI module."""
    path = ROOT / "examples" / "agentic.yaml"  # the README's policy, as it is
    port, admin = free_port(), free_port()
    code = (
        "import argparse, sys; from sluicegate.gateway.cli import register; "
        "p = argparse.ArgumentParser(); register(p.add_subparsers(dest='c')); "
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    env = {**os.environ, "SLUICEGATE_ADMIN_TOKEN": "t0k"}
    args = [sys.executable, "-c", code, "serve", "--policy", str(path), "--mock-upstream"]
    args += ["--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", "--no-tiktoken"]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{admin}/healthz", timeout=1)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 16},
            headers={"authorization": "Bearer sg-demo-acme-planner", "x-agent-session": "s1"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 16
        assert "x-ratelimit-remaining-tokens" in r.headers
        st = httpx.get(
            f"http://127.0.0.1:{admin}/status", headers={"authorization": "Bearer t0k"}
        ).json()
        assert "acme" in st["tenants"]
        proc.send_signal(signal.SIGHUP)  # reload keeps serving
        time.sleep(0.3)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/embeddings",
            json={"model": "e", "input": "x"},
            headers={"authorization": "Bearer sg-demo-acme-planner"},
        )
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "policy reloaded" in err
    assert "path=/v1/chat/completions" in err and "status=200" in err  # one line per request


def hs256(claims: dict[str, object], secret: bytes) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


async def test_jwt_through_the_gateway_and_expired_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SG_TEST_JWT_SECRET", "x" * 32)
    async with mock_server() as m:
        path = write_policy(tmp_path / "p.yaml", m.mock_url)
        identity = (
            "identity:\n  jwt: {secret_env: SG_TEST_JWT_SECRET, issuer: https://idp.test,"
            " audience: sluicegate}\n"
        )
        path.write_text(path.read_text().replace("version: 1\n", "version: 1\n" + identity))
        server = GatewayServer(
            path, listen="127.0.0.1:0", admin_listen="127.0.0.1:0", use_tiktoken=False
        )
        await server.start()
        try:
            now = int(time.time())
            base = {"iss": "https://idp.test", "aud": "sluicegate", "tenant": "globex"}
            good = hs256({**base, "sub": "bot", "exp": now + 300}, b"x" * 32)
            old = hs256({**base, "sub": "bot", "exp": now - 3600}, b"x" * 32)
            url = server.url + "/v1/chat/completions"
            async with httpx.AsyncClient() as c:
                ok = await c.post(
                    url, json={"messages": MSG}, headers={"authorization": f"Bearer {good}"}
                )
                assert ok.status_code == 200
                expired = await c.post(
                    url, json={"messages": MSG}, headers={"authorization": f"Bearer {old}"}
                )
            assert expired.status_code == 401
            assert expired.json()["error"]["code"] == "expired_token"
            keys = set(server.store._buckets)  # type: ignore[attr-defined]
            assert any(k.startswith("sg:{globex}:a:bot") for k in keys)
        finally:
            await server.stop()
