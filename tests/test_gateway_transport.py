"""The upstream transports against raw loopback servers: framing, keep-alive, stale sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sluicegate.gateway.transport import FastTransport, HttpxTransport, Transport, UpstreamError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    lower = head.lower()
    if b"content-length:" in lower:
        n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(n)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return head, body


async def read_all(resp: object) -> bytes:
    out = b""
    while chunk := await resp.read():  # type: ignore[attr-defined]
        out += chunk
    return out


@pytest.fixture(params=["fast", "httpx"])
def make(request: pytest.FixtureRequest) -> Callable[..., Transport]:
    def build(url: str, **kw: float) -> Transport:
        if request.param == "fast":
            return FastTransport(url, **kw)  # type: ignore[arg-type]
        return HttpxTransport(url, **kw)

    return build


async def test_chunked_and_content_length_responses_keep_alive(
    make: Callable[..., Transport],
) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head, body = await read_request(reader)
                if b"/chunked" in head:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                    )
                else:
                    writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: %d\r\nx-a: 1\r\n\r\n%b"
                                 % (len(body), body))  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server, url = await serve(handler)
    transport = make(url)
    try:
        for _ in range(3):
            resp = await transport.request("POST", "/echo", [(b"x-h", b"v")], b"payload")
            assert resp.status == 201 and (b"x-a", b"1") in resp.headers
            assert await read_all(resp) == b"payload"
            resp = await transport.request("GET", "/chunked", [], b"")
            assert await read_all(resp) == b"hello world"
        assert connections == 1  # one pooled keep-alive connection for all six
    finally:
        await transport.aclose()
        server.close()


async def test_streaming_request_body_is_chunked(make: Callable[..., Transport]) -> None:
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        got.append(body)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def gen() -> AsyncIterator[bytes]:
        for part in (b"ab", b"", b"cd"):
            yield part

    server, url = await serve(handler)
    transport = make(url)
    try:
        resp = await transport.request("POST", "/", [], gen())
        assert await read_all(resp) == b"ok"
        assert got == [b"abcd"]
    finally:
        await transport.aclose()
        server.close()


async def test_stale_pooled_connection_is_retried_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # answer, then close the socket although the response said keep-alive
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx")
        await writer.drain()
        writer.close()

    server, url = await serve(handler)
    transport = FastTransport(url)
    try:
        assert await read_all(await transport.request("POST", "/", [], b"1")) == b"x"
        await asyncio.sleep(0.05)  # the server has closed the pooled socket by now
        assert await read_all(await transport.request("POST", "/", [], b"2")) == b"x"
    finally:
        await transport.aclose()
        server.close()


async def test_connect_refused_and_read_timeout(make: Callable[..., Transport]) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(1)
        writer.close()

    server, url = await serve(slow)
    port = int(url.rsplit(":", 1)[1])
    server2, url2 = await serve(slow)
    server2.close()
    await server2.wait_closed()
    dead = make(url2, connect_timeout=1.0)
    with pytest.raises(UpstreamError) as info:
        await dead.request("POST", "/", [], b"")
    assert not info.value.timeout
    await dead.aclose()
    transport = make(f"http://127.0.0.1:{port}", read_timeout=0.2)
    try:
        with pytest.raises(UpstreamError) as info:
            await transport.request("POST", "/", [], b"x")
        assert info.value.timeout
    finally:
        await transport.aclose()
        server.close()
