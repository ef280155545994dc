"""The lean HTTP/1.1 server: framing, pipelining, Expect: 100-continue, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sluicegate.gateway.httpserver import LeanServer
from sluicegate.gateway.server import bind


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = f"{scope['method']} {scope['path']} {scope['query_string'].decode()} ".encode() + body
    if scope["path"] == "/chunked":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"bc"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    lean = LeanServer(echo)
    sock = bind("127.0.0.1:0")
    await lean.start(sock)
    host, port = sock.getsockname()[:2]
    yield host, port
    await lean.stop(1.0)


async def exchange(addr: tuple[str, int], data: bytes, until: bytes, n: int = 1) -> bytes:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(data)
    out = b""
    while out.count(until) < n:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        if not chunk:
            break
        out += chunk
    writer.close()
    return out


async def test_pipelined_requests_answered_in_order(server: tuple[str, int]) -> None:
    reqs = b"".join(
        b"POST /p%d?x=%d HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nab%d" % (i, i, i)
        for i in range(3)
    )
    out = await exchange(server, reqs, b"HTTP/1.1 200", 3)
    bodies = [part.split(b"\r\n\r\n", 1)[1][:13] for part in out.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"POST /p0 x=0 ", b"POST /p1 x=1 ", b"POST /p2 x=2 "]


async def test_chunked_request_and_response(server: tuple[str, int]) -> None:
    req = (
        b"POST /chunked HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    out = await exchange(server, req, b"0\r\n\r\n")
    assert b"transfer-encoding: chunked" in out
    assert out.endswith(b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n")


async def test_expect_100_continue(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    writer.write(
        b"POST /e HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
    )
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hi")
    rest = await asyncio.wait_for(reader.read(65536), 5)
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"POST /e  hi")
    writer.close()


async def test_malformed_request_is_400(server: tuple[str, int]) -> None:
    out = await exchange(server, b"GARBAGE\r\n\r\n", b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
