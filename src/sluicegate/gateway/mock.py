"""A built-in mock of an OpenAI-compatible (and Anthropic Messages) upstream.

Why: the README's first command must show the gateway working end to end with no LLM at hand,
and the tests need an upstream that reports realistic ``usage`` so reconciliation can be checked
exactly. Prompt tokens are counted with the same estimator the gateway uses (so a mock answer
"costs" what a real one would); output is ``min(max_tokens, 24)`` words by default.

Endpoints: ``POST /v1/chat/completions`` (JSON, or SSE with ``stream: true``, final usage chunk
when ``stream_options.include_usage``), ``/v1/completions``, ``/v1/embeddings``,
``/v1/responses`` (JSON only), ``/v1/messages`` (Anthropic, JSON or SSE), ``GET /v1/models``.

Test controls (request headers, never sent by real clients): ``x-mock-delay`` seconds before the
response head, ``x-mock-chunk-delay`` seconds between SSE events, ``x-mock-status`` forces a
status, ``x-mock-output-tokens`` sets the output length, ``x-mock-no-usage: 1`` omits usage.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import MutableMapping
from typing import Any

from sluicegate.cost import Dialect, estimate_request
from sluicegate.gateway.responses import Receive, Scope, Send, send_bytes, serve_lifespan

_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


class MockUpstream:
    """ASGI app. ``requests`` keeps the last 100 requests' ``(method, path, headers)``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._ids = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method: str = scope["method"]
        path: str = scope["path"]
        self.requests.append((method, path, headers))
        del self.requests[:-100]
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        delay = float(headers.get("x-mock-delay", "0") or 0)
        if delay:
            await asyncio.sleep(delay)
        forced = headers.get("x-mock-status")
        if forced:
            status = int(forced)
            err = {"error": {"message": f"mock status {status}", "type": "mock", "code": None}}
            await send_bytes(send, status, json.dumps(err).encode(), [])
            return
        if method == "GET" and path.rstrip("/").endswith("/models"):
            data = [{"id": m, "object": "model", "owned_by": "mock"} for m in ("gpt-4o-mini",)]
            await _json(send, {"object": "list", "data": data})
            return
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            err = {"error": {"message": "invalid JSON", "type": "invalid_request_error"}}
            await send_bytes(send, 400, json.dumps(err).encode(), [])
            return
        self._ids += 1
        await self._answer(send, path, doc, headers)

    async def _answer(
        self, send: Send, path: str, doc: dict[str, Any], headers: dict[str, str]
    ) -> None:
        anthropic = path.rstrip("/").endswith("/messages")
        dialect: Dialect = "anthropic" if anthropic else "openai"
        est = estimate_request(doc, dialect, path, default_output=0)
        prompt = est.prompt_tokens
        cap = est.reserved_output or 24
        n_out = int(headers.get("x-mock-output-tokens") or min(cap, 24))
        if path.endswith("/embeddings"):
            n_out = 0
        words = [_WORDS[i % len(_WORDS)] for i in range(n_out)]
        no_usage = headers.get("x-mock-no-usage") == "1"
        chunk_delay = float(headers.get("x-mock-chunk-delay", "0") or 0)
        model = str(doc.get("model") or "mock-model")
        rid = f"mock-{self._ids}"
        now = int(time.time())
        if anthropic:
            await self._anthropic(send, doc, rid, model, prompt, words, no_usage, chunk_delay)
            return
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": n_out,
            "total_tokens": prompt + n_out,
        }
        if path.endswith("/embeddings"):
            inputs = doc.get("input")
            count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(
                inputs[0], int
            ) else 1  # fmt: skip
            data = [
                {"object": "embedding", "index": i, "embedding": [0.01 * (i + 1)] * 8}
                for i in range(count)
            ]
            out: dict[str, Any] = {"object": "list", "data": data, "model": model}
            if not no_usage:
                out["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
            await _json(send, out)
            return
        if doc.get("stream") is True and path.endswith("/chat/completions"):
            include = isinstance(doc.get("stream_options"), dict) and bool(
                doc["stream_options"].get("include_usage")
            )
            await self._chat_stream(
                send,
                rid,
                model,
                now,
                words,
                usage if include and not no_usage else None,
                chunk_delay,
            )
            return
        text = " ".join(words)
        if path.endswith("/chat/completions"):
            out = {
                "id": rid,
                "object": "chat.completion",
                "created": now,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
            }
        elif path.endswith("/responses"):
            out = {
                "id": rid,
                "object": "response",
                "created_at": now,
                "model": model,
                "status": "completed",
                "output": [
                    {
                        "type": "message",
                        "id": f"msg-{rid}",
                        "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ],
            }
            usage = {"input_tokens": prompt, "output_tokens": n_out, "total_tokens": prompt + n_out}
        else:
            out = {
                "id": rid,
                "object": "text_completion",
                "created": now,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            }
        if not no_usage:
            out["usage"] = usage
        await _json(send, out)

    async def _chat_stream(
        self,
        send: Send,
        rid: str,
        model: str,
        now: int,
        words: list[str],
        usage: dict[str, int] | None,
        delay: float,
    ) -> None:
        await _sse_start(send)
        base = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model}
        first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        await _event(send, first)
        for i, word in enumerate(words):
            if delay:
                await asyncio.sleep(delay)
            piece = word if i == 0 else " " + word
            await _event(send, {**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
        last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await _event(send, last)
        if usage is not None:
            await _event(send, {**base, "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _anthropic(
        self,
        send: Send,
        doc: dict[str, Any],
        rid: str,
        model: str,
        prompt: int,
        words: list[str],
        no_usage: bool,
        delay: float,
    ) -> None:
        text = " ".join(words)
        usage = {"input_tokens": prompt, "output_tokens": len(words)}
        message: dict[str, Any] = {
            "id": rid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
        }
        if doc.get("stream") is not True:
            if not no_usage:
                message["usage"] = usage
            await _json(send, message)
            return
        await _sse_start(send)
        start = {**message, "content": [], "stop_reason": None}
        if not no_usage:
            start["usage"] = {"input_tokens": prompt, "output_tokens": 1}
        await _event(send, {"type": "message_start", "message": start}, "message_start")
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        await _event(send, block, "content_block_start")
        for i, word in enumerate(words):
            if delay:
                await asyncio.sleep(delay)
            delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
            ev = {"type": "content_block_delta", "index": 0, "delta": delta}
            await _event(send, ev, "content_block_delta")
        await _event(send, {"type": "content_block_stop", "index": 0}, "content_block_stop")
        end: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
        if not no_usage:
            end["usage"] = {"output_tokens": len(words)}
        await _event(send, end, "message_delta")
        stop = b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
        await send({"type": "http.response.body", "body": stop, "more_body": False})


async def _json(send: Send, doc: MutableMapping[str, Any]) -> None:
    await send_bytes(send, 200, json.dumps(doc).encode(), [])


async def _sse_start(send: Send) -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _event(send: Send, doc: dict[str, Any], name: str | None = None) -> None:
    head = f"event: {name}\n".encode() if name else b""
    data = head + b"data: " + json.dumps(doc).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": True})
