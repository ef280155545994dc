"""The Redis Cluster store: the Redis store's scripts, routed by hash slot.

Every key of one tenant carries the tenant's hash tag (``sg:{acme}:...``), so a decision that
touches only tenant, agent and session buckets is one slot, one node, one atomic script call,
exactly as on a standalone server.

**Micro-batching** (``micro_batch=True``, the default): concurrent script calls are grouped by
the primary that owns their slot and leave as pipelined round trips to that node (the
standalone store's ``_Pipeliner``, one per primary on its redis-py connection pool), the groups
to different nodes concurrently; see :class:`_NodeBatching` for MOVED / ASK / TRYAGAIN /
NOSCRIPT (the script did not run: re-sent, bounded) and connection errors (never re-sent: the
calls fail with StoreUnavailable and the slot map is refreshed).

**Decisions that span slots** (a tenant's buckets plus a shared pool ``sg:{pool:openai}:...``)
cannot be one script: Redis Cluster runs a script on one node. They run in *phases*, one atomic
script call per slot, in a fixed order (pools first, the tenant's slot last):

1. Phase *k* checks all of its slot's buckets and consumes them only if all admit.
2. If a phase refuses, every earlier phase is *compensated*: ``adjust.lua`` refunds exactly the
   cost each of its buckets consumed (``gcra_adjust`` with a negative delta, clamped at ``now``
   so a refund never overfills; window counts are decremented, concurrency slots released).
   The buckets after the refusing phase are evaluated with a dry run so the result still reports
   every bucket, as MemoryStore does.
3. When all phases admit, the decision is admitted; its reservation record is written by the
   last phase (or by one more call if the record's slot is none of the phases').

Why this is exact: no phase ever admits beyond its own buckets' limits, so nothing is
over-admitted; the GCRA invariant ``tat >= t_full + admitted * T`` survives a clamped refund, so
a refunded pool never admits more than ``burst + rate * t`` in any interval. A refused decision
leaves no consumption behind, up to one effect: while a phase's consumption is outstanding
(one round trip), a concurrent decision may be refused by that pool (conservative). If a
compensation call itself fails, the consumption stays (counted in ``stats``): a pool can leak at
most the cost of decisions refused during an outage, and GCRA refills it.

A caller that times out does not cancel a multi-phase decision half way: the phases run to the
end in a background task, and an admission nobody waits for any more is refunded.

Settlement follows the same rule: ``settle.lua`` runs on the record's slot and applies the
adjustments of that slot; those of other slots (pool token buckets) follow with ``adjust.lua``.

**Shared values** are plain ``SET PX`` / ``GET`` on the key's slot (``sg:{acme}:scale:...`` is in
the tenant's slot). ``list_values`` scans every primary in turn (``SCAN MATCH`` per node, then
``MGET`` per slot) and merges the keys, so a key is listed once even if a scan repeats it.

**Shards for failover**: :meth:`RedisClusterStore.partitions` names the primaries a call's keys
live on (from the current slot map), so :class:`~sluicegate.stores.failover.FailoverStore` keeps
one health state per primary and a failing shard fails only the decisions that touch it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot

from sluicegate.errors import ConfigurationError, StoreError, StoreUnavailable
from sluicegate.stores.base import Batch, BatchResult, SettleResult, SettleStatus, check_value
from sluicegate.stores.redis import DEFAULT_TIMEOUT, _Call, _Deadlines, _Pipeliner
from sluicegate.stores.redis_scripts import (
    ADJUST,
    APPLY,
    MODE_DRY,
    MODE_VALUES,
    SCAN_COUNT,
    SCRIPTS,
    SETTLE,
    Adjustment,
    Codec,
    Entry,
    LuaScript,
    bounded_call,
    check_options,
    convert_error,
    decode_apply,
    decode_entries,
    decode_settle,
    decode_text,
    decode_values,
    encode_entries,
    glob_escape,
    merge_results,
    record_key,
    socket_timeouts,
    ttl_ms,
)

__all__ = ["UNMAPPED", "RedisClusterStore", "parse_cluster_url"]

log = logging.getLogger("sluicegate.stores.redis_cluster")


def slot_of(key: str) -> int:
    """The hash slot of ``key`` (CRC16 of its first ``{...}`` tag, or of the whole key)."""
    return int(key_slot(key.encode("utf-8")))


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``redis+cluster://[user:password@]h1:p1,h2:p2`` (or ``rediss+cluster://`` for TLS) ->
    startup nodes and client options. Raises ConfigurationError with one line."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis+cluster", "rediss+cluster"):
        raise ConfigurationError(f"not a redis cluster URL: {url!r}")
    netloc = parts.netloc
    options: dict[str, Any] = {}
    if "@" in netloc:
        cred, netloc = netloc.rsplit("@", 1)
        user, _, password = cred.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    if parts.path not in ("", "/", "/0"):
        raise ConfigurationError(f"redis cluster URL {url!r}: a cluster has only database 0")
    nodes: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"redis cluster URL {url!r}: expected host:port[,host:port...], got {item!r}"
            )
        nodes.append((host.strip("[]"), int(port)))
    if parts.scheme == "rediss+cluster":
        options["ssl"] = True
    return nodes, options


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background task's exception as seen: its caller may have stopped waiting (the
    error was reported to it as a timeout), and asyncio would log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class _Pending:
    """A multi-phase decision's progress, so the caller may stop waiting but the phases
    (and their compensation) still run to the end."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


#: The partition name of a slot the slot map does not cover (see
#: :meth:`RedisClusterStore.partitions`).
UNMAPPED = "unmapped"

#: Re-routes (MOVED / ASK / TRYAGAIN: the script did not run) one call may take before it
#: fails with StoreUnavailable.
MAX_REDIRECTS = 2

#: Seconds between two slot-map refreshes asked for by errors (a failing node is asked about
#: at most this often, however many calls fail on it).
REFRESH_INTERVAL = 0.1


class _NodeConnections:
    """One primary's connections (redis-py's ``ClusterNode`` pool) for a :class:`_Pipeliner`.

    After a connection error or a timeout the node's idle connections are closed (a restarted
    node closed them all) and the slot map is refreshed: a failover promotes a replica, and
    the map is how calls find it."""

    __slots__ = ("node", "_batching")

    def __init__(self, node: ClusterNode, batching: _NodeBatching) -> None:
        self.node = node
        self._batching = batching

    async def acquire(self) -> Connection:
        conn: Connection = self.node.acquire_connection()
        reconnect = getattr(self.node, "disconnect_if_needed", None)
        if reconnect is not None:  # redis-py marks connections stale after errors
            try:
                await reconnect(conn)
            except BaseException:
                self.node.release(conn)
                raise
        return conn

    async def release(self, conn: Connection) -> None:
        self.node.release(conn)

    async def failed(self, exc: BaseException) -> None:
        if isinstance(exc, rexc.MaxConnectionsError):
            return  # the client's own limit, not the node
        if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | OSError):
            self._batching.request_refresh()
            close_idle = getattr(self.node, "disconnect_free_connections", None)
            if close_idle is not None:
                try:
                    await close_idle()
                except Exception:  # best effort, on a node that already failed
                    pass


class _NodeBatching:
    """Micro-batching for the cluster store: a :class:`_Pipeliner` per primary.

    A call is routed by its first key's slot (every key of one call shares it: hash tags) to
    the primary redis-py's slot map names, and queued on that node's pipeliner; the nodes'
    pipelines go out concurrently. One timer per distinct timeout fails calls that get no
    answer in time (:class:`_Deadlines`), across re-routes.

    Error replies that mean "not run here": ``MOVED`` patches the slot map (redis-py's
    ``NodesManager``) and re-sends the call to the node named in the reply, ``ASK`` re-sends it
    there behind ``ASKING``, ``TRYAGAIN`` re-sends it after 10 ms; at most
    :data:`MAX_REDIRECTS` times, then it fails. ``NOSCRIPT`` is the pipeliner's (SCRIPT LOAD on
    that node). ``CLUSTERDOWN`` and ``READONLY`` fail the call and refresh the map.
    """

    def __init__(
        self, store: RedisClusterStore, max_batch: int, max_inflight: int, max_pending: int
    ) -> None:
        self._client = store.client
        self._where = f"cluster {store.address}"
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._max_pending = max_pending
        self._read_timeout = max(1.0, store.timeout * 20)
        self._nodes: dict[str, tuple[ClusterNode, _Pipeliner]] = {}
        self._retired: list[_Pipeliner] = []
        #: Counters of retired pipelines already dropped (their work was done).
        self._dropped = {"calls": 0, "round_trips": 0, "script_loads": 0}
        self._deadlines: dict[float, _Deadlines] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._last_refresh = -math.inf
        self._ready = False
        self.redirects = 0
        self.refreshes = 0

    # -- counters -------------------------------------------------------------------------------
    def _all(self) -> list[_Pipeliner]:
        return [p for _, p in self._nodes.values()] + self._retired

    @property
    def calls(self) -> int:
        return self._dropped["calls"] + sum(p.calls for p in self._all())

    @property
    def round_trips(self) -> int:
        return self._dropped["round_trips"] + sum(p.round_trips for p in self._all())

    @property
    def script_loads(self) -> int:
        return self._dropped["script_loads"] + sum(p.script_loads for p in self._all())

    def _retire(self, pipeliner: _Pipeliner) -> None:
        """Keep a replaced node's pipeline until its calls are answered; drop idle retired
        ones (keeping their counts), so a flapping cluster does not grow this list forever."""
        self._retired.append(pipeliner)
        keep = []
        for p in self._retired:
            if p.idle:
                for name in self._dropped:
                    self._dropped[name] += getattr(p, name)
            else:
                keep.append(p)
        self._retired = keep

    # -- calls ----------------------------------------------------------------------------------
    async def call(
        self, script: LuaScript, numkeys: int, args: Sequence[Any], timeout: float
    ) -> Any:
        if not self._ready:
            await self._discover(timeout)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        call = _Call(script, numkeys, args, future)
        try:
            self._route(call, check=True)
        except BaseException as exc:  # noqa: B036 - converted, never swallowed
            future.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise convert_error(exc, self._where) from None
        deadlines = self._deadlines.get(timeout)
        if deadlines is None:
            deadlines = self._deadlines[timeout] = _Deadlines(timeout, self._where)
        deadlines.add(loop, future)
        return await future

    async def _discover(self, timeout: float) -> None:
        """The first call discovers the cluster (``ping`` usually did already)."""
        try:
            async with asyncio.timeout(timeout):
                await self._client.initialize()
        except BaseException as exc:  # noqa: B036 - converted, never swallowed
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, TimeoutError):
                raise StoreUnavailable(
                    f"cannot reach redis at {self._where}: no answer within {timeout * 1000:g} ms"
                ) from None
            raise convert_error(exc, self._where) from None
        self._ready = True

    def _route(self, call: _Call, *, check: bool) -> None:
        """Queue ``call`` on the pipeliner of its slot's primary (keyless: slot 0's)."""
        slot = slot_of(call.args[0]) if call.numkeys else 0
        node = self._client.nodes_manager.get_node_from_slot(slot)
        self._pipeliner(node).enqueue(call, check=check)

    def _pipeliner(self, node: ClusterNode) -> _Pipeliner:
        entry = self._nodes.get(node.name)
        if entry is not None and entry[0] is node:
            return entry[1]
        pipeliner = _Pipeliner(
            _NodeConnections(node, self),
            self._where,
            max_batch=self._max_batch,
            max_inflight=self._max_inflight,
            max_pending=self._max_pending,
            read_timeout=self._read_timeout,
            redirect=partial(self._redirected, node),
        )
        if entry is not None:
            self._retire(entry[1])  # a node object replaced by a refresh
        self._nodes[node.name] = (node, pipeliner)
        return pipeliner

    # -- redirects and the slot map -------------------------------------------------------------
    def _redirected(self, node: ClusterNode, call: _Call, reply: BaseException) -> bool:
        """The pipeliner's hook for error replies: True if ``call`` is re-routed."""
        if isinstance(reply, rexc.ClusterDownError | rexc.ReadOnlyError):
            self.request_refresh()  # a failover in progress: the map may be stale
            return False
        if not isinstance(reply, rexc.AskError | rexc.TryAgainError):
            return False  # MovedError is an AskError
        if call.redirects >= MAX_REDIRECTS:
            self.request_refresh()
            kind = type(reply).__name__.removesuffix("Error").upper()
            call.future.set_exception(
                StoreUnavailable(
                    f"cannot reach redis at {self._where}: still redirected after "
                    f"{call.redirects} attempts ({kind} {str(reply)[:100]})"
                )
            )
            return True
        call.redirects += 1
        self.redirects += 1
        task = asyncio.get_running_loop().create_task(self._reroute(node, call, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _reroute(self, node: ClusterNode, call: _Call, reply: BaseException) -> None:
        try:
            manager = self._client.nodes_manager
            target: ClusterNode | None = None
            if isinstance(reply, rexc.AskError):
                if not reply.host:  # "MOVED 3999 :6381": the answering node's host
                    reply.host = node.host
                    reply.node_addr = (reply.host, reply.port)
                if isinstance(reply, rexc.MovedError):
                    call.asking = False
                    await self._moved(reply)
                else:
                    call.asking = True
                target = manager.get_node(host=reply.host, port=reply.port)
                if target is None:  # a node the map does not know yet
                    await self.refresh_now()
                    target = manager.get_node(host=reply.host, port=reply.port)
                if target is None:
                    raise StoreUnavailable(
                        f"cannot reach redis at {self._where}: redirected to unknown node "
                        f"{reply.host}:{reply.port}"
                    )
            else:  # TRYAGAIN: a slot migration in progress; its keys settle in a moment
                await asyncio.sleep(0.01)
            if call.future.done():
                return
            if target is None:
                self._route(call, check=False)
            else:
                self._pipeliner(target).enqueue(call, check=False)
        except BaseException as exc:  # noqa: B036 - the caller must hear of it
            if not call.future.done():
                call.future.set_exception(convert_error(exc, self._where))
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _moved(self, reply: rexc.MovedError) -> None:
        """Point the slot at the node the reply names (redis-py's ``move_slot``, where it has
        one; else a full refresh), and refresh the whole map soon: a resharding moves many."""
        move = getattr(self._client.nodes_manager, "move_slot", None)
        if move is None:
            await self.refresh_now()
            return
        try:
            result = move(reply)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.debug("slot_map_patch_failed error=%s", exc)
            await self.refresh_now()
        else:
            self.request_refresh()

    def request_refresh(self) -> asyncio.Task[None]:
        """Refresh the slot map in the background (one refresh at a time, at most one per
        :data:`REFRESH_INTERVAL`); the current map serves until it succeeds."""
        task = self._refresher
        if task is None or task.done():
            task = self._refresher = asyncio.get_running_loop().create_task(self._refresh())
        return task

    async def refresh_now(self) -> None:
        await asyncio.shield(self.request_refresh())

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last_refresh + REFRESH_INTERVAL - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            async with asyncio.timeout(self._read_timeout):
                await self._client.nodes_manager.initialize()
        except Exception as exc:
            log.debug("slot_map_refresh_failed cluster=%s error=%s", self._where, exc)
        else:
            self.refreshes += 1
            cache = self._client.nodes_manager.nodes_cache
            for name, (node, pipeliner) in list(self._nodes.items()):
                if cache.get(name) is not node:  # gone from the cluster, or replaced
                    del self._nodes[name]
                    self._retire(pipeliner)
        finally:
            self._last_refresh = loop.time()

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        if self._refresher is not None:
            tasks.append(self._refresher)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for pipeliner in self._all():
            await pipeliner.aclose()
        for deadlines in self._deadlines.values():
            deadlines.cancel()


class RedisClusterStore:
    """:class:`~sluicegate.stores.base.Store` on Redis Cluster (see the module docstring).

    Options as for :class:`~sluicegate.stores.redis.RedisStore` (``timeout``,
    ``use_caller_clock``, ``ttl_slack``, ``micro_batch``, ``max_batch``, ``max_inflight``,
    ``max_pending``); the batching options apply per primary: concurrent script calls are
    grouped by the primary that owns their slot, and each group leaves as pipelined round
    trips to that node (the groups to different nodes concurrently). With ``micro_batch=False``
    every call is its own ``EVALSHA`` through redis-py's ``RedisCluster``.
    """

    #: Keys per ``SCAN`` round trip (and per ``MGET`` batch) in :meth:`list_values`.
    scan_count: int = SCAN_COUNT

    def __init__(
        self,
        client: RedisCluster,
        *,
        address: str = "redis-cluster",
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
        self._background: set[asyncio.Task[Any]] = set()
        self._map_refresh: asyncio.Task[None] | None = None
        # redis-py raises MaxConnectionsError when a node's pool is exhausted; queueing for a
        # connection (within the call's timeout) is what a rate limiter under load needs.
        self._connections = asyncio.Semaphore(max_connections)
        self._batching = (
            _NodeBatching(self, max_batch, max_inflight, max_pending) if micro_batch else None
        )
        self._counts: dict[str, int] = {
            "decisions": 0,
            "multi_slot": 0,
            "compensations": 0,
            "compensation_failures": 0,
            "abandoned_refunds": 0,
            "record_failures": 0,
            "foreign_settle_failures": 0,
            "direct_calls": 0,
        }

    @property
    def stats(self) -> dict[str, int]:
        """Counters so far. ``calls / round_trips`` is the mean batch size; ``redirects``
        counts calls re-routed after MOVED / ASK / TRYAGAIN, ``refreshes`` slot-map refreshes
        after a connection error, a timeout or a redirect."""
        out = dict(self._counts)
        direct = out.pop("direct_calls")
        b = self._batching
        out["calls"] = direct + (b.calls if b else 0)
        out["round_trips"] = direct + (b.round_trips if b else 0)
        out["script_loads"] = b.script_loads if b else 0
        out["redirects"] = b.redirects if b else 0
        out["refreshes"] = b.refreshes if b else 0
        return out

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        max_connections: int = 64,
        **options: Any,
    ) -> RedisClusterStore:
        nodes, client_options = parse_cluster_url(url)
        sock_timeout, sock_connect = socket_timeouts(timeout, connect_timeout)
        client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes],
            socket_timeout=sock_timeout,
            socket_connect_timeout=sock_connect,
            # Retries re-route after MOVED / failover; the store's own timeout bounds them.
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 3),
            max_connections=max_connections,
            **client_options,
        )
        address = ",".join(f"{h}:{p}" for h, p in nodes)
        return cls(
            client, address=address, timeout=timeout, max_connections=max_connections, **options
        )

    @property
    def client(self) -> RedisCluster:
        return self._client

    # -- shards, for FailoverStore (per-shard health) ----------------------------------------
    def partitions(self, keys: Sequence[str]) -> tuple[str, ...]:
        """The names (``host:port``) of the primaries that serve ``keys``' slots in the current
        slot map, each once, in key order (keyless: slot 0's, where such a call is routed).

        :class:`~sluicegate.stores.failover.FailoverStore` keeps one health state per name, so
        a failing shard puts only the decisions that touch it into the failure mode. A slot the
        map does not cover (no map yet) is :data:`UNMAPPED`."""
        nodes = self._client.nodes_manager
        if not keys:
            keys = ("",)
        out: list[str] = []
        last = -1
        for key in keys:
            slot = slot_of(key)
            if slot == last:
                continue  # a tenant's keys share one slot
            last = slot
            try:
                name = nodes.get_node_from_slot(slot).name
            except rexc.SlotNotCoveredError:
                name = UNMAPPED
            if name not in out:
                out.append(name)
        return tuple(out)

    def reservation_partitions(self, reservation_id: str) -> tuple[str, ...]:
        """Where :meth:`settle` runs: the primary of the reservation record's slot (its
        adjustments in other slots are best effort, see the module docstring)."""
        return self.partitions((record_key(reservation_id),))

    def all_partitions(self) -> tuple[str, ...]:
        """Every primary of the current slot map (empty before the cluster is discovered)."""
        return tuple(sorted(node.name for node in self._client.get_primaries()))

    def refresh_partitions(self) -> None:
        """Refresh the slot map in the background (a failover promotes a replica under a new
        name), at most one refresh at a time. FailoverStore calls it while a shard is degraded:
        no calls go to that shard then, so no connection error would ask for it."""
        if self._batching is not None:
            self._batching.request_refresh()
            return
        task = self._map_refresh
        if task is None or task.done():
            task = self._map_refresh = asyncio.ensure_future(self._refresh_map())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(_retrieve)

    async def _refresh_map(self) -> None:
        try:
            async with asyncio.timeout(max(1.0, self.timeout * 20)):
                await self._client.nodes_manager.initialize()
        except Exception as exc:
            log.debug("slot_map_refresh_failed cluster=%s error=%s", self._where, exc)

    async def ping(self) -> None:
        """Discover the cluster and check it answers; one clear line if not."""
        try:
            async with asyncio.timeout(max(self.timeout, 2.0)):
                await self._client.initialize()
                await self._client.ping()
        except BaseException as exc:  # noqa: B036 - converted, never swallowed
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise convert_error(exc, f"cluster {self.address}") from None

    # -- Store protocol -----------------------------------------------------------------------
    async def apply(self, batch: Batch, now: float) -> BatchResult:
        self._counts["decisions"] += 1
        keys = batch.keys
        res = batch.reservation
        rkey = record_key(res.id) if res is not None else None
        rslot = slot_of(rkey) if rkey is not None else -1
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(slot_of(key), []).append(i)
        if len(groups) <= 1 and (rkey is None or rslot in groups or not groups):
            return await self._apply_single(batch, now, rkey)
        self._counts["multi_slot"] += 1
        pending = _Pending()
        task = asyncio.ensure_future(self._apply_phases(batch, now, groups, rkey, rslot, pending))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            if task.done() and not task.cancelled() and task.exception() is None:
                return task.result()  # it finished as the timer fired: not abandoned
            # The task checks this flag after its last phase, with no await in between, so
            # an admission is either returned above or refunded by the task: never both.
            pending.abandoned = True
            raise StoreUnavailable(
                f"cannot reach redis at cluster {self.address}: no answer within "
                f"{self.timeout * 1000:g} ms"
            ) from None
        except asyncio.CancelledError:
            pending.abandoned = True
            raise

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        args = self.codec.settle_args(reservation_id, actual, now)
        result, foreign = decode_settle(await self._call(SETTLE, 1, args))
        if result.status is SettleStatus.APPLIED and foreign not in (b"[]", "[]"):
            task = asyncio.ensure_future(self._settle_foreign(decode_entries(foreign), result, now))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(_retrieve)
            try:
                async with asyncio.timeout(self.timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                pass  # it completes in the background; the record is already settled
        return result

    async def put_value(self, key: str, value: str, ttl: float, now: float) -> None:
        check_value(value, ttl)
        await self._command(f"SET {key}", partial(self._client.set, key, value, px=ttl_ms(ttl)))

    async def get_value(self, key: str, now: float) -> str | None:
        what = f"GET {key}"
        reply = await self._command(what, partial(self._client.get, key))
        return None if reply is None else decode_text(reply, self._where, what)

    async def list_values(self, prefix: str, now: float) -> dict[str, str]:
        pattern = glob_escape(prefix) + "*"
        what = f"SCAN MATCH {pattern}"
        count = self.scan_count
        client = self._client
        await self._command("CLUSTER SLOTS", client.initialize)  # no-op once discovered
        found: set[bytes] = set()  # keys are unique per primary, but SCAN may repeat one
        for node in client.get_primaries():
            cursor = 0
            while True:
                scan = partial(client.scan, cursor, match=pattern, count=count, target_nodes=node)
                cursors, keys = await self._command(f"{what} on {node.name}", scan)
                found.update(keys)
                cursor = int(cursors.get(node.name, 0))
                if cursor == 0:
                    break
        out: dict[str, str] = {}
        ordered = sorted(found)
        for start in range(0, len(ordered), count):
            chunk = ordered[start : start + count]
            replies = await self._command("MGET", partial(client.mget_nonatomic, chunk))
            for raw, reply in zip(chunk, replies, strict=True):
                if reply is None:
                    continue  # expired since the scan, or not a string (a reservation's hash)
                try:
                    key = raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue  # not a key sluicegate wrote
                if key.startswith(prefix):
                    out[key] = decode_text(reply, self._where, f"GET {key}")
        return out

    async def aclose(self) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=max(1.0, self.timeout * 10))
        if self._batching is not None:
            await self._batching.aclose()
        if self._owns_client:
            await self._client.aclose()

    # -- internals ----------------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"cluster {self.address}"

    async def _command(self, what: str, send: Callable[[], Any]) -> Any:
        """One plain command (redis-py routes it by slot), bounded by ``timeout`` like a
        script call, errors converted likewise."""
        return await bounded_call(
            send, timeout=self.timeout, limiter=self._connections, where=self._where, what=what
        )

    async def _call(
        self, script: LuaScript, numkeys: int, args: Sequence[Any], timeout: float | None = None
    ) -> Any:
        if self._batching is not None:
            return await self._batching.call(script, numkeys, args, timeout or self.timeout)
        self._counts["direct_calls"] += 1
        run = self._scripts[script.name]
        return await bounded_call(
            lambda: run(keys=args[:numkeys], args=args[numkeys:]),
            timeout=timeout or self.timeout, limiter=self._connections, where=self._where,
        )  # fmt: skip

    def _record(self, batch: Batch, rkey: str, rslot: int) -> tuple[str, float, float, str, str]:
        res = batch.reservation
        assert res is not None
        local: list[Entry] = []
        foreign: list[Entry] = []
        for entry in self.codec.reservation_entries(batch):
            (local if slot_of(entry[1]) == rslot else foreign).append(entry)
        return (rkey, res.reserved, res.ttl, encode_entries(local), encode_entries(foreign))

    async def _apply_single(self, batch: Batch, now: float, rkey: str | None) -> BatchResult:
        record = self._record(batch, rkey, slot_of(rkey)) if rkey is not None else None
        numkeys, args = self.codec.apply_args(
            batch.keys, batch.limits, batch.costs, now, batch.max_delay, record=record
        )
        return decode_apply(await self._call(APPLY, numkeys, args), len(batch.keys))

    async def _apply_phases(
        self,
        batch: Batch,
        now: float,
        groups: dict[int, list[int]],
        rkey: str | None,
        rslot: int,
        pending: _Pending,
    ) -> BatchResult:
        keys, limits, costs = batch.keys, batch.limits, batch.costs
        last = rslot if rslot in groups else slot_of(keys[0])
        order = [s for s in groups if s != last] + [last]
        parts: list[tuple[int, float, float] | None] = [None] * len(keys)
        done: list[tuple[list[int], tuple[list[str], list[str]] | None]] = []
        delay = 0.0
        # Phase calls get a longer bound than the caller's timeout: the caller may give up, but
        # the phases must finish (or fail) so that compensation knows what happened.
        bound = max(1.0, self.timeout * 10)
        for n_phase, slot in enumerate(order):
            idx = groups[slot]
            record = None
            if rkey is not None and slot == rslot:
                record = self._record(batch, rkey, rslot)
            numkeys, args = self.codec.apply_args(
                [keys[i] for i in idx],
                [limits[i] for i in idx],
                [costs[i] for i in idx],
                now,
                batch.max_delay,
                mode=MODE_VALUES,
                record=record,
            )
            try:
                reply = await self._call(APPLY, numkeys, args, bound)
            except StoreError:
                await self._compensate(batch, now, done)
                raise
            result = decode_apply(reply, len(idx))
            for j, i in enumerate(idx):
                parts[i] = (result.remaining[j], result.reset[j], result.retry_after[j])
            if not result.allowed:
                await self._compensate(batch, now, done)
                for later in order[n_phase + 1 :]:
                    lidx = groups[later]
                    numkeys, args = self.codec.apply_args(
                        [keys[i] for i in lidx],
                        [limits[i] for i in lidx],
                        [costs[i] for i in lidx],
                        now,
                        batch.max_delay,
                        mode=MODE_DRY,
                    )
                    dry = decode_apply(await self._call(APPLY, numkeys, args, bound), len(lidx))
                    for j, i in enumerate(lidx):
                        parts[i] = (dry.remaining[j], dry.reset[j], dry.retry_after[j])
                return merge_results(False, 0.0, parts)
            done.append((idx, decode_values(reply, len(idx))))
            delay = max(delay, result.delay)
        if rkey is not None and rslot not in groups:
            # The record's slot holds none of the buckets: one more call writes it. If it fails
            # the decision stands without a reservation (tokens stay charged: the safe side).
            record = self._record(batch, rkey, rslot)
            numkeys, args = self.codec.apply_args([], [], [], now, 0.0, record=record)
            try:
                await self._call(APPLY, numkeys, args, bound)
            except StoreError as exc:
                self._counts["record_failures"] += 1
                log.warning("reservation_record_failed id=%s error=%s", rkey, exc)
        if pending.abandoned:
            # Nobody waits for this admission any more: give everything back.
            self._counts["abandoned_refunds"] += 1
            await self._compensate(batch, now, done)
            if rkey is not None:
                await self._release_record(rkey, bound)
        return merge_results(True, delay, parts)

    async def _release_record(self, rkey: str, bound: float) -> None:
        """Delete an abandoned decision's record: everything it reserved was just refunded, so
        a late settle must find nothing (UNKNOWN) rather than refund or release twice."""
        try:
            async with asyncio.timeout(bound):
                await self._client.delete(rkey)
        except Exception as exc:
            self._counts["record_failures"] += 1
            log.warning("abandoned_record_delete_failed id=%s error=%s", rkey, exc)

    async def _compensate(
        self,
        batch: Batch,
        now: float,
        phases: list[tuple[list[int], tuple[list[str], list[str]] | None]],
    ) -> None:
        """Undo what the admitted phases consumed (one adjust.lua call per phase): restore the
        prior value where the bucket is untouched since, refund the cost where it is not."""
        keys, limits, costs = batch.keys, batch.limits, batch.costs
        bound = max(1.0, self.timeout * 10)
        for idx, values in phases:
            entries: list[Adjustment] = []
            for j, i in enumerate(idx):
                prior, written = ("", "") if values is None else (values[0][j], values[1][j])
                if values is not None and written == "":
                    continue  # this op wrote nothing (cost 0): nothing to undo
                cost = float(costs[i])
                code, period, _ = self.codec.limit_args(limits[i])
                if code == "c":
                    entries.append(("c", keys[i], "c", "0", cost, written, prior))
                elif cost > 0:
                    entries.append(("t", keys[i], code, period, -cost, written, prior))
            if not entries:
                continue
            self._counts["compensations"] += 1
            try:
                await self._call(ADJUST, len(entries), self.codec.adjust_args(entries, now), bound)
            except StoreError as exc:
                self._counts["compensation_failures"] += 1
                log.warning(
                    "compensation_failed keys=%s error=%s", ",".join(e[1] for e in entries), exc
                )

    async def _settle_foreign(self, entries: list[Entry], result: SettleResult, now: float) -> None:
        by_slot: dict[int, list[Adjustment]] = {}
        for kind, key, code, value in entries:
            item: Adjustment
            if kind == "c":
                item = ("c", key, "c", "0", float(value), "", "")
            elif result.delta != 0:
                item = ("t", key, code, value, result.delta, "", "")
            else:
                continue
            by_slot.setdefault(slot_of(key), []).append(item)
        bound = max(1.0, self.timeout * 10)
        for items in by_slot.values():
            try:
                await self._call(ADJUST, len(items), self.codec.adjust_args(items, now), bound)
            except StoreError as exc:
                self._counts["foreign_settle_failures"] += 1
                log.warning(
                    "settle_adjust_failed keys=%s error=%s", ",".join(i[1] for i in items), exc
                )
