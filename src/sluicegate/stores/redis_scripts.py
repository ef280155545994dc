"""What the Redis stores send and receive: Lua sources, argument encoding, reply decoding, and
the conversion of client errors into :mod:`sluicegate.errors`.

Shared by :mod:`sluicegate.stores.redis` (standalone) and :mod:`sluicegate.stores.redis_cluster`
so the wire format exists once. Nothing here does I/O.

Wire format (the Lua files carry the authoritative KEYS/ARGV header comments):

* ``apply.lua`` takes the bucket keys and, per op, ``algorithm, period, capacity, cost``; floats
  travel as Python ``repr`` (shortest round-trip form), come back as ``%.17g`` strings, so no
  precision is lost in either direction.
* A reservation is a hash at :func:`record_key`; its adjustments are a JSON list of 4-tuples
  ``kind, key, algorithm, value`` (``value`` = period for token buckets, cost for concurrency),
  split into *local* (same hash slot as the record, applied by ``settle.lua`` itself) and
  *foreign* (other slots, returned to the client; only shared pools in Redis Cluster).
* Shared values are no script: ``SET key value PX ms`` (:func:`ttl_ms`), ``GET``, and ``SCAN
  MATCH <escaped prefix>*`` (:func:`glob_escape`) + ``MGET`` for listings.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import hashlib
import json
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis import exceptions as rexc

from sluicegate.errors import ConfigurationError, StoreError, StoreProtocolError, StoreUnavailable
from sluicegate.stores.base import (
    Algorithm,
    Batch,
    BatchResult,
    Limit,
    SettleResult,
    SettleStatus,
)

#: Seconds subtracted from Redis ``TIME`` inside the scripts (``EPOCH`` in lib.lua). Keeps the
#: decision clock near 1e8 s, where a double's ulp is ~15 ns, as algorithms/gcra.py assumes.
EPOCH = 1_700_000_000

ALGORITHM_CODE: dict[Algorithm, str] = {
    Algorithm.GCRA: "g",
    Algorithm.SLIDING_WINDOW: "s",
    Algorithm.FIXED_WINDOW: "f",
    Algorithm.CONCURRENCY: "c",
}

#: Every reservation record lives at ``sg:r:<id>``. Redis Cluster hashes only the first
#: ``{...}`` of a key, so an id that starts with its tenant's tag (``{acme}...``) puts the
#: record in the tenant's slot and a decision stays one script call (see docs/redis.md).
RECORD_PREFIX = "sg:r:"


def record_key(reservation_id: str) -> str:
    """The key of a reservation record (hash-tagged by the id's own ``{tag}``, if any)."""
    return RECORD_PREFIX + reservation_id


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script's full text (lib.lua + body) and its SHA1, computed locally so EVALSHA can be
    sent without a round trip; servers that lack it answer NOSCRIPT and get SCRIPT LOAD."""

    name: str
    text: str
    sha: str


def _read(name: str) -> str:
    return resources.files("sluicegate.stores").joinpath("lua", name).read_text("utf-8")


def load_script(name: str) -> LuaScript:
    """Load ``lua/<name>.lua`` with the shared library prepended."""
    text = _read("lib.lua") + "\n" + _read(f"{name}.lua")
    return LuaScript(name, text, hashlib.sha1(text.encode("utf-8")).hexdigest())


APPLY = load_script("apply")
SETTLE = load_script("settle")
ADJUST = load_script("adjust")
SCRIPTS = (APPLY, SETTLE, ADJUST)

Entry = tuple[str, str, str, str]
"""One reservation adjustment: ``(kind, key, algorithm code, value)``; see the module docstring."""

Adjustment = tuple[str, str, str, str, float, str, str]
"""One ``adjust.lua`` input: ``(kind, key, algorithm code, period, amount, written, prior)``;
``written``/``prior`` are the raw values of an exact compensation (``""`` otherwise)."""

#: ``apply.lua`` modes (ARGV[4]).
MODE_APPLY = "0"
MODE_DRY = "1"
MODE_VALUES = "2"


class Codec:
    """Encodes batches for the scripts and decodes their replies.

    ``use_caller_clock`` sends the caller's ``now`` as the script's clock (tests and the
    cross-check use a virtual clock); otherwise the scripts read Redis ``TIME``, the one clock
    all replicas share. ``ttl_slack`` (seconds) lengthens every key TTL: with a virtual clock
    the TTLs still run in real time, and the slack keeps keys alive while a test's virtual time
    runs slower than real time (the stored values carry their own expiry, so results do not
    depend on it).
    """

    __slots__ = ("use_caller_clock", "slack_ms", "_limits", "_blocks")

    def __init__(self, *, use_caller_clock: bool = False, ttl_slack: float = 0.0) -> None:
        if ttl_slack < 0:
            raise ValueError("ttl_slack must be >= 0")
        self.use_caller_clock = use_caller_clock
        self.slack_ms = int(round(ttl_slack * 1000))
        self._limits: dict[Limit, tuple[str, str, str]] = {}
        self._blocks: dict[int, tuple[Sequence[Limit], list[str]]] = {}

    def now_arg(self, now: float) -> str:
        return repr(float(now)) if self.use_caller_clock else ""

    def limit_args(self, limit: Limit) -> tuple[str, str, str]:
        """``(algorithm code, period, capacity)`` as script arguments, cached per limit."""
        cached = self._limits.get(limit)
        if cached is None:
            cached = (
                ALGORITHM_CODE[limit.algorithm],
                repr(float(limit.period)),
                repr(float(limit.capacity)),
            )
            if len(self._limits) < 65_536:
                self._limits[limit] = cached
        return cached

    def apply_args(
        self,
        keys: Sequence[str],
        limits: Sequence[Limit],
        costs: Sequence[float],
        now: float,
        max_delay: float,
        *,
        mode: str = MODE_APPLY,
        record: tuple[str, float, float, str, str] | None = None,
    ) -> tuple[int, list[Any]]:
        """``(numkeys, KEYS + ARGV)`` for ``apply.lua`` (``mode``: :data:`MODE_APPLY`,
        :data:`MODE_DRY` or :data:`MODE_VALUES`; ``record``: key, reserved, ttl, local and
        foreign adjustments as JSON)."""
        n = len(keys)
        out: list[Any] = list(keys)
        if record is not None:
            out.append(record[0])
        out += (self.now_arg(now), self.slack_ms, repr(float(max_delay)), mode, n)
        out += self.limits_block(limits)
        out += [repr(float(c)) for c in costs]
        if record is not None:
            out += (repr(float(record[1])), repr(float(record[2])), record[3], record[4])
            return n + 1, out
        return n, out

    def limits_block(self, limits: Sequence[Limit]) -> list[str]:
        """The ``algorithm, period, capacity`` arguments of every op, cached per limits tuple:
        the engine passes the same tuple for every decision of a plan. (Only tuples: a list
        could change under the same id.)"""
        cached = self._blocks.get(id(limits))
        if cached is not None and cached[0] is limits:
            return cached[1]
        block: list[str] = []
        for limit in limits:
            block += self.limit_args(limit)
        if type(limits) is not tuple:
            return block
        if len(self._blocks) >= 4096:
            self._blocks.clear()
        self._blocks[id(limits)] = (limits, block)  # holding `limits` keeps its id unique
        return block

    def reservation_entries(self, batch: Batch) -> list[Entry]:
        """The adjustments ``settle`` will apply, tokens first, then concurrency releases
        (the order of ``MemoryStore.settle_sync``)."""
        res = batch.reservation
        assert res is not None
        keys, limits, costs = batch.keys, batch.limits, batch.costs
        entries: list[Entry] = []
        for i in res.token_ops:
            code, period, _ = self.limit_args(limits[i])
            entries.append(("t", keys[i], code, period))
        for i in res.concurrency_ops:
            entries.append(("c", keys[i], "c", repr(float(costs[i]))))
        return entries

    def reservation_json(self, batch: Batch) -> str:
        """:func:`encode_entries` of :meth:`reservation_entries`, built in one pass (this runs
        for every decision that reserves tokens)."""
        res = batch.reservation
        assert res is not None
        keys, limits, costs = batch.keys, batch.limits, batch.costs
        limit_args = self.limit_args
        parts: list[str] = []
        named: list[str] = []
        for i in res.token_ops:
            code, period, _ = limit_args(limits[i])
            parts.append(f'"t","{keys[i]}","{code}","{period}"')
            named.append(keys[i])
        for i in res.concurrency_ops:
            parts.append(f'"c","{keys[i]}","c","{float(costs[i])!r}"')
            named.append(keys[i])
        if _JSON_PLAIN.search("".join(named)) is None:
            return "[" + ",".join(parts) + "]"
        return encode_entries(self.reservation_entries(batch))  # keys that need escaping

    def adjust_args(self, entries: Sequence[Adjustment], now: float) -> list[Any]:
        """KEYS followed by ARGV for ``adjust.lua`` (one key per adjustment)."""
        out: list[Any] = [e[1] for e in entries]
        out += (self.now_arg(now), self.slack_ms)
        for kind, _key, code, period, amount, written, prior in entries:
            out += (kind, code, period, repr(float(amount)), written, prior)
        return out

    def settle_args(self, reservation_id: str, actual: float, now: float) -> list[Any]:
        return [record_key(reservation_id), self.now_arg(now), self.slack_ms, repr(float(actual))]


_JSON_PLAIN = re.compile(r'[^\x20-\x7e]|["\\]')


def encode_entries(entries: Sequence[Entry]) -> str:
    """A JSON list of strings, which ``cjson.decode`` reads back losslessly. Engine keys are
    plain ASCII, for which the JSON is just quotes and commas (3x faster than json.dumps)."""
    flat: list[str] = []
    for entry in entries:
        flat += entry
    if not flat:
        return "[]"
    joined = '","'.join(flat)
    if _JSON_PLAIN.search(joined) is None:
        return '["' + joined + '"]'
    return json.dumps(flat, separators=(",", ":"))


def decode_entries(payload: bytes | str) -> list[Entry]:
    flat = json.loads(payload)
    if not isinstance(flat, list) or len(flat) % 4:
        raise StoreProtocolError(f"malformed reservation adjustments: {payload!r:.80}")
    return [(flat[i], flat[i + 1], flat[i + 2], flat[i + 3]) for i in range(0, len(flat), 4)]


def decode_apply(reply: Any, n: int) -> BatchResult:
    """``apply.lua``'s flat reply -> :class:`BatchResult` with the same values (and the same
    column types: lists) as MemoryStore returns."""
    try:
        if len(reply) != 2 + 3 * n and len(reply) != 2 + 5 * n:
            raise IndexError
        return BatchResult(
            reply[0] == 1,
            float(reply[1]),
            reply[2 : 2 + n],  # Lua integers arrive as Python ints
            list(map(float, reply[2 + n : 2 + 2 * n])),
            list(map(float, reply[2 + 2 * n : 2 + 3 * n])),
        )
    except (IndexError, TypeError, ValueError):
        raise StoreProtocolError(f"unexpected reply from apply.lua: {reply!r:.120}") from None


def decode_values(reply: Any, n: int) -> tuple[list[str], list[str]] | None:
    """The ``(prior, written)`` raw values of a :data:`MODE_VALUES` reply that admitted."""
    if len(reply) != 2 + 5 * n:
        return None

    def text(x: Any) -> str:
        return x.decode("utf-8") if isinstance(x, bytes) else str(x)

    return (
        [text(x) for x in reply[2 + 3 * n : 2 + 4 * n]],
        [text(x) for x in reply[2 + 4 * n : 2 + 5 * n]],
    )


def decode_settle(reply: Any) -> tuple[SettleResult, bytes | str]:
    """``settle.lua``'s reply -> (result, foreign adjustments JSON)."""
    try:
        status = SettleStatus(int(reply[0]))
        return SettleResult(status, float(reply[1])), reply[2]
    except (IndexError, TypeError, ValueError):
        raise StoreProtocolError(f"unexpected reply from settle.lua: {reply!r:.120}") from None


def merge_results(
    allowed: bool, delay: float, parts: Sequence[tuple[int, float, float] | None]
) -> BatchResult:
    """Assemble a multi-slot decision's per-op ``(remaining, reset, retry_after)`` columns."""
    remaining: list[int] = []
    resets: list[float] = []
    retries: list[float] = []
    for part in parts:
        if part is None:
            raise StoreProtocolError("a bucket of a multi-slot decision got no result")
        remaining.append(part[0])
        resets.append(part[1])
        retries.append(part[2])
    return BatchResult(allowed, delay if allowed else 0.0, remaining, resets, retries)


# -- shared values ------------------------------------------------------------------------------

#: Keys asked of ``SCAN`` per round trip (and read per ``MGET``) by ``list_values``.
SCAN_COUNT = 1000

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters (``* ? [ ] \\``) backslash-escaped, so a ``SCAN
    MATCH`` pattern built from it matches it literally."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def ttl_ms(ttl: float) -> int:
    """``SET ... PX`` milliseconds for a value's ``ttl`` in seconds: rounded, at least 1."""
    return max(1, round(ttl * 1000))


def decode_text(reply: Any, where: str, what: str) -> str:
    """A string reply (``bytes`` from redis-py) as ``str``; not UTF-8 is a protocol error."""
    if isinstance(reply, str):
        return reply
    if isinstance(reply, bytes | bytearray):
        try:
            return bytes(reply).decode("utf-8")
        except UnicodeDecodeError:
            raise StoreProtocolError(f"redis at {where}: {what} is not UTF-8 text") from None
    raise StoreProtocolError(f"redis at {where}: unexpected reply to {what}: {reply!r:.120}")


def command_error(exc: BaseException, where: str, what: str) -> StoreError:
    """:func:`convert_error` for a plain command (``GET sg:{acme}:scale:x``) rather than a
    script: a refusal names the command (``WRONGTYPE`` when the key holds a bucket's hash)."""
    if isinstance(exc, rexc.ResponseError) and not isinstance(exc, _UNAVAILABLE):
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreProtocolError(f"redis at {where} refused {what}: {msg[:300]}")
    return convert_error(exc, where)


# -- errors -------------------------------------------------------------------------------------

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,  # includes BusyLoadingError, MaxConnectionsError
    rexc.TimeoutError,
    rexc.ClusterDownError,  # includes MasterDownError
    rexc.TryAgainError,
    rexc.ReadOnlyError,  # wrote to a demoted master during failover
    rexc.SlotNotCoveredError,
    rexc.RedisClusterUnreachableError,
    rexc.AskError,  # includes MovedError, when redirections are exhausted
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
)


_ERRNO = re.compile(r"Error (\d+) (?:connecting|while)")
_ERRNO_REASONS = {
    errno_mod.ECONNREFUSED: "connection refused",
    errno_mod.ECONNRESET: "connection lost",
    errno_mod.EHOSTUNREACH: "host unreachable",
    errno_mod.ENETUNREACH: "network unreachable",
    errno_mod.ETIMEDOUT: "timed out",
    -2: "unknown host",  # EAI_NONAME from getaddrinfo
    -3: "unknown host",  # EAI_AGAIN
}


def _reason(exc: BaseException) -> str:
    """A short, lower-case reason for one line of output."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | rexc.TimeoutError | socket.timeout):
        return "timed out"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    errno = getattr(exc, "errno", None)
    match = _ERRNO.search(text)
    if match:
        errno = int(match.group(1))
    if isinstance(errno, int) and errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[errno]
    low = text.lower()
    if "refused" in low:
        return "connection refused"
    if "name or service not known" in low or "nodename nor servname" in low:
        return "unknown host"
    if "timed out" in low or "timeout" in low:
        return "timed out"
    if "reset by peer" in low or "closed by server" in low or "connection closed" in low:
        return "connection lost"
    return text[:200]


def convert_error(exc: BaseException, where: str) -> StoreError:
    """Map a client exception to :class:`StoreUnavailable` (transient: the backend is down,
    slow or failing over) or :class:`StoreProtocolError` (it answered something unusable)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailable(f"cannot reach redis at {where}: {_reason(exc)}")
    if isinstance(exc, rexc.RedisClusterException) and "connect" in str(exc).lower():
        return StoreUnavailable(f"cannot reach redis at {where}: {_reason(exc)}")
    if isinstance(exc, rexc.ResponseError):
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreProtocolError(f"redis at {where} refused a sluicegate script: {msg[:300]}")
    if isinstance(exc, rexc.RedisError | rexc.RedisClusterException):
        return StoreProtocolError(f"redis at {where}: {_reason(exc)}")
    return StoreProtocolError(f"redis at {where}: unexpected {type(exc).__name__}: {exc}"[:300])


def check_options(timeout: float, max_batch: int, max_inflight: int) -> None:
    """The options both Redis stores validate the same way (a ConfigurationError)."""
    if not timeout > 0:
        raise ConfigurationError(f"redis store timeout must be > 0 seconds, got {timeout!r}")
    if max_batch < 1 or max_inflight < 1:
        raise ConfigurationError("redis store max_batch and max_inflight must be >= 1")


async def bounded_call(
    send: Callable[[], Awaitable[Any]],
    *,
    timeout: float,
    limiter: asyncio.Semaphore,
    where: str,
    what: str | None = None,
    on_connection_error: Callable[[], Awaitable[None]] | None = None,
) -> Any:
    """One call outside the pipeliner (a plain command, or an unbatched script when ``what``
    is None): bounded by ``timeout``, queueing for a connection (``limiter``) included, and
    every client error converted (``command_error`` for commands, ``convert_error`` for
    scripts), so both stores fail the same way. ``on_connection_error`` runs after a
    connection error (the standalone store drops its idle connections then)."""
    try:
        async with asyncio.timeout(timeout), limiter:
            return await send()
    except BaseException as exc:  # noqa: B036 - converted, never swallowed
        if isinstance(exc, asyncio.CancelledError):
            raise
        if isinstance(exc, TimeoutError):
            to = f" to {what:.200}" if what is not None else ""
            raise StoreUnavailable(
                f"cannot reach redis at {where}: no answer{to} within {timeout * 1000:g} ms"
            ) from None
        if on_connection_error is not None and isinstance(exc, rexc.ConnectionError | OSError):
            await on_connection_error()
        if what is None:
            raise convert_error(exc, where) from exc
        raise command_error(exc, where, f"{what:.200}") from exc


def socket_timeouts(timeout: float, connect_timeout: float | None) -> tuple[float, float]:
    """redis-py ``(socket_timeout, socket_connect_timeout)`` for a store whose calls are bounded
    by ``timeout``: generous, because they only free connections stuck on a dead peer; the
    store's own per-call timer is what bounds a decision."""
    return max(1.0, timeout * 20), connect_timeout or max(0.5, timeout * 10)
