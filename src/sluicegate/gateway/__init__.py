"""The reverse proxy: a plain ASGI app (:class:`Gateway`), its admin API, transports and server.

Its modules need web dependencies (httptools, uvloop, uvicorn, prometheus_client); the core
package never imports this one. Names are loaded lazily so that ``sluicegate.gateway.cli`` can be
imported by the core CLI without pulling in any of them until ``serve`` actually runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FastTransport": "sluicegate.gateway.transport",
    "HttpxTransport": "sluicegate.gateway.transport",
    "Transport": "sluicegate.gateway.transport",
    "UpstreamError": "sluicegate.gateway.transport",
    "Gateway": "sluicegate.gateway.proxy",
    "GatewayConfig": "sluicegate.gateway.config",
    "load_gateway_policy": "sluicegate.gateway.config",
    "GatewayServer": "sluicegate.gateway.server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sluicegate.gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
