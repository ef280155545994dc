"""A lean HTTP/1.1 server for ASGI apps on ``httptools`` and ``asyncio.Protocol`` (uvloop too).

Why not only uvicorn: measured on this path, uvicorn costs ~60 us of CPU per request before the
app runs (a task, events and regex validation of every response header), as much as the whole
rate-limit decision. This server does the minimum an ASGI HTTP/1.1 server must: parse with
llhttp (which rejects malformed requests, CR/LF in header values and CL/TE smuggling), build the
scope, run the app in one task per request, write the response head together with the first
body chunk, use chunked encoding when the app gives no ``content-length``, keep connections
alive, handle pipelined requests in order, ``Expect: 100-continue``, flow control both ways, and
report client disconnects as ``http.disconnect``. It trusts the app's response headers (the
gateway only emits headers parsed by llhttp or rendered by itself). uvicorn stays available
(``GatewayServer(http="uvicorn")``) and serves the admin API and the mock upstream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools

from sluicegate.gateway.responses import Scope

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_HIGH_WATER = 1024 * 1024
_IDLE_TIMEOUT = 75.0


class _Request:
    __slots__ = ("scope", "body", "complete", "waiter", "keep_alive", "expect_continue")

    def __init__(self, scope: Scope, keep_alive: bool, expect_continue: bool) -> None:
        self.scope = scope
        self.body: collections.deque[bytes] = collections.deque()
        self.complete = False
        self.waiter: asyncio.Future[None] | None = None
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Connection(asyncio.Protocol):
    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.current: _Request | None = None  # being parsed
        self.pending: collections.deque[_Request] = collections.deque()
        self.active: _Request | None = None  # being answered
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.reading_paused = False
        self.write_paused = False
        self.drain: asyncio.Future[None] | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.local = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self.server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(b"400 Bad Request", b"upgrades are not supported")
        except httptools.HttpParserError:
            self._reject(b"400 Bad Request", b"invalid HTTP request")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        for req in (self.active, self.current, *self.pending):
            if req is not None:
                req.wake()
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        raw_path, _, query = self.url.partition(b"?")
        expect = any(k == b"expect" and v.lower() == b"100-continue" for k, v in self.headers)
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": parser.get_http_version(),
            "method": parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": self.headers,
            "client": self.client,
            "server": self.local,
        }
        req = _Request(scope, parser.should_keep_alive(), expect)
        self.current = req
        if self.active is None:
            self._start(req)
        else:
            self.pending.append(req)

    def on_body(self, body: bytes) -> None:
        req = self.current
        if req is None:
            return
        req.body.append(body)
        if not self.reading_paused and sum(map(len, req.body)) > _HIGH_WATER:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        req.wake()

    def on_message_complete(self) -> None:
        req = self.current
        if req is not None:
            req.complete = True
            req.wake()
        self.current = None

    # -- request cycle ---------------------------------------------------------------------
    def _start(self, req: _Request) -> None:
        self.active = req
        self.task = self.loop.create_task(self._run(req))

    async def _run(self, req: _Request) -> None:
        cycle = _Cycle(self, req)
        try:
            await self.server.app(req.scope, cycle.receive, cycle.send)
        except Exception:  # noqa: BLE001 - an app error must not kill the connection loop
            self.server.log_exception(req.scope)
            if not cycle.started and not self.closed:
                cycle.write_simple(500, b"Internal Server Error")
            else:
                self._close()
                return
        if not cycle.finished:
            self._close()
            return
        self.active = None
        if self.closed:
            return
        if not req.keep_alive or not cycle.keep_alive or self.server.stopping:
            self._close()
            return
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.pending:
            self._start(self.pending.popleft())
        else:
            self._arm_idle()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = self.loop.call_later(_IDLE_TIMEOUT, self._close)

    def _reject(self, status: bytes, message: bytes) -> None:
        if self.transport is not None and self.active is None and not self.closed:
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%b" % (len(message), message)
            )
        self._close()

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def close_if_idle(self) -> None:
        if self.active is None:
            self._close()


class _Cycle:
    """One request's ``receive`` and ``send``."""

    __slots__ = (
        "conn", "req", "started", "finished", "chunked", "head", "keep_alive", "body_done",
    )  # fmt: skip

    def __init__(self, conn: _Connection, req: _Request) -> None:
        self.conn = conn
        self.req = req
        self.started = False
        self.finished = False
        self.chunked = False
        self.head: bytes | None = None
        self.keep_alive = True
        self.body_done = False

    async def receive(self) -> dict[str, Any]:
        req = self.req
        conn = self.conn
        if req.expect_continue and not conn.closed and conn.transport is not None:
            req.expect_continue = False
            conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            if conn.closed or self.finished:
                return {"type": "http.disconnect"}
            if not self.body_done:
                if req.body:
                    chunk = b"".join(req.body) if len(req.body) > 1 else req.body[0]
                    req.body.clear()
                    if conn.reading_paused and conn.transport is not None:
                        conn.reading_paused = False
                        conn.transport.resume_reading()
                    self.body_done = req.complete
                    return {"type": "http.request", "body": chunk, "more_body": not req.complete}
                if req.complete:
                    self.body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            # waiting for more body, or (body delivered) for the client to go away
            req.waiter = conn.loop.create_future()
            try:
                await req.waiter
            finally:
                req.waiter = None

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.closed:
            return
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("response already started")
            self.started = True
            status = int(message["status"])
            parts = [b"HTTP/1.1 %d %b" % (status, _REASONS.get(status, b"Unknown"))]
            has_length = False
            for name, value in message.get("headers", ()):
                lname = name.lower()
                if lname == b"content-length":
                    has_length = True
                elif lname == b"connection" and value.lower() == b"close":
                    self.keep_alive = False
                parts.append(name + b": " + value)
            no_body = status < 200 or status in (204, 304) or self.req.scope["method"] == "HEAD"
            if not has_length and not no_body:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked")
            if not self.req.keep_alive:
                parts.append(b"connection: close")
            self.head = b"\r\n".join(parts) + b"\r\n\r\n"
            return
        if kind != "http.response.body":
            return
        if not self.started:
            raise RuntimeError("response body before response start")
        if self.finished:
            raise RuntimeError("response already complete")
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        out = self.head or b""
        self.head = None
        if self.chunked:
            if body:
                out += b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                out += b"0\r\n\r\n"
        else:
            out += body
        if not more:
            self.finished = True
            self.req.wake()  # a receive() waiting for a disconnect returns now
        transport = conn.transport
        if out and transport is not None:
            transport.write(out)
        if conn.write_paused and not conn.closed:
            conn.drain = conn.loop.create_future()
            await conn.drain
            conn.drain = None

    def write_simple(self, status: int, body: bytes) -> None:
        self.started = self.finished = True
        self.keep_alive = False
        if self.conn.transport is not None:
            self.conn.transport.write(
                b"HTTP/1.1 %d %b\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%b"
                % (status, _REASONS.get(status, b""), len(body), body)
            )


class LeanServer:
    """Serve an ASGI app on listening sockets until :meth:`stop`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self, sock: socket.socket) -> None:
        server = await self.loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)
        self._servers.append(server)

    def log_exception(self, scope: Scope) -> None:
        import logging

        logging.getLogger("sluicegate.gateway").exception(
            "unhandled error in %s %s", scope.get("method"), scope.get("path")
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close idle connections, give in-flight requests ``timeout``."""
        self.stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
            for conn in list(self.connections):
                conn.close_if_idle()
        for conn in list(self.connections):
            conn._close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
