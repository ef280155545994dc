"""The Redis store: bucket state shared by every sluicegate replica, one script call per decision.

A decision is one ``EVALSHA`` of ``lua/apply.lua``: the script reads every bucket, runs the same
arithmetic as :mod:`sluicegate.algorithms` (``lua/lib.lua`` mirrors it operation for operation),
and writes only if every bucket admits, so there are no partial writes and nothing to roll back.
The reservation that ``settle`` reconciles later is written by the same call. Time is Redis
``TIME`` (minus :data:`~sluicegate.stores.redis_scripts.EPOCH`), so replicas' clocks never matter.

**Micro-batching.** Concurrent decisions issued in the same event-loop tick (and those that
arrive while ``max_inflight`` pipelines are already on the wire) are sent as one pipeline with
``transaction=False``: one round trip, yet each decision is still its own atomic script call.
At concurrency 64 this roughly doubles throughput (``bench/redis_decisions.py``); at
concurrency 1 it costs one extra loop tick.

**Failures.** Every call is bounded by ``timeout`` (default 50 ms) with the store's own timer,
because a client library may block inside its own retries for seconds. redis-py's retries are
switched off: replaying a script whose reply was lost would consume twice. All client errors
become :class:`~sluicegate.errors.StoreUnavailable` (transient) or
:class:`~sluicegate.errors.StoreProtocolError`; :class:`~sluicegate.stores.failover.FailoverStore`
turns them into the configured failure mode. A call that timed out may still have been applied
by Redis (consumption without admission: the safe direction).

**Shared values** (``put_value`` / ``get_value`` / ``list_values``) are plain ``SET key value PX
ms`` / ``GET`` / ``SCAN MATCH`` + ``MGET`` commands outside the micro-batcher (they are rare),
each round trip bounded by the same ``timeout``. They expire on Redis' clock, so the caller's
``now`` is ignored, even with ``use_caller_clock`` (and ``ttl_slack`` does not apply to them).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import redis.asyncio as aredis
from redis import exceptions as rexc
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sluicegate.errors import ConfigurationError, StoreProtocolError, StoreUnavailable
from sluicegate.stores.base import Batch, BatchResult, SettleResult, check_value
from sluicegate.stores.redis_scripts import (
    APPLY,
    SCAN_COUNT,
    SCRIPTS,
    SETTLE,
    Codec,
    LuaScript,
    bounded_call,
    check_options,
    convert_error,
    decode_apply,
    decode_settle,
    decode_text,
    glob_escape,
    record_key,
    socket_timeouts,
    ttl_ms,
)

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is part of the redis extra
    _pack = None

__all__ = ["RedisStore"]

DEFAULT_TIMEOUT = 0.05


class _Call:
    """One script call waiting for its round trip. ``asking`` sends ``ASKING`` first (a
    cluster ``ASK`` redirect); ``redirects`` counts how often it was re-routed."""

    __slots__ = ("script", "numkeys", "args", "future", "asking", "redirects")

    def __init__(
        self, script: LuaScript, numkeys: int, args: Sequence[Any], future: asyncio.Future[Any]
    ) -> None:
        self.script = script
        self.numkeys = numkeys
        self.args = args
        self.future = future
        self.asking = False
        self.redirects = 0


class _Connections(Protocol):
    """Where a :class:`_Pipeliner` gets its connections: a standalone client's pool, or one
    Redis Cluster node's."""

    async def acquire(self) -> Connection: ...

    async def release(self, conn: Connection) -> None: ...

    async def failed(self, exc: BaseException) -> None:
        """A round trip failed with ``exc`` (not a reply: the connection or the clock)."""


class _PoolConnections:
    """A standalone client's pool. After a connection error the pool's idle connections are
    closed too: after a restart they are all dead, and each would fail one more call (and
    flap the failover state) before being replaced."""

    __slots__ = ("_client",)

    def __init__(self, client: aredis.Redis) -> None:
        self._client = client

    async def acquire(self) -> Connection:
        conn: Connection = await self._client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return conn

    async def release(self, conn: Connection) -> None:
        await self._client.connection_pool.release(conn)

    async def failed(self, exc: BaseException) -> None:
        if isinstance(exc, rexc.ConnectionError | OSError):
            await _drop_idle_connections(self._client)


#: ``redirect(call, error_reply) -> bool``: take over a call whose reply was an error (a
#: cluster redirect: the script did not run); False lets the call fail with the error.
Redirect = Callable[[_Call, BaseException], bool]


class _Pipeliner:
    """Coalesces concurrent script calls into pipelined round trips on one server.

    A call is queued; a flush is scheduled with ``call_soon`` so every call issued in the same
    loop tick joins it. At most ``max_inflight`` pipelines are on the wire at once; calls that
    arrive meanwhile wait and leave together with the next one (Nagle-style), so batches grow
    with load and a lone call pays one loop tick, not a timer. Calls whose caller already gave
    up (timed out, cancelled) are dropped before sending.

    The server is whatever ``connections`` hands out: the standalone store has one pipeliner
    on its client's pool, the cluster store one per primary on that node's pool. A reply that
    is an error goes to ``redirect`` first (the cluster re-routes MOVED / ASK / TRYAGAIN,
    which mean the script did not run); NOSCRIPT is handled here (SCRIPT LOAD, then the same
    calls once more). Nothing is ever re-sent after a connection error or a timeout: the
    script may have run.
    """

    def __init__(
        self,
        connections: _Connections,
        address: str,
        *,
        max_batch: int,
        max_inflight: int,
        max_pending: int,
        read_timeout: float,
        redirect: Redirect | None = None,
    ) -> None:
        self._connections = connections
        self._read_timeout = read_timeout
        self._address = address
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._max_pending = max_pending
        self._redirect = redirect
        self._pending: list[_Call] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.round_trips = 0
        self.calls = 0
        self.script_loads = 0

    def submit(self, script: LuaScript, numkeys: int, args: Sequence[Any]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.enqueue(_Call(script, numkeys, args, future))
        return future

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing on the wire."""
        return not self._pending and self._inflight == 0

    def enqueue(self, call: _Call, *, check: bool = True) -> None:
        """Queue ``call`` (``check``: refuse it when ``max_pending`` calls already wait)."""
        if check and len(self._pending) >= self._max_pending:
            raise StoreUnavailable(
                f"redis at {self._address}: {len(self._pending)} calls already queued"
            )
        self._pending.append(call)
        if not self._scheduled and self._inflight < self._max_inflight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        while self._pending and self._inflight < self._max_inflight:
            # Spread what is waiting over the free slots: several smaller pipelines overlap
            # (Redis runs one while the client encodes or decodes another), which at
            # concurrency 64 doubles throughput over one big pipeline per round.
            free = self._max_inflight - self._inflight
            size = min(self._max_batch, -(-len(self._pending) // free))
            head = self._pending[:size]
            del self._pending[:size]
            batch = [c for c in head if not c.future.done()]
            if not batch:
                continue
            self._inflight += 1
            task = loop.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._execute(batch)
        except BaseException as exc:  # noqa: B036 - every waiter must hear of the failure
            if isinstance(exc, asyncio.CancelledError):
                # The store is closing (aclose cancels its pipelines): its callers are
                # cancelled too, not handed a protocol error for a call that never failed.
                for call in batch:
                    call.future.cancel()
                raise
            err = convert_error(exc, self._address)
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(err)
            await self._connections.failed(exc)
        else:
            redirect = self._redirect
            for call, reply in zip(batch, replies, strict=True):
                if call.future.done():
                    continue
                if isinstance(reply, BaseException):
                    if redirect is None or not redirect(call, reply):
                        call.future.set_exception(convert_error(reply, self._address))
                else:
                    call.future.set_result(reply)
        finally:
            self._inflight -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        """One pipelined round trip; NOSCRIPT replies (a restarted, flushed or promoted server)
        are re-sent behind a SCRIPT LOAD of their scripts, in one more round trip on the same
        server. NOSCRIPT means the call did not run, so this is safe."""
        self.round_trips += 1
        self.calls += len(batch)
        replies, _ = await self._pipeline(batch)
        missing = [i for i, r in enumerate(replies) if isinstance(r, rexc.NoScriptError)]
        if missing:
            scripts = list({batch[i].script.sha: batch[i].script for i in missing}.values())
            self.script_loads += len(scripts)
            again, loaded = await self._pipeline([batch[i] for i in missing], scripts)
            failed = next((r for r in loaded if isinstance(r, BaseException)), None)
            for i, reply in zip(missing, again, strict=True):
                # A failed load explains the NOSCRIPT that follows it better than NOSCRIPT.
                stuck = failed is not None and isinstance(reply, rexc.NoScriptError)
                replies[i] = failed if stuck else reply
        return replies

    async def _pipeline(
        self, batch: list[_Call], load: Sequence[LuaScript] = ()
    ) -> tuple[list[Any], list[Any]]:
        """Send the calls back to back on one pooled connection (after ``SCRIPT LOAD`` of
        ``load``) and read their replies: ``(call replies, load replies)``, error replies as
        exceptions.

        This is what redis-py's ``Pipeline(transaction=False)`` does, minus its per-argument
        encoding in Python: the arguments are already strings, and hiredis packs the whole
        command in C (a third of the client's CPU at concurrency 64 went to that encoding).
        """
        commands: list[tuple[Any, ...]] = [("SCRIPT", "LOAD", s.text) for s in load]
        keep = [False] * len(load)  # which replies are the calls' (not SCRIPT LOAD, ASKING)
        for c in batch:
            if c.asking:
                commands.append(("ASKING",))
                keep.append(False)
            commands.append(("EVALSHA", c.script.sha, c.numkeys, *c.args))
            keep.append(True)
        conn = await self._connections.acquire()
        try:
            if _pack is not None:
                payload: Any = b"".join([_pack(cmd) for cmd in commands])
            else:  # pragma: no cover - hiredis is part of the redis extra
                payload = conn.pack_commands(commands)
            raw: list[Any] = []
            # One deadline for the whole round trip instead of redis-py's per-reply timer (a
            # third of the read cost); it frees the connection if the server stops answering.
            async with asyncio.timeout(self._read_timeout):
                await conn.send_packed_command(payload, check_health=False)
                for _ in commands:
                    try:
                        raw.append(await conn.read_response(timeout=math.inf))
                    except rexc.ResponseError as exc:
                        raw.append(exc)
        except BaseException:
            # Replies may still be on the socket: never hand this connection to anyone else.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await self._connections.release(conn)
        if len(raw) == len(batch):
            return raw, []
        return [r for r, k in zip(raw, keep, strict=True) if k], raw[: len(load)]

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for call in self._pending:
            if not call.future.done():
                call.future.cancel()
        self._pending.clear()


async def _drop_idle_connections(client: aredis.Redis) -> None:
    """After a connection error, close the pool's idle connections too: after a restart they
    are all dead, and each would fail one more call (and flap the failover state) before
    being replaced."""
    try:
        await client.connection_pool.disconnect(inuse_connections=False)
    except Exception:  # best effort, on a connection that already failed
        pass


class _Deadlines:
    """Fails futures still pending ``timeout`` seconds after they were added, with one timer
    for all of them: every call gets the same timeout, so deadlines arrive in order and the
    head of a deque is always the next to expire (a timer per call cost more than encoding
    the call)."""

    def __init__(self, timeout: float, address: str) -> None:
        self._timeout = timeout
        self._address = address
        self._queue: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        deadline = loop.time() + self._timeout
        self._queue.append((deadline, future))
        if self._handle is None:
            self._handle = loop.call_at(deadline, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        now = loop.time()
        queue = self._queue
        while queue:
            deadline, future = queue[0]
            if future.done():
                queue.popleft()
            elif deadline <= now:
                queue.popleft()
                future.set_exception(
                    StoreUnavailable(
                        f"cannot reach redis at {self._address}: no answer within "
                        f"{self._timeout * 1000:g} ms"
                    )
                )
            else:
                self._handle = loop.call_at(deadline, self._fire, loop)
                return

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._queue.clear()


class RedisStore:
    """:class:`~sluicegate.stores.base.Store` on one Redis server (or a Sentinel-managed one).

    Build it with :meth:`from_url` (or :func:`sluicegate.stores.url.open_store`), or pass a
    ``redis.asyncio.Redis`` client you own (then set ``owns_client=False``). Keyword options:

    ``timeout``          seconds one call may take, including queueing (default 50 ms)
    ``micro_batch``      pipeline concurrent calls into shared round trips (default on)
    ``max_batch``        calls per pipeline (default 256)
    ``max_inflight``     pipelines on the wire at once (default 4: waiting calls are spread over
                         the free slots, so Redis runs one pipeline while the client encodes or
                         decodes another; one big pipeline per round leaves one side idle)
    ``use_caller_clock`` use the caller's ``now`` instead of Redis ``TIME`` (tests, simulator)
    ``ttl_slack``        seconds added to every key TTL (for virtual clocks; default 0)
    ``max_connections``  size of the client's pool (``from_url``); unbatched calls queue for a
                         free connection within their timeout
    """

    #: Keys per ``SCAN`` round trip (and per ``MGET``) in :meth:`list_values`.
    scan_count: int = SCAN_COUNT

    def __init__(
        self,
        client: aredis.Redis,
        *,
        address: str = "redis",
        timeout: float = DEFAULT_TIMEOUT,
        micro_batch: bool = True,
        max_batch: int = 256,
        max_inflight: int = 4,
        max_pending: int = 10_000,
        use_caller_clock: bool = False,
        ttl_slack: float = 0.0,
        max_connections: int = 64,
        owns_client: bool = True,
    ) -> None:
        check_options(timeout, max_batch, max_inflight)
        self._client = client
        self._owns_client = owns_client
        self.address = address
        self.timeout = timeout
        self.codec = Codec(use_caller_clock=use_caller_clock, ttl_slack=ttl_slack)
        self._scripts = {s.name: client.register_script(s.text) for s in SCRIPTS}
        self._pipeliner = (
            _Pipeliner(
                _PoolConnections(client),
                address,
                max_batch=max_batch,
                max_inflight=max_inflight,
                max_pending=max_pending,
                read_timeout=max(1.0, timeout * 20),
            )
            if micro_batch
            else None
        )
        self.direct_calls = 0
        self._deadlines = _Deadlines(timeout, address)
        # Unbatched calls each hold a pooled connection; waiting for one (within the timeout)
        # beats redis-py's "Too many connections" error under bursts of concurrency.
        self._connections = asyncio.Semaphore(max(1, max_connections - max_inflight - 1))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        max_connections: int = 64,
        **options: Any,
    ) -> RedisStore:
        """A store on ``redis://[user:password@]host[:port][/db]`` or ``rediss://`` (TLS).

        The socket timeouts only free connections stuck on a dead peer; ``timeout`` is what
        bounds each call. Pass ``connect_timeout`` to allow slower connection setup.
        """
        sock_timeout, sock_connect = socket_timeouts(timeout, connect_timeout)
        try:
            client = aredis.Redis.from_url(
                url,
                socket_timeout=sock_timeout,
                socket_connect_timeout=sock_connect,
                retry=Retry(NoBackoff(), 0),
                max_connections=max_connections,
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid redis URL {url!r}: {exc}") from None
        kwargs = client.connection_pool.connection_kwargs
        address = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        if kwargs.get("path"):
            address = str(kwargs["path"])
        return cls(
            client, address=address, timeout=timeout, max_connections=max_connections, **options
        )

    # -- introspection -----------------------------------------------------------------------
    @property
    def client(self) -> aredis.Redis:
        """The underlying client (tests read TTLs with it)."""
        return self._client

    @property
    def stats(self) -> dict[str, int]:
        """Calls and round trips so far: ``calls / round_trips`` is the mean batch size."""
        p = self._pipeliner
        return {
            "calls": (p.calls if p else 0) + self.direct_calls,
            "round_trips": (p.round_trips if p else 0) + self.direct_calls,
            "script_loads": p.script_loads if p else 0,
        }

    async def ping(self) -> None:
        """Check the server answers (``open_store`` calls it): one clear line if not."""
        try:
            async with asyncio.timeout(max(self.timeout, 1.0)):
                await self._client.ping()
        except BaseException as exc:  # noqa: B036 - converted, never swallowed
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise convert_error(exc, self.address) from None

    # -- Store protocol -----------------------------------------------------------------------
    async def apply(self, batch: Batch, now: float) -> BatchResult:
        codec = self.codec
        res = batch.reservation
        record = None
        if res is not None:
            record = (
                record_key(res.id),
                res.reserved,
                res.ttl,
                codec.reservation_json(batch),
                "[]",
            )
        numkeys, args = codec.apply_args(
            batch.keys, batch.limits, batch.costs, now, batch.max_delay, record=record
        )
        reply = await self._call(APPLY, numkeys, args)
        return decode_apply(reply, len(batch.keys))

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        reply = await self._call(SETTLE, 1, self.codec.settle_args(reservation_id, actual, now))
        result, foreign = decode_settle(reply)
        if foreign not in (b"[]", "[]"):
            # Only Redis Cluster splits reservations across slots; a standalone record never
            # has foreign adjustments unless it was written by a cluster store.
            raise StoreProtocolError("reservation has adjustments in other hash slots")
        return result

    async def put_value(self, key: str, value: str, ttl: float, now: float) -> None:
        check_value(value, ttl)
        await self._command(f"SET {key}", partial(self._client.set, key, value, px=ttl_ms(ttl)))

    async def get_value(self, key: str, now: float) -> str | None:
        what = f"GET {key}"
        reply = await self._command(what, partial(self._client.get, key))
        return None if reply is None else decode_text(reply, self.address, what)

    async def list_values(self, prefix: str, now: float) -> dict[str, str]:
        pattern = glob_escape(prefix) + "*"
        count = self.scan_count
        found: set[bytes] = set()  # SCAN may return a key more than once
        cursor = 0
        while True:
            scan = partial(self._client.scan, cursor, match=pattern, count=count)
            cursor, keys = await self._command(f"SCAN MATCH {pattern}", scan)
            found.update(keys)
            if int(cursor) == 0:
                break
        return await self._read_values(sorted(found), prefix)

    async def aclose(self) -> None:
        if self._pipeliner is not None:
            await self._pipeliner.aclose()
        self._deadlines.cancel()
        if self._owns_client:
            await self._client.aclose()

    # -- calls ------------------------------------------------------------------------------------
    async def _call(self, script: LuaScript, numkeys: int, args: Sequence[Any]) -> Any:
        pipeliner = self._pipeliner
        if pipeliner is None:
            return await self._direct(script, numkeys, args)
        future = pipeliner.submit(script, numkeys, args)
        self._deadlines.add(asyncio.get_running_loop(), future)
        return await future

    async def _read_values(self, keys: list[bytes], prefix: str) -> dict[str, str]:
        """``MGET`` ``keys`` in chunks: string values only (MGET answers nil for a key that
        expired since the scan, or that holds a hash); keys that are not UTF-8 are skipped."""
        out: dict[str, str] = {}
        step = self.scan_count
        for start in range(0, len(keys), step):
            chunk = keys[start : start + step]
            replies = await self._command("MGET", partial(self._client.mget, chunk))
            for raw, reply in zip(chunk, replies, strict=True):
                if reply is None:
                    continue
                try:
                    key = raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if key.startswith(prefix):
                    out[key] = decode_text(reply, self.address, f"GET {key}")
        return out

    async def _command(self, what: str, send: Callable[[], Any]) -> Any:
        """One plain command, bounded by ``timeout`` (queueing for a connection included),
        with client errors converted as for scripts."""
        return await bounded_call(
            send, timeout=self.timeout, limiter=self._connections, where=self.address,
            what=what, on_connection_error=self._drop_idle,
        )  # fmt: skip

    async def _direct(self, script: LuaScript, numkeys: int, args: Sequence[Any]) -> Any:
        """One EVALSHA through redis-py's registered script (it reloads on NOSCRIPT)."""
        self.direct_calls += 1
        run = self._scripts[script.name]
        return await bounded_call(
            lambda: run(keys=args[:numkeys], args=args[numkeys:]),
            timeout=self.timeout, limiter=self._connections, where=self.address,
            on_connection_error=self._drop_idle,
        )  # fmt: skip

    async def _drop_idle(self) -> None:
        await _drop_idle_connections(self._client)
