"""Upstream transports: how the gateway sends one request to an upstream and streams the answer.

Why a lean client of our own: on the proxy path every microsecond of client CPU is throughput
lost. httpx costs ~1.3 ms of CPU per request here and aiohttp ~0.3 ms; :class:`FastTransport`
is an HTTP/1.1 client on ``httptools`` (the llhttp parser) and a plain ``asyncio.Protocol``, with
a LIFO keep-alive pool per upstream, so a proxied call is one ``write`` and a few callbacks.
TLS goes through asyncio's ``ssl`` support. :class:`HttpxTransport` is the well-kept fallback
(``transport: httpx`` on an upstream) for anything the lean client does not do (HTTP/2, proxies).

Both implement :class:`Transport`: ``request()`` returns an :class:`UpstreamResponse` once the
status line and headers have arrived; the body is then pulled chunk by chunk with ``read()``
(``b""`` at the end), so SSE passes through as it arrives. Errors are :class:`UpstreamError`
with ``timeout`` telling a timeout (504) from a connection failure (502).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httptools

Headers = list[tuple[bytes, bytes]]

#: Pause reading from the upstream while this many body bytes wait for the client.
_HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached, broke the connection, or did not answer in time.

    ``sent`` is True when the request may have reached the upstream (it may have consumed it).
    """

    def __init__(self, message: str, *, timeout: bool = False, sent: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.sent = sent


class UpstreamResponse(Protocol):
    status: int
    headers: Headers

    async def read(self) -> bytes:
        """The next body chunk; ``b""`` once the body is complete."""
        ...

    def close(self) -> None:
        """Stop reading (idempotent). A fully read response returns its connection to the pool;
        an abandoned one closes it."""
        ...


class Transport(Protocol):
    async def request(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes],
    ) -> UpstreamResponse:
        """Send one request (``target`` is the path and query); headers must not include
        ``Host``, ``Content-Length`` or ``Transfer-Encoding`` (the transport sets them)."""
        ...

    async def aclose(self) -> None: ...


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; parser callbacks fill the current response."""

    __slots__ = (
        "transport", "parser", "pool", "status", "headers", "chunks", "buffered", "done",
        "error", "head_waiter", "body_waiter", "keep_alive", "paused", "closed", "used",
        "write_paused", "drain_waiter", "_name",
    )  # fmt: skip

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.used = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: Headers = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.done = False
        self.error: UpstreamError | None = None
        self.head_waiter: asyncio.Future[None] | None = None
        self.body_waiter: asyncio.Future[None] | None = None
        self.keep_alive = True
        self.paused = False
        self._name = b""

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("upstream tried to upgrade the connection", sent=True))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"invalid response from upstream: {exc}", sent=True))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done:
            self._fail(UpstreamError("upstream closed the connection", sent=True))
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        waiter = self.head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        self.done = True
        self._wake_body()

    # -- helpers ---------------------------------------------------------------------------
    def _wake_body(self) -> None:
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        for waiter in (self.head_waiter, self.body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Response:
    """A response being read from a :class:`_Conn`."""

    __slots__ = ("status", "headers", "_conn", "_released", "_timeout", "_head_only")

    def __init__(self, conn: _Conn, timeout: float, head_only: bool) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self._released = False
        self._timeout = timeout
        self._head_only = head_only or conn.status in (204, 304) or conn.status < 200

    async def read(self) -> bytes:
        conn = self._conn
        if self._released or self._head_only:
            self.close()
            return b""
        while True:
            if conn.chunks:
                chunk = conn.chunks.popleft()
                conn.buffered -= len(chunk)
                if conn.paused and conn.buffered < _HIGH_WATER // 2 and conn.transport:
                    conn.paused = False
                    conn.transport.resume_reading()
                if len(conn.chunks) > 1:  # coalesce what already arrived: fewer client writes
                    rest = b"".join(conn.chunks)
                    conn.chunks.clear()
                    conn.buffered = 0
                    chunk += rest
                return chunk
            if conn.done:
                self.close()
                return b""
            if conn.error is not None:
                self.close()
                raise conn.error
            await _wait(conn, "body_waiter", self._timeout, "reading the upstream response")

    def close(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn.done and conn.keep_alive and not conn.closed and not self._head_only:
            conn.pool.release(conn)
        elif self._head_only and conn.done and conn.keep_alive and not conn.closed:
            conn.pool.release(conn)
        else:
            conn.abort()
            conn.pool.discard(conn)


async def _wait(conn: _Conn, slot: str, timeout: float, what: str) -> None:
    """Wait for a parser callback to fill ``slot``'s future, failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    setattr(conn, slot, fut)
    handle = loop.call_later(timeout, _expire, fut)
    try:
        await fut
    finally:
        handle.cancel()
        setattr(conn, slot, None)
    if getattr(fut, "_sg_timeout", False):
        conn.abort()
        raise UpstreamError(
            f"upstream timed out {what} after {timeout:g}s", timeout=True, sent=True
        )


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut._sg_timeout = True  # type: ignore[attr-defined]
        fut.set_result(None)


class _Pool:
    """Idle keep-alive connections to one origin, most recently used first (warm sockets)."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        *,
        connect_timeout: float,
        max_idle: int,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle: list[_Conn] = []
        self.all: set[_Conn] = set()
        self.retired = False

    async def acquire(self) -> _Conn:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn._reset()
                return conn
            self.all.discard(conn)
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self.ssl),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamError(
                f"connecting to {self.host}:{self.port} timed out after {self.connect_timeout:g}s",
                timeout=True,
            ) from None
        except OSError as exc:
            raise UpstreamError(
                f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self.all.add(proto)
        return proto

    def release(self, conn: _Conn) -> None:
        conn.used = True
        if not self.retired and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.abort()
            self.all.discard(conn)

    def discard(self, conn: _Conn) -> None:
        self.all.discard(conn)

    def retire(self) -> None:
        """Close idle sockets; in-flight ones finish their response, then close."""
        self.retired = True
        for conn in self.idle:
            conn.abort()
            self.all.discard(conn)
        self.idle.clear()

    def close(self) -> None:
        for conn in list(self.all):
            conn.abort()
        self.all.clear()
        self.idle.clear()


class FastTransport:
    """Pooled HTTP/1.1 keep-alive client for one upstream base URL (see module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        max_idle: int = 256,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported upstream url {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        self.base_path = parts.path.rstrip("/")
        default_port = port == (443 if tls else 80)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        self._host_header = (host if default_port else f"{host}:{port}").encode("idna")
        context = ssl_context or (ssl.create_default_context() if tls else None)
        self.read_timeout = read_timeout
        self._pool = _Pool(
            parts.hostname,
            port,
            context,
            connect_timeout=connect_timeout,
            max_idle=max_idle,
        )

    @property
    def open_connections(self) -> int:
        return len(self._pool.all)

    async def request(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes],
    ) -> UpstreamResponse:
        for attempt in (0, 1):
            conn = await self._pool.acquire()
            reused = conn.used
            try:
                return await self._send(conn, method, target, headers, body)
            except UpstreamError as exc:
                # A reused socket the server had already closed: nothing reached the upstream,
                # so resending the same bytes is safe (what every HTTP/1.1 client does).
                stale = reused and not conn.status and isinstance(body, bytes) and not exc.timeout
                if attempt == 0 and stale:
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        conn: _Conn,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes],
    ) -> _Response:
        transport = conn.transport
        assert transport is not None
        head = bytearray(f"{method} {self.base_path}{target} HTTP/1.1\r\nhost: ".encode("latin-1"))
        head += self._host_header
        for name, value in headers:
            head += b"\r\n" + name + b": " + value
        if isinstance(body, bytes):
            if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                head += b"\r\ncontent-length: " + str(len(body)).encode()
            head += b"\r\n\r\n"
            transport.write(bytes(head) + body if body else bytes(head))
        else:
            head += b"\r\ntransfer-encoding: chunked\r\n\r\n"
            transport.write(bytes(head))
            async for chunk in body:
                if conn.closed:
                    break
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if conn.write_paused:
                    loop = asyncio.get_running_loop()
                    conn.drain_waiter = loop.create_future()
                    await conn.drain_waiter
            transport.write(b"0\r\n\r\n")
        if not conn.status and conn.error is None:
            await _wait(conn, "head_waiter", self.read_timeout, "waiting for the response head")
        if conn.error is not None:
            if conn.status == 0:
                raise conn.error
        return _Response(conn, self.read_timeout, head_only=method == "HEAD")

    def retire(self) -> None:
        """Stop pooling (after a reload replaced this upstream) without cutting live calls."""
        self._pool.retire()

    async def aclose(self) -> None:
        self._pool.close()


class HttpxTransport:
    """Fallback transport on ``httpx.AsyncClient`` (imported lazily: optional dependency)."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0, read_timeout: float = 600.0):
        import httpx

        self._httpx: Any = httpx
        self._base = url.rstrip("/")
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def request(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes],
    ) -> UpstreamResponse:
        httpx = self._httpx
        req = self._client.build_request(method, self._base + target, headers=headers, content=body)
        try:
            resp = await self._client.send(req, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"upstream timed out: {exc}", timeout=True, sent=True) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream failed: {exc}") from None
        return _HttpxResponse(resp, httpx)

    async def aclose(self) -> None:
        await self._client.aclose()


class _HttpxResponse:
    def __init__(self, resp: Any, httpx: Any) -> None:
        self._resp = resp
        self._httpx = httpx
        self.status: int = resp.status_code
        self.headers: Headers = [(k.lower(), v) for k, v in resp.headers.raw]
        self._iter = resp.aiter_raw()
        self._closed = False

    async def read(self) -> bytes:
        if self._closed:
            return b""
        try:
            chunk: bytes = await self._iter.__anext__()
            return chunk
        except StopAsyncIteration:
            self.close()
            return b""
        except self._httpx.TimeoutException as exc:
            self.close()
            raise UpstreamError(f"upstream timed out: {exc}", timeout=True, sent=True) from None
        except self._httpx.HTTPError as exc:
            self.close()
            raise UpstreamError(f"upstream failed: {exc}", sent=True) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            asyncio.get_running_loop().create_task(self._resp.aclose())
