"""Store selection from a URL: the policy's ``store:`` key or the CLI's ``--store``.

``memory``                                  the embedded :class:`MemoryStore` (one process)
``redis://[user:pass@]host[:port][/db]``    :class:`RedisStore` (``rediss://`` for TLS)
``redis+cluster://h1:p1[,h2:p2...]``        :class:`RedisClusterStore` (``rediss+cluster://``)

Redis stores are wrapped in :class:`FailoverStore` (``failure_mode``, default ``fail_closed``)
so that outages are logged, counted and handled the configured way.

Errors are one line each, fit for a CLI: a malformed URL or unknown option raises
:class:`~sluicegate.errors.ConfigurationError`; a server that does not answer at startup raises
:class:`~sluicegate.errors.StoreUnavailable` (``cannot reach redis at 127.0.0.1:6390: connection
refused``). Pass ``check=False`` to start anyway (the failure mode then applies from the first
decision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sluicegate.errors import ConfigurationError, StoreError
from sluicegate.stores.base import Store
from sluicegate.stores.failover import FailoverStore, FailureMode
from sluicegate.stores.memory import MemoryStore

__all__ = ["StoreURL", "open_store", "parse_store_url"]

#: Options each kind of store accepts (beyond ``check``).
_REDIS_OPTIONS = {
    "timeout", "connect_timeout", "max_connections", "micro_batch", "max_batch", "max_inflight",
    "max_pending", "use_caller_clock", "ttl_slack",
}  # fmt: skip
_CLUSTER_OPTIONS = {
    "timeout", "connect_timeout", "max_connections", "micro_batch", "max_batch", "max_inflight",
    "max_pending", "use_caller_clock", "ttl_slack",
}  # fmt: skip
_FAILOVER_OPTIONS = {"failure_mode", "replicas", "backoff", "max_backoff", "clock"}
_MEMORY_OPTIONS = {"sweep_interval", "sweep_batch"}


@dataclass(frozen=True)
class StoreURL:
    """A validated store URL: ``kind`` is ``memory``, ``redis`` or ``cluster``."""

    kind: str
    url: str
    display: str  #: the URL without credentials, for logs and errors


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***@{host}").geturl()


def parse_store_url(url: str) -> StoreURL:
    """Validate a store URL without connecting (for ``sluicegate validate``)."""
    text = url.strip()
    if text in ("memory", "memory://", "memory:"):
        return StoreURL("memory", "memory", "memory")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ConfigurationError(f"invalid store URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        from sluicegate.stores.redis_cluster import parse_cluster_url

        parse_cluster_url(text)
        return StoreURL("cluster", text, _redact(text))
    if scheme in ("redis", "rediss", "unix"):
        try:
            port = parts.port
        except ValueError:
            raise ConfigurationError(f"invalid store URL {url!r}: bad port") from None
        if scheme != "unix" and not parts.hostname:
            raise ConfigurationError(f"invalid store URL {url!r}: no host (redis://host:port/db)")
        path = parts.path.strip("/")
        if scheme != "unix" and path and not path.isdigit():
            raise ConfigurationError(
                f"invalid store URL {url!r}: the path must be a database number, got {path!r}"
            )
        del port
        return StoreURL("redis", text, _redact(text))
    raise ConfigurationError(
        f"unsupported store URL {url!r}: use memory, redis://host:port/db, rediss://..., "
        "or redis+cluster://host:port,host:port"
    )


def _take(options: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    return {k: options.pop(k) for k in list(options) if k in allowed}


async def open_store(url: str, *, check: bool = True, **options: Any) -> Store:
    """Open the store named by ``url``; Redis stores are wrapped in a :class:`FailoverStore`.

    Async because it connects: with ``check`` (the default) it pings the server, so a wrong
    address fails at startup with one line instead of at the first decision.
    """
    spec = parse_store_url(url)
    opts = dict(options)
    if spec.kind == "memory":
        mem = _take(opts, _MEMORY_OPTIONS)
        _take(opts, _FAILOVER_OPTIONS)  # meaningless for an in-process store
        _reject(opts, spec)
        return MemoryStore(**mem)
    failover = _take(opts, _FAILOVER_OPTIONS)
    mode = failover.pop("failure_mode", FailureMode.FAIL_CLOSED)
    try:
        mode = FailureMode(mode)
    except ValueError:
        allowed = ", ".join(m.value for m in FailureMode)
        raise ConfigurationError(f"unknown failure_mode {mode!r} (allowed: {allowed})") from None
    primary: Any
    if spec.kind == "cluster":
        from sluicegate.stores.redis_cluster import RedisClusterStore

        store_opts = _take(opts, _CLUSTER_OPTIONS)
        _reject(opts, spec)
        primary = RedisClusterStore.from_url(spec.url, **store_opts)
        name = f"redis cluster {primary.address}"
    else:
        from sluicegate.stores.redis import RedisStore

        store_opts = _take(opts, _REDIS_OPTIONS)
        _reject(opts, spec)
        primary = RedisStore.from_url(spec.url, **store_opts)
        name = f"redis {primary.address}"
    if check:
        try:
            await primary.ping()
        except StoreError:
            await primary.aclose()
            raise
    return FailoverStore(primary, mode=mode, name=name, **failover)


def _reject(leftover: dict[str, Any], spec: StoreURL) -> None:
    if leftover:
        names = ", ".join(sorted(leftover))
        raise ConfigurationError(f"unknown option(s) for a {spec.kind} store: {names}")
