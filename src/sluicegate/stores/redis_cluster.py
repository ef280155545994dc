"""The Redis Cluster store: the Redis store's scripts, routed by hash slot.

Every key of one tenant carries the tenant's hash tag (``sg:{acme}:...``), so a decision that
touches only tenant, agent and session buckets is one slot, one node, one atomic script call,
exactly as on a standalone server.

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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot

from sluicegate.errors import ConfigurationError, StoreError, StoreUnavailable
from sluicegate.stores.base import Batch, BatchResult, SettleResult, SettleStatus, check_value
from sluicegate.stores.redis import DEFAULT_TIMEOUT
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
    command_error,
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

__all__ = ["RedisClusterStore", "parse_cluster_url"]

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


class RedisClusterStore:
    """:class:`~sluicegate.stores.base.Store` on Redis Cluster (see the module docstring).

    Options as for :class:`~sluicegate.stores.redis.RedisStore` (``timeout``,
    ``use_caller_clock``, ``ttl_slack``); micro-batching is not implemented for the cluster:
    concurrent decisions run as concurrent script calls on redis-py's per-node pools.
    """

    #: Keys per ``SCAN`` round trip (and per ``MGET`` batch) in :meth:`list_values`.
    scan_count: int = SCAN_COUNT

    def __init__(
        self,
        client: RedisCluster,
        *,
        address: str = "redis-cluster",
        timeout: float = DEFAULT_TIMEOUT,
        use_caller_clock: bool = False,
        ttl_slack: float = 0.0,
        max_connections: int = 64,
        owns_client: bool = True,
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError(f"redis store timeout must be > 0 seconds, got {timeout!r}")
        self._client = client
        self._owns_client = owns_client
        self.address = address
        self.timeout = timeout
        self.codec = Codec(use_caller_clock=use_caller_clock, ttl_slack=ttl_slack)
        self._scripts = {s.name: client.register_script(s.text) for s in SCRIPTS}
        self._background: set[asyncio.Task[Any]] = set()
        # redis-py raises MaxConnectionsError when a node's pool is exhausted; queueing for a
        # connection (within the call's timeout) is what a rate limiter under load needs.
        self._connections = asyncio.Semaphore(max_connections)
        self.stats: dict[str, int] = {
            "decisions": 0,
            "multi_slot": 0,
            "compensations": 0,
            "compensation_failures": 0,
            "abandoned_refunds": 0,
            "record_failures": 0,
            "foreign_settle_failures": 0,
        }

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
        self.stats["decisions"] += 1
        keys = batch.keys
        res = batch.reservation
        rkey = record_key(res.id) if res is not None else None
        rslot = slot_of(rkey) if rkey is not None else -1
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(slot_of(key), []).append(i)
        if len(groups) <= 1 and (rkey is None or rslot in groups or not groups):
            return await self._apply_single(batch, now, rkey)
        self.stats["multi_slot"] += 1
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
        if self._owns_client:
            await self._client.aclose()

    # -- internals ----------------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"cluster {self.address}"

    async def _command(self, what: str, send: Callable[[], Any]) -> Any:
        """One plain command (redis-py routes it by slot), bounded by ``timeout`` like a
        script call, errors converted likewise."""
        try:
            async with asyncio.timeout(self.timeout), self._connections:
                return await send()
        except BaseException as exc:  # noqa: B036 - converted, never swallowed
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, TimeoutError):
                raise StoreUnavailable(
                    f"cannot reach redis at {self._where}: no answer to {what:.200} within "
                    f"{self.timeout * 1000:g} ms"
                ) from None
            raise command_error(exc, self._where, f"{what:.200}") from exc

    async def _call(
        self, script: LuaScript, numkeys: int, args: Sequence[Any], timeout: float | None = None
    ) -> Any:
        try:
            async with asyncio.timeout(timeout or self.timeout), self._connections:
                return await self._scripts[script.name](keys=args[:numkeys], args=args[numkeys:])
        except BaseException as exc:  # noqa: B036 - converted, never swallowed
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, TimeoutError):
                raise StoreUnavailable(
                    f"cannot reach redis at cluster {self.address}: no answer within "
                    f"{(timeout or self.timeout) * 1000:g} ms"
                ) from None
            raise convert_error(exc, f"cluster {self.address}") from exc

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
                self.stats["record_failures"] += 1
                log.warning("reservation_record_failed id=%s error=%s", rkey, exc)
        if pending.abandoned:
            # Nobody waits for this admission any more: give everything back.
            self.stats["abandoned_refunds"] += 1
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
            self.stats["record_failures"] += 1
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
            self.stats["compensations"] += 1
            try:
                await self._call(ADJUST, len(entries), self.codec.adjust_args(entries, now), bound)
            except StoreError as exc:
                self.stats["compensation_failures"] += 1
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
                self.stats["foreign_settle_failures"] += 1
                log.warning(
                    "settle_adjust_failed keys=%s error=%s", ",".join(i[1] for i in items), exc
                )
