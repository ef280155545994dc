"""Error bodies in the route's dialect, and the small ASGI send helpers every response uses.

Why dialects: SDKs parse errors. The official OpenAI SDK reads ``error.message`` / ``error.code``
from ``{"error": {...}}``; the Anthropic SDK reads ``{"type": "error", "error": {"type", ...}}``.
A 429 in the wrong shape still retries, but the message the user sees would be lost.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Scope = MutableMapping[str, Any]
RawHeaders = list[tuple[bytes, bytes]]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}
JSON_CT = (b"content-type", b"application/json")


def error_body(dialect: str, status: int, message: str, code: str) -> bytes:
    """The JSON error document for ``status`` in the OpenAI or Anthropic shape."""
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        doc: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        kind = _OPENAI_TYPES.get(status, "api_error")
        doc = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json.dumps(doc).encode()


async def send_bytes(
    send: Send, status: int, body: bytes, headers: RawHeaders, content_type: bytes = JSON_CT[1]
) -> None:
    """A complete, non-streamed response."""
    out = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    out += headers
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send,
    dialect: str,
    status: int,
    message: str,
    code: str,
    headers: RawHeaders | None = None,
) -> None:
    await send_bytes(send, status, error_body(dialect, status, message, code), headers or [])


async def serve_lifespan(
    receive: Receive, send: Send, on_shutdown: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Answer the ASGI lifespan protocol (startup, then shutdown after ``on_shutdown``)."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "lifespan.shutdown" and on_shutdown is not None:
            await on_shutdown()
        await send({"type": kind + ".complete"})
        if kind == "lifespan.shutdown":
            return
